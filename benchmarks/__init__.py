"""clipcap.benchmarks: `clipcap bench`, every backend on the same weights, against the hardware's limit.

Torch-free to import (the options, the cold-start probe); the modules that run models import
torch when they run. ``run_bench(BenchOptions(...))`` runs it from Python.

- ``options``: BenchOptions, one frozen dataclass, validated once;
- ``models``: the full-size (or --quick) random-weight models, their bundles and Hugging Face GPT-2
  directory, cached;
- ``backends``: onnxruntime, pytorch, pytorch-nocache, and the optimum worker in its own venv;
- ``timing``: stage clocks and percentiles; ``roofline``: read bandwidth and bytes per decode step;
- ``coldstart``: a fresh process opening a bundle; ``report``: JSON, markdown, plot;
- ``run``: the whole run.
"""

from __future__ import annotations

from typing import Any

from clipcap.benchmarks.options import BACKENDS, VARIANTS, BenchOptions

__all__ = ["BACKENDS", "VARIANTS", "BenchOptions", "run_bench"]


def run_bench(options: BenchOptions, say: Any = None) -> dict[str, Any]:
    from clipcap.benchmarks.run import run_bench as run

    return run(options, say)
