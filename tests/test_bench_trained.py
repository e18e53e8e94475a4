"""clipcap.benchmarks.trained: quantized bundles of a `clipcap demo` folder's models against fp32."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from clipcap.benchmarks.trained import compare, read_demo, trained_agreement

from clipcap.errors import ConfigError

pytest.importorskip("onnx")
pytest.importorskip("open_clip")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def demo_dir(tiny_bundle, tiny_clip_files, tmp_path_factory):
    """A folder laid out as `clipcap demo` leaves it, with the tiny model in place of trained ones."""
    import numpy as np
    from PIL import Image

    from clipcap.models.checkpoints import save_checkpoint
    from clipcap.tokenizer import packaged_tokenizer_path

    bundle, model, _ = tiny_bundle
    folder = tmp_path_factory.mktemp("demo")
    (folder / "data" / "images").mkdir(parents=True)
    (folder / "gpt2").mkdir()
    shutil.copy(packaged_tokenizer_path(), folder / "gpt2" / "tokenizer.json")
    rng = np.random.default_rng(0)
    held_out = []
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(
            folder / "data/images" / f"{i}.png"
        )
        held_out.append({"image": f"images/{i}.png", "caption": "", "references": ["a picture", "noise"]})
    predictions = folder / "predictions-mlp.jsonl"
    predictions.write_text("".join(json.dumps(r) + "\n" for r in held_out))
    config, weights = tiny_clip_files
    report = {
        "mode": "full",
        "variants": [
            {
                "variant": "mlp",
                "checkpoint": str(save_checkpoint(model, folder / "train-mlp")),
                "bundle": str(bundle),
                "predictions": str(predictions),
            }
        ],
        "base_models": {
            "clip": {"config": str(config), "weights": str(weights)},
            "gpt2": {"dir": str(folder / "gpt2")},
        },
    }
    (folder / "report.json").write_text(json.dumps(report))
    return folder


def test_fp32_again_is_identical_and_int8_is_measured(demo_dir):
    lines: list[str] = []
    result = trained_agreement(demo_dir, ["fp32", "int8"], threads=2, say=lines.append)
    entry = result["mlp"]
    assert entry["captions"] == 5 and 0 <= entry["exact_match_fp32"] <= 1
    # A fresh fp32 export of the same checkpoint captions exactly as the demo's fp32 bundle.
    assert entry["precisions"]["fp32"]["exact_captions"] == 5
    assert entry["precisions"]["fp32"]["token_agreement"] == 1.0
    int8 = entry["precisions"]["int8"]
    assert int8["captions"] == 5 and 0 <= int8["token_agreement"] <= 1 and 0 <= int8["exact_match"] <= 1
    assert (
        int8["bundle_bytes"] > 0
    )  # (the tiny model's int8 bundle is the larger: its head gets an int8 copy)
    assert any("trained model at int8" in line for line in lines)
    assert any("5/5 captions identical to fp32" in line for line in lines)  # fp32's line
    assert not list(demo_dir.glob("clipcap-bench-trained-*"))  # the quantized bundles are not left behind


@pytest.mark.parametrize(
    "reference, got, agreement, exact",
    [
        ([[1, 2, 3]], [[1, 2, 3]], 1.0, 1),
        ([[1, 2, 3]], [[1, 2, 4]], 2 / 3, 0),
        ([[1, 2, 3]], [[1, 2]], 2 / 3, 0),  # shorter: the missing position differs
        ([[1, 2]], [[1, 2, 3, 4]], 0.5, 0),
        ([[5], [1, 2]], [[5], [2, 1]], 0.5, 1),
        ([[]], [[]], 0.0, 1),
    ],
)
def test_compare(reference, got, agreement, exact):
    r = compare(reference, got)
    assert r["token_agreement"] == pytest.approx(agreement) and r["exact_captions"] == exact
    assert r["captions"] == len(reference)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: (d / "report.json").unlink(), "no report.json there; make one with `clipcap demo"),
        (lambda d: (d / "report.json").write_text("{"), "is not a `clipcap demo` report"),
        (lambda d: _edit(d, mode="quick"), "a `clipcap demo --quick` run"),
        (
            lambda d: _edit(
                d,
                variants=[{"variant": "mlp", "checkpoint": str(d / "gone"), "bundle": "", "predictions": ""}],
            ),
            "is gone",
        ),
    ],
)
def test_bad_demo_folder(demo_dir, tmp_path, change, message):
    copy = tmp_path / "demo"
    shutil.copytree(demo_dir, copy)
    change(copy)
    with pytest.raises(ConfigError, match=re.escape(message)):
        read_demo(copy)


def _edit(folder, **changes):
    path = folder / "report.json"
    report = json.loads(path.read_text())
    report.update(changes)
    path.write_text(json.dumps(report))
