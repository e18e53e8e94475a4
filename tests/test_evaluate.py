"""`clipcap eval` end to end: captioning an embedding set with a bundle or a checkpoint, scoring it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("pycocoevalcap")

from clipcap.cli import main
from clipcap.errors import CheckpointError, ConfigError
from clipcap.eval.evaluate import (
    caption_with_bundle,
    caption_with_checkpoint,
    evaluate,
    select_rows,
)
from tests.conftest import TINY
from tests.test_metrics import CAPTIONS, OTHER_REFERENCES  # the scoring tests' captions


@pytest.fixture(scope="module")
def embed_dir(tmp_path_factory):
    """A tiny embedding set: 3 train + 4 test rows of random TINY-sized CLIP embeddings, 2 captions each."""
    from clipcap.data.embeddings import write_embeddings

    rng = np.random.default_rng(0)
    splits = ["train", "test", "train", "test", "test", "train", "test"]
    records = [
        {
            "image": f"img{i}.jpg",
            "image_id": str(i),
            "captions": [CAPTIONS[i % 4], OTHER_REFERENCES[i % 4]],
            "split": s,
        }
        for i, s in enumerate(splits)
    ]
    embeds = rng.normal(size=(len(records), TINY["clip_dim"])).astype(np.float32)
    return write_embeddings(tmp_path_factory.mktemp("embeds") / "set", embeds, records)


@pytest.fixture
def checkpoint_dir(tiny_model, tmp_path):
    from clipcap.models.checkpoints import save_checkpoint

    return save_checkpoint(tiny_model, tmp_path / "checkpoint")


@pytest.mark.parametrize(
    "overrides", [{"max_new_tokens": 20}, {"strategy": "beam", "beam_size": 3, "max_new_tokens": 8}]
)
def test_bundle_and_checkpoint_caption_alike(tiny_bundle, checkpoint_dir, embed_dir, overrides):
    """fp32 ONNX Runtime and PyTorch give the same captions, so the same scores."""
    bundle_dir = tiny_bundle[0]
    by_bundle = evaluate(bundle_dir, embed_dir, overrides=overrides, java=False)
    by_checkpoint = evaluate(checkpoint_dir, embed_dir, overrides=overrides, java=False)
    assert (by_bundle.kind, by_checkpoint.kind) == ("bundle", "checkpoint")
    captions = [p["caption"] for p in by_bundle.predictions]
    assert captions == [p["caption"] for p in by_checkpoint.predictions]
    assert len(set(captions)) > 1 and all(captions)  # real, different captions, not a trivial match
    assert by_bundle.scores == by_checkpoint.scores
    assert by_bundle.options == by_checkpoint.options
    assert [p["image_id"] for p in by_bundle.predictions] == ["1", "3", "4", "6"]  # the test split
    assert by_bundle.predictions[0]["references"] == [CAPTIONS[1], OTHER_REFERENCES[1]]
    # The source's defaults (the original MLP's: stop at ".") with the overrides on top.
    assert by_bundle.options == tiny_bundle[1].config.generation.replace(**overrides)
    assert by_bundle.options.stop_token_ids == (13,)


def test_caption_functions_take_arrays_and_models(tiny_bundle, tiny_model):
    embeds = np.random.default_rng(1).normal(size=(3, TINY["clip_dim"])).astype(np.float32)
    overrides = {"max_new_tokens": 6}
    expected = caption_with_bundle(tiny_bundle[0], embeds, overrides, batch_size=2)
    assert caption_with_checkpoint(tiny_model, embeds, overrides, batch_size=2) == expected
    with pytest.raises(ConfigError, match=r"shape \[3, 16\] but the model takes \[N, 32\]"):
        caption_with_checkpoint(tiny_model, embeds[:, :16], overrides)
    with pytest.raises(ConfigError, match="unknown decoding option"):
        caption_with_checkpoint(tiny_model, embeds, {"beams": 3})


def test_rows_are_chosen_by_split_and_limit(embed_dir):
    from clipcap.data.embeddings import load_embeddings

    data = load_embeddings(embed_dir)
    assert len(select_rows(data, "all", None)) == 7
    assert [r["image_id"] for r in select_rows(data, "train", 2).records] == ["0", "2"]
    with pytest.raises(ConfigError, match=r"no rows in split val; its splits are: test \(4\), train \(3\)"):
        select_rows(data, "val", None)


def test_cli_writes_predictions_and_scores(tiny_bundle, checkpoint_dir, embed_dir, tmp_path, capsys):
    outputs = {}
    for flag, source in (("--bundle", tiny_bundle[0]), ("--checkpoint", checkpoint_dir)):
        predictions, scores = tmp_path / f"{flag[2:]}.jsonl", tmp_path / "out" / f"{flag[2:]}.json"
        args = ["eval", flag, str(source), "--data", str(embed_dir), "--no-java", "--max-new-tokens", "10"]
        assert main([*args, "--predictions", str(predictions), "--json", str(scores)]) == 0
        out = capsys.readouterr().out
        assert (
            "BLEU-4" in out and "x100" in out and f"wrote {predictions}" in out and f"wrote {scores}" in out
        )
        rows = [json.loads(line) for line in predictions.read_text().splitlines()]
        assert [r["image_id"] for r in rows] == ["1", "3", "4", "6"]
        assert set(rows[0]) == {"image_id", "image", "caption", "references"}
        report = json.loads(scores.read_text())
        assert report["data"]["split"] == "test" and report["decoding"]["max_new_tokens"] == 10
        assert report["scores"]["n"] == 4 and "meteor" in report["scores"]["skipped"]
        outputs[flag] = (rows, report["scores"])
    assert outputs["--bundle"] == outputs["--checkpoint"]

    every = ["--split", "all", "--limit", "5", "--max-new-tokens", "4"]
    assert main(["eval", "--bundle", str(tiny_bundle[0]), "--data", str(embed_dir), "--no-java", *every]) == 0
    assert "split all: 5 images captioned by the bundle" in capsys.readouterr().out


def test_bundle_evaluation_needs_no_torch(tiny_bundle, embed_dir):
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from clipcap.eval.evaluate import evaluate\n"
        f"r = evaluate({str(tiny_bundle[0])!r}, {str(embed_dir)!r}, java=False,"
        " overrides={'max_new_tokens': 3})\n"
        "print(r.scores.n)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "4"


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--bundle", "{bundle}", "--data", "{missing}"], "no such embedding directory"),
        (
            ["--bundle", "{bundle}", "--data", "{data}", "--split", "val"],
            "its splits are: test (4), train (3)",
        ),
        (["--bundle", "{bundle}", "--checkpoint", "{bundle}", "--data", "{data}"], "one of the two"),
        (["--data", "{data}"], "give --bundle DIR or --checkpoint PATH"),
        (["--bundle", "{bundle}"], "give --data EMBED_DIR"),
        (
            ["--bundle", "{bundle}", "--data", "{data}", "--device", "cuda"],
            "--device and --tokenizer are for",
        ),
        (["--bundle", "{bundle}", "--data", "{data}", "--beam-size", "0"], "beam_size must be >= 1"),
    ],
)
def test_cli_errors_are_one_line(tiny_bundle, embed_dir, tmp_path, capsys, args, complaint):
    paths = {"bundle": str(tiny_bundle[0]), "data": str(embed_dir), "missing": str(tmp_path / "nowhere")}
    assert main(["eval", *(a.format(**paths) for a in args), "--no-java"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clipcap eval: error:") and complaint in err
    assert err.count("\n") == 1


def test_embeddings_of_another_width_are_refused(tiny_bundle, tmp_path):
    from clipcap.data.embeddings import write_embeddings

    records = [{"image": "a.jpg", "captions": ["a dog"], "split": "test"}]
    data = write_embeddings(tmp_path / "wide", np.zeros((1, 48), np.float32), records)
    with pytest.raises(ConfigError, match=r"have shape \[1, 48\] but the model takes \[N, 32\]"):
        evaluate(tiny_bundle[0], data, java=False)


def test_embeddings_of_another_clip_are_warned_about(tiny_bundle, tmp_path, caplog):
    from clipcap.config import ClipSpec
    from clipcap.data.embeddings import write_embeddings

    records = [{"image": "a.jpg", "captions": ["a dog"], "split": "test"}]
    clip = ClipSpec("open_clip", "ViT-B-16", "openai", TINY["clip_dim"])
    data = write_embeddings(
        tmp_path / "other", np.zeros((1, TINY["clip_dim"]), np.float32), records, clip=clip
    )
    evaluate(tiny_bundle[0], data, java=False, overrides={"max_new_tokens": 2})
    assert "embedded with CLIP ViT-B-16 but the bundle was trained on clipcap-tiny-clip" in caplog.text


def test_kind_follows_the_manifest(tiny_bundle, tmp_path, embed_dir):
    # A bundle directory without its manifest is no bundle: it is read as a checkpoint, and refused.
    copy = shutil.copytree(tiny_bundle[0], tmp_path / "bundle")
    (copy / "clipcap.json").unlink()
    with pytest.raises(CheckpointError, match=r"needs model\.safetensors and config\.json"):
        evaluate(copy, embed_dir, java=False)


@pytest.mark.parametrize("progress", [True, False])
def test_progress_bar_counts_the_captions(tiny_bundle, embed_dir, capsys, progress):
    pytest.importorskip("tqdm")
    blocked = evaluate(
        tiny_bundle[0],
        embed_dir,
        java=False,
        batch_size=3,
        progress=progress,
        overrides={"max_new_tokens": 3},
    )
    whole = evaluate(tiny_bundle[0], embed_dir, java=False, progress=False, overrides={"max_new_tokens": 3})
    assert blocked.predictions == whole.predictions  # blocks of 3 rows caption as one block does
    err = capsys.readouterr().err
    assert ("4/4" in err and "captioning" in err) == progress
