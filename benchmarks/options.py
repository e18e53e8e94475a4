"""What `clipcap bench` measures: one frozen dataclass, validated once.

Torch-free, so the command line can check its flags before anything heavy is imported.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipcap.errors import OptionsError

BACKENDS = ("onnxruntime", "pytorch", "pytorch-nocache", "optimum")
VARIANTS = ("mlp", "transformer")
PROVIDERS = ("cpu", "cuda")
# The precisions each ONNX Runtime provider is benchmarked at by default; the PyTorch backends and
# optimum run float32 only.
PRECISIONS = {"cpu": ("fp32", "int8", "int4"), "cuda": ("fp32", "fp16")}
ALL_PRECISIONS = ("fp32", "fp16", "int8", "int4")

DEFAULT_BATCH_SIZES = (1, 4, 16, 64)
QUICK_BATCH_SIZES = (1, 4)
DEFAULT_CACHE = Path("~/.cache/clipcap-onnx/bench")


@dataclass(frozen=True)
class BenchOptions:
    """A benchmark run. ``None`` fields take their default for the mode (full or ``quick``).

    - ``quick``: a tiny model (2 layers x 64, GPT-2's vocabulary), the mlp variant, batch sizes 1
      and 4, 8 tokens, 5 runs, cold start of the first precision only: checks that everything
      works in about a minute (CI); its numbers mean nothing. The bundles' export (dynamo tracing,
      ~10 s per bundle whatever the model's size) is most of it; a warm --cache skips it.
    - ``runs``: timed runs at batch 1 after ``warmup`` untimed ones; larger batches, which serve
      the throughput figures, take ``max(3, runs // batch)`` runs after one warm-up.
    - ``threads``: PyTorch's threads and ONNX Runtime's intra-op threads (default: all cores).
    - ``new_tokens``: every caption is exactly this long (no EOS, no stop tokens), whatever the backend.
    - ``trained_check``: also export the models `clipcap demo` trained at each quantized precision
      and compare their captions of the demo's held-out pictures with fp32 (default: on, off with
      ``quick``). ``trained`` is that demo's folder; by default the cache's, made on first use
      (a full demo, about 4 minutes).
    """

    quick: bool = False
    backends: tuple[str, ...] = BACKENDS
    precisions: tuple[str, ...] | None = None  # default: PRECISIONS[provider]
    batch_sizes: tuple[int, ...] | None = None  # default: DEFAULT_BATCH_SIZES, quick QUICK_BATCH_SIZES
    new_tokens: int | None = None  # default 20, quick 8
    runs: int | None = None  # default 20, quick 5
    warmup: int | None = None  # default 3, quick 1
    threads: int | None = None  # default: all cores
    provider: str = "cpu"
    variants: tuple[str, ...] | None = None  # default: both, quick: mlp
    cache_dir: Path = DEFAULT_CACHE
    out: Path | None = None  # the JSON report
    markdown: Path | None = None
    plot: Path | None = None
    optimum_python: Path | None = None  # default: benchmarks/.venv-optimum/bin/python
    cold_start_repeats: int | None = None  # default 3, quick 1
    trained_check: bool | None = None  # default: not quick
    trained: Path | None = None  # default: cache_dir / "demo", made when missing
    seed: int = 0

    def __post_init__(self) -> None:
        defaults = {
            "precisions": PRECISIONS.get(self.provider, ()),
            "batch_sizes": QUICK_BATCH_SIZES if self.quick else DEFAULT_BATCH_SIZES,
            "variants": ("mlp",) if self.quick else VARIANTS,
            "new_tokens": 8 if self.quick else 20,
            "runs": 5 if self.quick else 20,
            "warmup": 1 if self.quick else 3,
            "threads": os.cpu_count() or 1,
            "cold_start_repeats": 1 if self.quick else 3,
            "trained_check": not self.quick,
        }
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        for name in ("backends", "precisions", "batch_sizes", "variants"):
            object.__setattr__(self, name, tuple(dict.fromkeys(getattr(self, name))))  # ordered, no repeats
        for name in ("cache_dir", "out", "markdown", "plot", "optimum_python", "trained"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value).expanduser())
        self._validate()

    def _validate(self) -> None:
        problems = []
        if self.provider not in PROVIDERS:
            problems.append(f"provider must be one of {', '.join(PROVIDERS)}, got {self.provider!r}")
        _check_names(problems, "backends", self.backends, BACKENDS)
        _check_names(problems, "variants", self.variants, VARIANTS)
        _check_names(problems, "precisions", self.precisions, ALL_PRECISIONS)
        if self.provider in PROVIDERS:
            wrong = [p for p in self.precisions if p in ALL_PRECISIONS and p not in PRECISIONS[self.provider]]
            if wrong:
                problems.append(
                    f"precision {', '.join(wrong)} is not benchmarked on {self.provider} "
                    f"(there: {', '.join(PRECISIONS[self.provider])})"
                )
        if not self.batch_sizes or any(not isinstance(b, int) or b < 1 for b in self.batch_sizes):
            problems.append(f"batch sizes must be integers >= 1, got {list(self.batch_sizes)}")
        for name, low in (("new_tokens", 2), ("runs", 1), ("warmup", 0), ("threads", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                problems.append(f"{name} must be an integer >= {low}, got {value!r}")
        if not isinstance(self.cold_start_repeats, int) or self.cold_start_repeats < 0:
            problems.append(f"cold_start_repeats must be an integer >= 0, got {self.cold_start_repeats!r}")
        if self.cache_dir.exists() and not self.cache_dir.is_dir():
            problems.append(f"cache {self.cache_dir} exists and is not a directory")
        if self.trained is not None and not (self.trained / "report.json").is_file():
            problems.append(
                f"trained: {self.trained} holds no `clipcap demo` report.json "
                f"(make one: clipcap demo --out {self.trained})"
            )
        if problems:
            raise OptionsError("invalid benchmark options: " + "; ".join(problems))

    @property
    def optimum(self) -> bool:
        return "optimum" in self.backends

    @property
    def demo_dir(self) -> Path:
        """The `clipcap demo` folder whose trained models the quantization check uses."""
        return self.trained if self.trained is not None else self.cache_dir / "demo"

    def runs_for(self, batch: int, per_picture: bool = False) -> tuple[int, int]:
        """(warm-up runs, timed runs) at a batch size: the full count at batch 1 (the latency
        percentiles), fewer for the larger batches that give the throughput.

        ``per_picture``: a backend that runs one picture at a time (pytorch-nocache), whose batch B
        is B batch-1 runs in a row: it is warm from batch 1, and one run of a large batch already
        holds many pictures (at batch 64 a run of the transformer variant takes minutes on 2 cores).
        """
        if batch == 1:
            return self.warmup, self.runs
        if per_picture:
            return 0, max(1, self.runs // batch)
        return min(self.warmup, 1), max(min(3, self.runs), self.runs // batch)

    def replace(self, **changes: Any) -> BenchOptions:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in ("cache_dir", "out", "markdown", "plot", "optimum_python", "trained"):
            d[name] = None if d[name] is None else str(d[name])
        for name in ("backends", "precisions", "batch_sizes", "variants"):
            d[name] = list(d[name])
        return d


def _check_names(problems: list[str], what: str, given: tuple[str, ...], known: tuple[str, ...]) -> None:
    if not given:
        problems.append(f"{what}: name at least one of {', '.join(known)}")
    unknown = [g for g in given if g not in known]
    if unknown:
        problems.append(f"unknown {what} {', '.join(map(repr, unknown))} (known: {', '.join(known)})")


def parse_list(text: str | None, flag: str, kind: type = str) -> tuple | None:
    """A comma-separated command-line value -> a tuple (None stays None, meaning the default)."""
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise OptionsError(f"{flag}: give a comma-separated list, got {text!r}")
    try:
        return tuple(kind(t) for t in items)
    except ValueError:
        raise OptionsError(f"{flag}: {text!r} is not a comma-separated list of {kind.__name__}s") from None
