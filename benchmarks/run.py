"""`clipcap bench`: every backend, the same weights, the same pictures, in one run.

For each variant: the model's files come from the cache (made on first use), then each backend
and precision captions batches of pictures (warm-up runs, then timed runs) while the timings, the
tokens and the roofline bound are recorded; then the cold start, the token agreement between
backends, and the report (JSON, markdown, plot). Progress goes to stderr, one line per step.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clipcap.benchmarks.options import BenchOptions

# The report's sections apart from the timings; re-exported where tests and callers import them.
from clipcap.benchmarks.run_sections import (  # noqa: F401
    RESULT_KEYS,
    STAGE_KEYS,
    agreement,
    config_section,
    describe_machine,
    describe_model,
    normalise_row,
    reproduce_command,
)
from clipcap.benchmarks.timing import Summary

from clipcap.errors import OptionsError, require

Say = Callable[[str], None]


def run_bench(options: BenchOptions, say: Say | None = None) -> dict[str, Any]:
    """Run the benchmark ``options`` describe; returns the report (and writes the files it names)."""
    say = say or _Progress()
    _check_outputs(options)
    load = _load_average()
    if load is not None and load >= BUSY_LOAD:
        say(
            f"warning: the machine is busy (load average {load:.1f} before starting): the numbers will be "
            "noisy, PyTorch's with all cores most (its threads wait on each other)"
        )
    import torch
    from clipcap.benchmarks import roofline
    from clipcap.benchmarks.models import Assets, make_images, model_spec
    from clipcap.benchmarks.report import write_reports

    started = time.perf_counter()
    torch.set_num_threads(options.threads)
    device = "cuda" if options.provider == "cuda" else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise OptionsError("--provider cuda: PyTorch sees no CUDA device here")
    say(f"measuring the memory read bandwidth ({options.threads} threads)")
    bandwidth = roofline.read_bandwidth(options.threads, repeats=3 if options.quick else 5)
    machine = describe_machine(options, bandwidth)
    machine["load_average_at_start"] = load
    if device == "cuda":
        machine["gpu_read_gbps"] = roofline.cuda_read_bandwidth()
    gbps = machine["gpu_read_gbps"] if device == "cuda" else machine["read_gbps"]
    say(f"      {machine['read_gbps']:.1f} GB/s")

    results: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    tokens: dict[tuple[str, str, str, str, int], list[list[int]]] = {}
    cold_start: dict[str, Any] = {}
    images = make_images(max(options.batch_sizes), options.seed)

    for variant in options.variants:
        spec = model_spec(variant, options.quick)
        assets = Assets(spec, options.cache_dir, options.seed, say)
        say(f"[{variant}] {describe_model(spec)}")
        bench = _VariantBench(options, variant, assets, images, gbps, device, say, results, tokens)
        if "onnxruntime" in options.backends:
            bench.onnxruntime()
            if not cold_start and options.cold_start_repeats:
                cold_start = bench.cold_start()
        if {"pytorch", "pytorch-nocache"} & set(options.backends):
            bench.pytorch()
        if options.optimum:
            try:
                bench.optimum()
            except _Skipped as e:
                skipped.append(e.entry)
                say(f"      optimum skipped: {e.entry['reason']}")

    trained = None
    quantized = [p for p in options.precisions if p != "fp32"]
    if options.trained_check and quantized and "onnxruntime" in options.backends:
        from clipcap.benchmarks.trained import ensure_demo, trained_agreement

        demo = options.demo_dir if options.trained is not None else ensure_demo(options.demo_dir, say)
        trained = trained_agreement(demo, quantized, options.threads, say)

    report = {
        "machine": machine,
        "config": config_section(options),
        "results": results,
        "skipped": _unique(skipped),
        "cold_start": cold_start,
        "agreement": agreement(tokens, options),
        "trained_agreement": trained,
        "seconds": round(time.perf_counter() - started, 1),
    }
    for path in write_reports(report, options):
        say(f"wrote {path}")
    return report


class _Skipped(Exception):
    def __init__(self, entry: dict[str, Any]) -> None:
        super().__init__(entry["reason"])
        self.entry = entry


class _VariantBench:
    """The measurements of one variant."""

    def __init__(self, options, variant, assets, images, gbps, device, say, results, tokens) -> None:
        self.o, self.variant, self.assets, self.images = options, variant, assets, images
        self.gbps, self.device, self.say = gbps, device, say
        self.results, self.tokens = results, tokens
        self._model = self._encoder = None

    def model(self):
        if self._model is None:
            self._model = self.assets.model()
        return self._model

    def encoder(self):
        if self._encoder is None:
            self._encoder = self.assets.encoder()
        return self._encoder

    def bundle(self, precision: str) -> Path:
        if self.assets.has_bundle(precision):
            return self.assets.bundle_path(precision)
        return self.assets.bundle(precision, self.model(), self.encoder())

    def onnxruntime(self) -> None:
        from clipcap.benchmarks.backends import OnnxRuntimeBackend
        from clipcap.benchmarks.roofline import onnx_weight_bytes

        for precision in self.o.precisions:
            bundle = self.bundle(precision)
            weight_bytes = onnx_weight_bytes(bundle / "decoder.onnx")
            backend = OnnxRuntimeBackend(
                bundle, precision, self.o.provider, self.o.threads, self.o.new_tokens
            )
            self.measure(backend, weight_bytes)
            backend.close()

    def pytorch(self) -> None:
        from clipcap.benchmarks.backends import PyTorchBackend, PyTorchNoCacheBackend
        from clipcap.benchmarks.roofline import torch_weight_bytes

        # float32, the baseline, always; float16 too on CUDA when asked for.
        precisions = ["fp32", *(["fp16"] if "fp16" in self.o.precisions else [])]
        for precision in precisions:
            for name, kind in (("pytorch", PyTorchBackend), ("pytorch-nocache", PyTorchNoCacheBackend)):
                if name not in self.o.backends:
                    continue
                # Each backend moves and converts the model in place: a fresh copy for each.
                backend = kind(self.model(), self.encoder(), self.device, self.o.new_tokens, precision)
                self._model = self._encoder = None
                weight_bytes = torch_weight_bytes(backend.model.gpt)
                # The original runs one picture at a time: a step reads the weights once per picture.
                self.measure(backend, weight_bytes, per_row=name == "pytorch-nocache")
                backend.close()
                gc.collect()

    def measure(self, backend, weight_bytes: int, per_row: bool = False) -> None:
        from clipcap.benchmarks.roofline import bound_ms, fraction

        for batch in self.o.batch_sizes:
            warmup, timed = self.o.runs_for(batch, per_row)
            pictures = self.images[:batch]
            for _ in range(warmup):
                backend.caption(pictures)
            gc.collect()
            runs = [backend.caption(pictures) for _ in range(timed)]
            s = Summary.of(runs)
            bound = bound_ms(weight_bytes, self.gbps, batch if per_row else 1)
            row = {
                "backend": backend.name,
                "precision": backend.precision,
                "device": backend.device,
                "variant": self.variant,
                "batch": batch,
                "new_tokens": self.o.new_tokens,
                "e2e_ms_p50": s.e2e_ms_p50,
                "e2e_ms_p90": s.e2e_ms_p90,
                "e2e_ms_p99": s.e2e_ms_p99,
                "per_token_ms_p50": s.per_token_ms_p50,
                "captions_per_s": s.captions_per_s,
                "roofline_fraction": fraction(bound, s.per_token_ms_p50),
                "stages_ms": s.stages_ms,
                "runs": s.runs,
                "warmup": warmup,
                "weight_bytes_per_step": weight_bytes * (batch if per_row else 1),
                "roofline_ms": bound,
            }
            self.results.append(row)
            self.tokens[(self.variant, backend.name, backend.precision, backend.device, batch)] = runs[
                0
            ].tokens
            self.say(_line(row))

    def cold_start(self) -> dict[str, Any]:
        from clipcap.benchmarks import coldstart
        from clipcap.benchmarks.timing import median

        self.say(f"[{self.variant}] cold start: a fresh process opens each bundle and captions one picture")
        out: dict[str, Any] = {"variant": self.variant, "repeats": self.o.cold_start_repeats, "runs": []}
        with tempfile.TemporaryDirectory(prefix="clipcap-bench-") as tmp:
            image = Path(tmp) / "picture.png"
            self.images[0].save(image)
            # --quick: the first precision only (a process start is seconds).
            for precision in self.o.precisions[:1] if self.o.quick else self.o.precisions:
                bundle = self.bundle(precision)
                for check in (True, False):
                    samples = [
                        coldstart.measure(
                            bundle,
                            image,
                            check_files=check,
                            threads=self.o.threads,
                            provider=self.o.provider,
                            new_tokens=self.o.new_tokens,
                        )
                        for _ in range(self.o.cold_start_repeats)
                    ]
                    entry = {"precision": precision, "check_files": check}
                    entry.update({k: median([s[k] for s in samples]) for k in samples[0]})
                    out["runs"].append(entry)
                    self.say(
                        f"      {precision} check_files={check}: load {entry['load_s']:.2f} s, first caption "
                        f"{entry['first_caption_s']:.2f} s, process {entry['process_s']:.2f} s"
                    )
        return out

    def optimum(self) -> None:
        from clipcap.benchmarks.backends import (
            OPTIMUM_PYTHON,
            OPTIMUM_SETUP,
            OPTIMUM_WORKER,
            BackendSkipped,
            check_optimum,
            run_optimum,
        )
        from clipcap.benchmarks.roofline import bound_ms, fraction, torch_weight_bytes

        python = self.o.optimum_python or OPTIMUM_PYTHON
        command = f"{python} {OPTIMUM_WORKER} --config FILE.json"
        try:
            check_optimum(python, OPTIMUM_WORKER)
            gpt2_dir = self.assets.hf_gpt2_dir(self._model)
            config = {
                "gpt2_dir": str(gpt2_dir),
                "batch_sizes": list(self.o.batch_sizes),
                "new_tokens": self.o.new_tokens,
                "threads": self.o.threads,
                "runs": self.o.runs,
                "warmup": self.o.warmup,
                "cache_dir": str(self.o.cache_dir / "optimum"),
                "prefix_length": self.assets.spec.config.prefix_length,
                "provider": self.o.provider,
            }
            self.say(f"[{self.variant}] optimum: {command}")
            rows = run_optimum(config, python=python)
        except BackendSkipped as e:
            raise _Skipped(
                {"backend": "optimum", "reason": e.reason, "fix": e.fix or OPTIMUM_SETUP, "command": command}
            ) from None
        weight_bytes = torch_weight_bytes(self.model().gpt)
        for raw in rows:
            row = normalise_row(raw, backend="optimum", variant=self.variant, new_tokens=self.o.new_tokens)
            if row.get("roofline_fraction") is None:
                bound = bound_ms(weight_bytes, self.gbps)
                row["roofline_fraction"] = fraction(bound, row.get("per_token_ms_p50"))
                row.setdefault("roofline_ms", bound)
                row.setdefault("weight_bytes_per_step", weight_bytes)
            self.results.append(row)
            self.say(_line(row))


BUSY_LOAD = 0.5  # the 1-minute load average above which the report warns that the numbers are noisy


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _unique(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen, out = set(), []
    for e in entries:
        key = (e["backend"], e["reason"])
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


def _check_outputs(options: BenchOptions) -> None:
    """Fail before the long run, not after it: the output folders exist, matplotlib is there."""
    for path in (options.out, options.markdown, options.plot):
        if path is not None and not path.parent.is_dir():
            raise OptionsError(f"{path}: no such directory {path.parent} to write into")
    if options.plot is not None:
        require("matplotlib", "bench")


def _line(row: dict[str, Any]) -> str:
    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    e2e, per_token = num(row.get("e2e_ms_p50"), "9.1f"), num(row.get("per_token_ms_p50"), "7.2f")
    per_s, roof = num(row.get("captions_per_s"), "7.2f"), num(row.get("roofline_fraction"), ".2f")
    return (
        f"      {row['backend']:<16}{row['precision']:<5} {row['device']:<4} batch {row['batch']:>3}: "
        f"e2e p50 {e2e} ms, {per_token} ms/token, {per_s} captions/s, roofline {roof}"
    )


class _Progress:
    """Progress lines on stderr, with the time since the start."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"{time.perf_counter() - self.start:7.1f}s  {message}", file=sys.stderr, flush=True)
