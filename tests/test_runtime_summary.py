"""clipcap.runtime.summary: what `clipcap info BUNDLE` shows, read off the manifest, torch-free."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("onnxruntime")
from clipcap.runtime.summary import bundle_summary, format_summary, is_bundle


def test_summary_answers_what_a_user_asks(tiny_bundle):
    bundle = tiny_bundle[0]
    manifest = json.loads((bundle / "clipcap.json").read_text())
    s = bundle_summary(bundle)
    assert is_bundle(bundle) and not is_bundle(bundle / "decoder.onnx")
    assert (s["precision"], s["variant"], s["model"]) == ("fp32", manifest["variant"], manifest["model"])
    assert set(s["graphs"]) == set(manifest["graphs"])
    assert s["graphs"]["decoder"]["bytes"] == manifest["files"]["decoder.onnx"]["bytes"] > 0
    assert s["bytes"] == sum(f["bytes"] for f in manifest["files"].values())
    assert s["verification"]["passed"] is True
    assert s["verification"]["greedy_identical"] == s["verification"]["greedy_sequences"] > 0
    assert s["generation"] == manifest["generation"]
    text = format_summary(s)
    for row in ("precision  ", "GPT-2 ", "CLIP ", "decoding ", "verified ", "graph decoder "):
        assert any(line.startswith(row.rstrip()) for line in text.splitlines()), row
    assert "passed: greedy identical" in text


def test_summary_needs_no_torch(tiny_bundle):
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from clipcap.runtime.summary import bundle_summary, format_summary\n"
        f"print(format_summary(bundle_summary({str(tiny_bundle[0])!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "precision" in out and "fp32" in out
