"""clipcap.data.embed and `clipcap embed`: counts, exact embeddings, resuming, refusals, the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

from clipcap.runtime.images import load_image  # noqa: E402
from clipcap.runtime.preprocess import preprocess  # noqa: E402

from clipcap.cli import main  # noqa: E402
from clipcap.data.datasets import read_dataset  # noqa: E402
from clipcap.data.embed import embed_dataset  # noqa: E402
from clipcap.data.embeddings import load_embeddings  # noqa: E402
from clipcap.errors import ConfigError, DataError  # noqa: E402
from clipcap.models.clip import ImageEncoder  # noqa: E402

OUTPUT_FILES = ("embeddings.safetensors", "captions.jsonl", "meta.json", "skipped.jsonl")
BAD = {"gone.png": "missing", "broken.png": "unreadable"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """10 small images of assorted sizes and modes, and a missing and a corrupt one (rows 5 and 6)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    names = [f"img{i}.png" for i in range(10)]
    modes = ["RGB", "L", "RGBA", "P", "RGB"]
    for i, name in enumerate(names):
        width, height = 24 + 7 * i, 60 - 3 * i
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).convert(modes[i % len(modes)])
        image.save(folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a PNG")
    names[5:5] = ["gone.png", "broken.png"]
    rows = [{"image": name, "captions": [f"picture {name}", "another caption"]} for name in names]
    (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture(scope="module")
def examples(dataset):
    return read_dataset(dataset / "captions.jsonl").examples


class CountingEncoder(ImageEncoder):
    """Wraps an encoder, counts its calls, and raises KeyboardInterrupt on call number ``interrupt_at``."""

    def __init__(self, encoder: ImageEncoder, interrupt_at: int | None = None) -> None:
        super().__init__(encoder.spec)
        self.inner = encoder
        self.calls = 0
        self.interrupt_at = interrupt_at

    def forward(self, pixel_values):
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        return self.inner(pixel_values)


def embed(examples, encoder, out, **kwargs):
    options = dict(batch_size=2, shard_size=4, progress=False, source={"test": True})
    return embed_dataset(examples, encoder, out, **{**options, **kwargs})


@pytest.fixture(scope="module")
def reference(examples, tiny_encoder, tmp_path_factory):
    """(output dir, summary) of one uninterrupted run: 12 examples in 3 shards of 2 batches each."""
    out = tmp_path_factory.mktemp("reference") / "embeds"
    return out, embed(examples, tiny_encoder, out)


def test_summary_records_and_exact_embeddings(reference, examples, tiny_encoder):
    out, summary = reference
    assert (summary.count, summary.skipped, summary.resumed) == (10, {"missing": 1, "unreadable": 1}, 0)
    assert summary.out_dir == out and summary.seconds > 0
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)  # .partial is gone

    good = [e for e in examples if e.image.name not in BAD]
    data = load_embeddings(out)
    assert [r["image"] for r in data.records] == [str(e.image) for e in good]
    assert data.records[0] == {
        "image": str(good[0].image),
        "image_id": "img0.png",
        "captions": ["picture img0.png", "another caption"],
        "split": "train",
    }
    assert data.clip == tiny_encoder.spec
    assert data.meta["source"] == {"test": True} and data.meta["skipped"] == {"missing": 1, "unreadable": 1}

    # What the ONNX runtime would feed its image encoder, through the PyTorch encoder directly.
    pixels = preprocess([load_image(e.image) for e in good], tiny_encoder.spec.preprocessing)
    with torch.no_grad():
        expected = tiny_encoder(torch.from_numpy(pixels)).numpy()
    assert data.embeds.shape == (10, tiny_encoder.embed_dim)
    np.testing.assert_allclose(data.embeds, expected, rtol=1e-5, atol=1e-6)

    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert [(s["image_id"], s["reason"]) for s in skipped] == [
        ("gone.png", "missing"),
        ("broken.png", "unreadable"),
    ]
    assert all(s["image"].endswith(s["image_id"]) and s["message"] for s in skipped)
    assert "no such file" in skipped[0]["message"]


def test_interrupted_run_resumes_to_identical_files(reference, examples, tiny_encoder, tmp_path):
    out = tmp_path / "embeds"
    flaky = CountingEncoder(tiny_encoder, interrupt_at=3)  # the first batch of the second shard
    with pytest.raises(KeyboardInterrupt, match=r"1 of 3 shards .* run the same command again to resume"):
        embed(examples, flaky, out, workers=0)
    partial = out / ".partial"
    assert sorted(p.name for p in partial.iterdir()) == [
        "plan.json",
        "shard-000000.json",
        "shard-000000.safetensors",
    ]
    assert not (out / "meta.json").exists()
    with pytest.raises(DataError, match=r"not a complete embedding set.*resumes when run again"):
        load_embeddings(out)

    counting = CountingEncoder(tiny_encoder)
    summary = embed(examples, counting, out, workers=2)  # the thread count does not change the result
    assert counting.calls == 4  # shards 2 and 3 only: the first is not recomputed
    assert (summary.count, summary.resumed, summary.skipped) == (10, 4, {"missing": 1, "unreadable": 1})
    assert not partial.exists()
    for name in OUTPUT_FILES:
        assert (out / name).read_bytes() == (reference[0] / name).read_bytes(), name


def test_other_inputs_are_refused_until_forced(examples, tiny_encoder, tmp_path):
    out = tmp_path / "embeds"
    with pytest.raises(KeyboardInterrupt):
        embed(examples, CountingEncoder(tiny_encoder, interrupt_at=3), out)
    with pytest.raises(ConfigError, match=r"the number of examples, the images or captions differ.*--force"):
        embed(examples[:-1], tiny_encoder, out)
    with pytest.raises(ConfigError, match="the shard size differs"):
        embed(examples, tiny_encoder, out, shard_size=5)
    counting = CountingEncoder(tiny_encoder)
    summary = embed(examples[:-1], counting, out, force=True)
    assert (summary.count, summary.resumed, counting.calls) == (9, 0, 6)


def test_complete_output_needs_force(examples, tiny_encoder, tmp_path):
    out = tmp_path / "embeds"
    embed(examples[:3], tiny_encoder, out, shard_size=2)
    with pytest.raises(ConfigError, match="already holds a complete embedding set; pass --force"):
        embed(examples[:3], tiny_encoder, out)
    summary = embed(examples[:2], tiny_encoder, out, force=True)
    assert summary.count == 2 and len(load_embeddings(out)) == 2


def test_argument_errors(examples, tiny_encoder, tmp_path):
    with pytest.raises(ConfigError, match="no examples to embed"):
        embed([], tiny_encoder, tmp_path / "a")
    with pytest.raises(ConfigError, match="batch_size must be"):
        embed(examples, tiny_encoder, tmp_path / "b", batch_size=0)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        embed(examples, tiny_encoder, tmp_path / "file")
    with pytest.raises(ConfigError, match="not a torch device"):
        embed(examples, tiny_encoder, tmp_path / "c", device="gpu please")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            embed(examples, tiny_encoder, tmp_path / "d", device="cuda")
    assert not (tmp_path / "a").exists() and not (tmp_path / "d").exists()


# --- the command line --------------------------------------------------------------------------------


@pytest.fixture
def clip_args(tiny_clip_files):
    config, weights = tiny_clip_files
    return ["--clip", "clipcap-tiny-clip", "--clip-weights", str(weights), "--clip-config", str(config)]


def test_cli_embed(dataset, clip_args, reference, tmp_path, capsys):
    out = tmp_path / "embeds"
    args = ["embed", str(dataset / "captions.jsonl"), "--out", str(out), *clip_args, "--batch-size", "3"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "embedded 10 of 12 images" in printed
    assert "skipped 2: 1 missing, 1 unreadable" in printed and str(out / "skipped.jsonl") in printed
    data = load_embeddings(out)
    np.testing.assert_allclose(data.embeds, load_embeddings(reference[0]).embeds, rtol=1e-5, atol=1e-6)
    assert data.meta["source"]["format"] == "folder-jsonl"

    assert main(args) == 2
    assert "already holds a complete embedding set; pass --force" in capsys.readouterr().err
    assert main([*args, "--force", "--limit", "6"]) == 0
    assert "embedded 5 of 6 images" in capsys.readouterr().out
    assert load_embeddings(out).meta["source"]["limit"] == 6


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: [*a[:4], "--clip", "clipcap-tiny-clip"], "name its weights"),
        (lambda a: [a[0], "no-such.jsonl", *a[2:]], "no-such.jsonl: no such dataset file"),
        (lambda a: [*a, "--split", "val"], "--split val: only a Conceptual Captions TSV"),
        (lambda a: [*a, "--limit", "0"], "--limit 0"),
        (lambda a: [*a, "--device", "cuda"], "CUDA is not available"),
    ],
)
def test_cli_embed_errors(dataset, clip_args, tmp_path, capsys, change, message):
    if "cuda" in message.lower() and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    out = tmp_path / "embeds"
    assert main(change(["embed", str(dataset / "captions.jsonl"), "--out", str(out), *clip_args])) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_cli_embed_bad_rows_are_reported(dataset, clip_args, tmp_path, capsys):
    captions = tmp_path / "captions.jsonl"
    captions.write_text(
        (dataset / "captions.jsonl").read_text().splitlines()[0] + '\n{"image": "x.png"}\nnot json\n'
    )
    args = ["embed", str(captions), "--images", str(dataset), "--out", str(tmp_path / "o"), *clip_args]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "skipped 2 dataset rows (1 missing field, 1 malformed)" in captured.err
    assert "embedded 1 of 1 images" in captured.out


def test_cli_embed_interrupted(dataset, clip_args, tmp_path, capsys, monkeypatch):
    import clipcap.data.embed

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt("interrupted: 1 of 3 shards are saved; run the same command again to resume")

    monkeypatch.setattr(clipcap.data.embed, "embed_dataset", interrupted)
    args = ["embed", str(dataset / "captions.jsonl"), "--out", str(tmp_path / "o"), *clip_args]
    assert main(args) == 130
    assert "run the same command again to resume" in capsys.readouterr().err


def test_embed_help_runs_without_torch():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from clipcap.cli import main\n"
        "try:\n    main(['embed', '--help'])\nexcept SystemExit as e:\n    sys.exit(e.code)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "resumes" in result.stdout and "ViT-B-32-quickgelu --clip-weights ViT-B-32.pt" in result.stdout
