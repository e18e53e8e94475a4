"""`clipcap bench`'s report sections, apart from the timings: each row in the report's schema, the
token agreement between backends, the machine, the models, the config and the command that
reproduces the run. Torch-free to import (torch and ONNX Runtime are imported to describe the machine).
"""

from __future__ import annotations

import os
import platform
from typing import Any

from clipcap.benchmarks.options import BenchOptions

from clipcap.machine import cpu_name, memory_bytes, package_version

RESULT_KEYS = (
    "backend",
    "precision",
    "device",
    "variant",
    "batch",
    "new_tokens",
    "e2e_ms_p50",
    "e2e_ms_p90",
    "e2e_ms_p99",
    "per_token_ms_p50",
    "captions_per_s",
    "roofline_fraction",
)
STAGE_KEYS = ("preprocess", "image_encoder", "mapper", "prefill", "decode_per_token")


def normalise_row(raw: dict[str, Any], **defaults: Any) -> dict[str, Any]:
    """A result from elsewhere (the optimum worker) in the report's schema: every key present."""
    row = {key: raw.get(key) for key in RESULT_KEYS}
    for key, value in defaults.items():
        if row.get(key) is None or key == "variant":
            row[key] = value
    row["precision"] = row["precision"] or "fp32"
    row["device"] = row["device"] or "cpu"
    stages = dict(raw.get("stages_ms") or {})
    row["stages_ms"] = {key: stages.get(key) for key in (*STAGE_KEYS, *stages)}
    if row["stages_ms"]["decode_per_token"] is None:
        row["stages_ms"]["decode_per_token"] = row["per_token_ms_p50"]
    for key, value in raw.items():
        row.setdefault(key, value)
    return row


def agreement(tokens: dict[tuple, list[list[int]]], options: BenchOptions) -> dict[str, Any]:
    """Greedy tokens of each backend and precision against ONNX Runtime fp32 (or, without it, the
    PyTorch backend) on the same pictures: the share of identical tokens, position by position,
    and of identical captions, at the largest batch both ran."""
    out: dict[str, Any] = {}
    for variant in options.variants:
        runs: dict[tuple, dict[int, list[list[int]]]] = {}  # (backend, precision, device) -> batch -> tokens
        for (v, backend, precision, device, batch), got in tokens.items():
            if v == variant:
                runs.setdefault((backend, precision, device), {})[batch] = got
        candidates = [k for k in runs if k[:2] == ("onnxruntime", "fp32")] or [
            k for k in runs if k[0] == "pytorch"
        ]
        if not candidates:
            continue
        ref_key = candidates[0]
        reference = runs[ref_key]
        compared = {}
        for key, by_batch in runs.items():
            common = sorted(set(by_batch) & set(reference))
            if key == ref_key or not common:
                continue
            batch = common[-1]
            pairs = list(zip(reference[batch], by_batch[batch], strict=True))
            per_caption = [
                sum(a == b for a, b in zip(r, g, strict=False)) / max(len(r), len(g), 1) for r, g in pairs
            ]
            compared["/".join(key)] = {
                "token_agreement": sum(per_caption) / len(per_caption),
                "exact_captions": sum(r == g for r, g in pairs),
                "captions": len(pairs),
            }
        out[variant] = {"reference": "/".join(ref_key), "compared": compared}
    return out


def describe_machine(options: BenchOptions, bandwidth: dict[str, float]) -> dict[str, Any]:
    import onnxruntime
    import torch
    from clipcap.benchmarks.roofline import last_level_cache_bytes

    gpu = None
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": options.threads,
        "read_gbps": bandwidth["read_gbps"],
        "read_bandwidth_array_bytes": bandwidth["array_bytes"],
        "read_bandwidth_method": bandwidth["method"],
        "last_level_cache_bytes": last_level_cache_bytes(),
        "memory_bytes": memory_bytes(),
        "gpu": gpu,
        "gpu_read_gbps": None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "torch": torch.__version__,
        "transformers": package_version("transformers"),
        "numpy": package_version("numpy"),
        "clipcap_onnx": package_version("clipcap-onnx"),
    }


def describe_model(spec) -> str:
    g, m = spec.config.gpt2, spec.config.mapper
    mapper = (
        "MLP mapper"
        if m.kind == "mlp"
        else f"transformer mapper ({m.num_layers} layers, clip_length {m.clip_length})"
    )
    return (
        f"GPT-2 {g.n_layer} x {g.n_embd} (vocabulary {g.vocab_size}), CLIP {spec.clip}, {mapper}, "
        f"prefix {m.prefix_length}, random weights"
    )


def config_section(options: BenchOptions) -> dict[str, Any]:
    from clipcap.benchmarks.models import model_spec

    d = options.to_dict()
    d["runs_per_batch"] = {str(b): options.runs_for(b)[1] for b in options.batch_sizes}
    d["warmup_per_batch"] = {str(b): options.runs_for(b)[0] for b in options.batch_sizes}
    d["runs_per_batch_nocache"] = {str(b): options.runs_for(b, True)[1] for b in options.batch_sizes}
    d["models"] = {v: describe_model(model_spec(v, options.quick)) for v in options.variants}
    d["decoding"] = f"greedy, exactly {options.new_tokens} new tokens (no EOS, no stop tokens)"
    d["command"] = reproduce_command(options)
    return d


def reproduce_command(options: BenchOptions) -> str:
    parts = ["clipcap bench"]
    if options.quick:
        parts.append("--quick")
    defaults = BenchOptions(quick=options.quick, provider=options.provider)
    for flag, name in (
        ("--backends", "backends"),
        ("--precisions", "precisions"),
        ("--batch-sizes", "batch_sizes"),
        ("--variants", "variants"),
    ):
        value = getattr(options, name)
        if value != getattr(defaults, name):
            parts.append(f"{flag} {','.join(map(str, value))}")
    for flag, name in (("--new-tokens", "new_tokens"), ("--runs", "runs"), ("--threads", "threads")):
        value = getattr(options, name)
        if value != getattr(defaults, name):
            parts.append(f"{flag} {value}")
    if options.provider != "cpu":
        parts.append(f"--provider {options.provider}")
    return " ".join(parts)
