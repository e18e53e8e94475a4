"""benchmarks/optimum_worker.py: the Hugging Face Optimum baseline, run in its own venv.

The import check runs always; the self-test only where benchmarks/.venv-optimum exists
(`make bench-venv` makes it).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "benchmarks" / "optimum_worker.py"
VENV_PYTHON = ROOT / "benchmarks" / ".venv-optimum" / "bin" / "python"
ALLOWED = {"optimum", "transformers", "onnxruntime", "torch", "numpy"}

NUMBER_KEYS = ("e2e_ms_p50", "e2e_ms_p90", "e2e_ms_p99", "per_token_ms_p50", "captions_per_s")
KEYS = {
    "backend",
    "precision",
    "device",
    "variant",
    "batch",
    "new_tokens",
    *NUMBER_KEYS,
    "roofline_fraction",
    "stages_ms",
    "notes",
}


def imported_modules(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "a relative import needs a package: the worker is a standalone script"
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "__import__",
        ):
            raise AssertionError("dynamic imports would escape this check")
    return names


def test_worker_imports_only_what_the_optimum_venv_has():
    names = imported_modules(WORKER.read_text())
    outside = {n for n in names - ALLOWED if n not in sys.stdlib_module_names and n != "__future__"}
    assert not outside, f"optimum_worker.py imports {sorted(outside)}: the optimum venv lacks them"
    assert "clipcap" not in names and "benchmarks" not in names


def test_worker_bad_config_is_one_line_and_nonzero(tmp_path):
    # Config errors come before any heavy import, so any Python runs this check.
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"gpt2_dir": str(tmp_path), "batch_sizes": [1], "new_tokens": 2}))
    run = subprocess.run(
        [sys.executable, str(WORKER), "--config", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2
    assert run.stdout == ""
    assert run.stderr.strip().count("\n") == 0 and "cache_dir" in run.stderr


@pytest.mark.skipif(not VENV_PYTHON.exists(), reason="no benchmarks/.venv-optimum (make bench-venv)")
def test_worker_self_test_prints_the_result_schema():
    run = subprocess.run(
        [str(VENV_PYTHON), str(WORKER), "--self-test"], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout)  # stdout holds the JSON list and nothing else
    assert isinstance(results, list) and len(results) == 1
    (r,) = results
    assert set(r) == KEYS
    assert (r["backend"], r["precision"], r["device"], r["variant"]) == ("optimum", "fp32", "cpu", "mlp")
    assert (r["batch"], r["new_tokens"]) == (1, 2)
    for key in NUMBER_KEYS:
        assert isinstance(r[key], float) and r[key] > 0, (key, r[key])
    assert r["e2e_ms_p50"] <= r["e2e_ms_p90"] <= r["e2e_ms_p99"]
    assert r["roofline_fraction"] is None
    assert set(r["stages_ms"]) == {"prefill", "decode_per_token"}
    assert all(isinstance(v, float) and v > 0 for v in r["stages_ms"].values())
    assert "stands in" in r["notes"] and "prefix" in r["notes"]
    assert "logits match" in run.stderr
