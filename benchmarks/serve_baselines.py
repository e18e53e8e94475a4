"""The load benchmark's baselines (a direct Captioner, the offline batch-16 throughput) and the
report's machine, config and reproduce sections."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from typing import Any

from clipcap.benchmarks.serve_options import (
    ServeBenchOptions,
    Workload,
    request_stream,
)

from clipcap.machine import cpu_name, memory_bytes, package_version

Say = Callable[[str], None]


def direct_latency(options: ServeBenchOptions, workload: Workload, images: list[bytes], say: Say) -> dict:
    """``Captioner.caption`` on the first requests of the sequence, one at a time, same threads."""
    from clipcap.runtime import Captioner

    if not options.direct_requests:
        return {}
    captioner = Captioner(workload.bundle, threads=options.threads)
    requests = request_stream(options, workload, images, None)
    first = next(requests)
    for _ in range(2):  # warm-up
        captioner.caption(first.image, **first.options)
    requests = request_stream(options, workload, images, None)
    latencies: dict[int, float] = {}
    for _ in range(options.direct_requests):
        r = next(requests)
        start = time.perf_counter()
        captioner.caption(r.image, **r.options)
        latencies[r.index] = (time.perf_counter() - start) * 1000
    del captioner
    from clipcap.benchmarks.timing import median

    out = {"latency_ms": latencies, "latency_ms_p50": median(list(latencies.values()))}
    say(f"  [{workload.name}] direct Captioner.caption, one at a time: p50 {out['latency_ms_p50']:.1f} ms")
    return out


def offline_throughput(options: ServeBenchOptions, workload: Workload, images: list[bytes], say: Say) -> dict:
    """`clipcap bench`'s onnxruntime backend at batch 16 on the same bundle, with as many tokens per
    caption as the workload's mean."""
    from clipcap.benchmarks.backends import OnnxRuntimeBackend
    from clipcap.benchmarks.timing import Summary

    low, high = options.tokens
    high = min(high, workload.max_tokens_room)
    tokens = max(2, round((min(low, high) + high) / 2))
    batch = 16
    backend = OnnxRuntimeBackend(workload.bundle, workload.precision, "cpu", options.threads, tokens)
    pictures = [images[i % len(images)] for i in range(batch)]
    backend.caption(pictures)  # warm-up
    runs = [backend.caption(pictures) for _ in range(2 if options.quick else 3)]
    backend.close()
    s = Summary.of(runs)
    say(f"  [{workload.name}] offline batch {batch}, {tokens} tokens each: {s.captions_per_s:.2f} captions/s")
    return {
        "batch": batch,
        "new_tokens": tokens,
        "captions_per_s": s.captions_per_s,
        "e2e_ms_p50": s.e2e_ms_p50,
    }


# --------------------------------------------------------------------------------------------------
# Description


def describe_machine(options: ServeBenchOptions) -> dict[str, Any]:
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": options.threads,
        "memory_bytes": memory_bytes(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": package_version("onnxruntime"),
        "httpx": package_version("httpx"),
        "uvicorn": package_version("uvicorn"),
        "fastapi": package_version("fastapi"),
        "clipcap_onnx": package_version("clipcap-onnx"),
    }


def config_section(options: ServeBenchOptions, workloads: list[Workload]) -> dict[str, Any]:
    d = options.to_dict()
    d["command"] = reproduce_command(options)
    d["workloads"] = {w.name: w.description for w in workloads}
    low, high = options.tokens
    d["requests"] = (
        f"greedy, one JPEG picture each (640 x 480), max_new_tokens drawn from {low}-{high} (seed "
        f"{options.seed}); random-weight models: min_new_tokens = max_new_tokens (EOS never ends them); "
        f"{options.stream_share:.0%} streamed (stream=true)"
    )
    return d


def reproduce_command(options: ServeBenchOptions) -> str:
    parts = ["clipcap bench serve"]
    if options.quick:
        parts.append("--quick")
    defaults = ServeBenchOptions(quick=options.quick, cache_dir=options.cache_dir, trained_check=False)
    for flag, name in (
        ("--precisions", "precisions"),
        ("--schedulers", "schedulers"),
        ("--concurrency", "concurrency"),
        ("--load", "load_fractions"),
    ):
        if getattr(options, name) != getattr(defaults, name):
            parts.append(f"{flag} {','.join(map(str, getattr(options, name)))}")
    for flag, name in (
        ("--variant", "variant"),
        ("--duration", "duration"),
        ("--max-requests", "max_requests"),
        ("--threads", "threads"),
        ("--max-batch-rows", "max_batch_rows"),
        ("--max-waiting", "max_waiting"),
        ("--waiting-served-ratio", "waiting_served_ratio"),
        ("--request-timeout", "request_timeout"),
        ("--seed", "seed"),
    ):
        if getattr(options, name) != getattr(defaults, name):
            parts.append(f"{flag} {getattr(options, name)}")
    if options.tokens != defaults.tokens:
        parts.append(f"--tokens {options.tokens[0]}-{options.tokens[1]}")
    return " ".join(parts)


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
