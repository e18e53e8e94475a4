"""clipcap serve's command line: every flag explained with its default, bundle names, flag checks,
and no web framework imported until it runs."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
from clipcap.serve.command import _check, add_arguments, parse_bundles

from clipcap.errors import OptionsError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clipcap serve")
    add_arguments(p)
    return p


def test_help_explains_every_flag_with_its_default():
    text = parser().format_help()
    for flag in (
        "--host",
        "--port",
        "--batching",
        "--max-batch-rows",
        "--max-waiting",
        "--batch-wait-ms",
        "--waiting-served-ratio",
        "--max-waiting-steps",
        "--request-timeout",
        "--max-body-mb",
        "--max-images",
        "--threads",
        "--provider",
        "--fallback-to-cpu",
        "--grace",
        "--log-level",
    ):
        assert flag in text, flag
    assert text.count("(default:") >= 13


def test_defaults():
    args = parser().parse_args(["b"])
    assert (args.host, args.port, args.batching, args.max_batch_rows, args.max_waiting) == (
        "127.0.0.1",
        8000,
        "continuous",
        32,
        256,
    )


def test_bundle_names(tmp_path):
    named = parse_bundles([str(tmp_path / "mlp-fp32"), f"int8={tmp_path / 'x'}"])
    assert list(named) == ["mlp-fp32", "int8"] and named["int8"] == tmp_path / "x"
    with pytest.raises(OptionsError, match="two bundles are named"):
        parse_bundles(["a=x", "a=y"])
    with pytest.raises(OptionsError, match="NAME=BUNDLE"):
        parse_bundles(["=x"])


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--max-batch-rows", "0"], "--max-batch-rows"),
        (["--request-timeout", "0"], "--request-timeout"),
        (["--port", "70000"], "--port"),
        (["--waiting-served-ratio", "-1"], "--waiting-served-ratio"),
        (["--max-waiting-steps", "0"], "--max-waiting-steps"),
    ],
)
def test_bad_flags(flags, words):
    with pytest.raises(OptionsError, match=words):
        _check(parser().parse_args(["b", *flags]))


def test_missing_bundle_is_one_line_and_exit_2(tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("onnxruntime")
    r = subprocess.run(
        [sys.executable, "-m", "clipcap.serve", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "no such bundle directory" in r.stderr and "Traceback" not in r.stderr


def test_importing_the_command_loads_no_web_framework():
    code = (
        "import sys, clipcap.serve.command; "
        "print([m for m in ('fastapi', 'uvicorn', 'onnxruntime', 'torch') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
