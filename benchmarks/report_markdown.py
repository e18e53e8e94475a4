"""The benchmark report as a markdown page: the machine and the run, latency, throughput, the targets
met or missed, token agreement, the trained models' quantized captions, cold start, notes, skips.
Torch-free.
"""

from __future__ import annotations

from typing import Any

from clipcap.benchmarks.report_targets import _fmt_goal, _value, _verdict, label, series, targets


def _n(value: float | None, fmt: str = ".1f") -> str:
    return "–" if value is None else format(value, fmt)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def markdown(report: dict[str, Any]) -> str:
    results = report["results"]
    lines = _about_the_run(report)
    lines += _latency_section(results)
    lines += _throughput_section(results, report["config"]["batch_sizes"])
    lines += _targets_section(report)
    lines += _agreement_section(report.get("agreement"))
    lines += trained_section(report.get("trained_agreement"))
    lines += _cold_start_section(report.get("cold_start") or {})
    lines += _notes_and_skips(report)
    return "\n".join(lines)


def _about_the_run(report: dict[str, Any]) -> list[str]:
    """The title, the machine, the software, the command to reproduce it and what was run."""
    m, c = report["machine"], report["config"]
    lines = ["# clipcap bench", ""]
    if c.get("quick"):
        lines += [
            "**Quick mode**: a tiny model, to check that everything runs; its numbers mean nothing.",
            "",
        ]
    memory = f", {m['memory_bytes'] / 2**30:.0f} GiB memory" if m.get("memory_bytes") else ""
    llc = (
        f", last-level cache {m['last_level_cache_bytes'] / 2**20:.0f} MiB"
        if m.get("last_level_cache_bytes")
        else ""
    )
    gpu = ""
    if m.get("gpu"):
        gpu = f"; GPU {m['gpu']}" + (
            f" ({m['gpu_read_gbps']:.0f} GB/s read)" if m.get("gpu_read_gbps") else ""
        )
    models = "; ".join(f"**{v}**: {d}" for v, d in c["models"].items())
    runs = ", ".join(f"{b}: {n}" for b, n in c["runs_per_batch"].items())
    nocache = ", ".join(f"{b}: {n}" for b, n in c.get("runs_per_batch_nocache", {}).items())
    lines += [
        f"Machine: {m['cpu']}, {m['cores']} cores{memory}{llc}; memory read bandwidth "
        f"{m['read_gbps']:.1f} GB/s ({m.get('read_bandwidth_method', 'numpy')} over "
        f"{m['read_bandwidth_array_bytes'] / 2**30:.1f} GiB){gpu}.",
        f"Software: Python {m['python']}, onnxruntime {m['onnxruntime']}, torch {m['torch']}, "
        f"transformers {m['transformers']}, numpy {m['numpy']}; {m['os']}.",
        "",
        f"Reproduce: `{c['command']}`",
        "",
    ]
    load = m.get("load_average_at_start")
    if load is not None and load >= 0.5:
        lines += [
            f"**Warning**: the load average was {load:.1f} when the run started: another program was "
            "running, so these numbers are noisy (PyTorch's with all cores most).",
            "",
        ]
    lines += [
        f"Models (the same weights in every backend): {models}. Decoding: {c['decoding']}. "
        f"Threads: {c['threads']} (PyTorch and ONNX Runtime). Timed runs per batch size, after "
        f"warm-up: {runs} (pytorch-nocache, one picture at a time and warm from batch 1: {nocache}). "
        f"The whole run took {report['seconds']:.0f} s.",
        "",
    ]
    return lines


def _latency_section(results: list[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    lines += ["## Latency per caption, batch 1", ""]
    header = [
        "variant",
        "backend",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "ms/token",
        "bound ms/token",
        "roofline",
        "preprocess",
        "image encoder",
        "mapper",
        "prefill",
    ]
    rows = []
    for r in (r for r in results if r["batch"] == 1):
        s = r.get("stages_ms") or {}
        numbers = [r.get(k) for k in ("e2e_ms_p50", "e2e_ms_p90", "e2e_ms_p99")]
        rows.append(
            [r["variant"], label(r), *map(_n, numbers)]
            + [_n(r.get(k), ".2f") for k in ("per_token_ms_p50", "roofline_ms", "roofline_fraction")]
            + [_n(s.get(k)) for k in ("preprocess", "image_encoder", "mapper", "prefill")]
        )
    lines += [*_table(header, rows), ""]
    lines += [
        "Stages in ms (medians). ms/token: the time from one decoder output to the next (a decoder "
        "step and the choice of its token). Bound: the bytes of weights a step reads over the read "
        "bandwidth; roofline = bound / ms/token (1.0 = at the hardware's limit; above 1 when the "
        "weights fit in the cache). pytorch-nocache re-runs the whole sequence each step, one picture "
        "at a time.",
        "",
    ]
    return lines


def _throughput_section(results: list[dict[str, Any]], batches: list[int]) -> list[str]:
    lines: list[str] = []
    lines += ["## Throughput (captions/s)", ""]
    rows = []
    for variant, name in series(results):
        cells = []
        for b in batches:
            hit = next(
                (r for r in results if (r["variant"], label(r), r["batch"]) == (variant, name, b)), None
            )
            cells.append(_n(_value(hit, "captions_per_s"), ".2f"))
        rows.append([variant, name, *cells])
    lines += [*_table(["variant", "backend", *[f"batch {b}" for b in batches]], rows), ""]
    return lines


def _targets_section(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    lines += ["## Targets", ""]
    rows = []
    for t in targets(report):
        goal, measured = _fmt_goal(t["goal"], t["kind"]), _fmt_goal(t["measured"], t["kind"])
        rows.append([t["variant"], t["target"], goal, measured, _verdict(t)])
    lines += [*_table(["variant", "target", "goal", "measured", "verdict"], rows), ""]
    return lines


def _agreement_section(agreement: dict[str, Any] | None) -> list[str]:
    lines: list[str] = []
    if agreement:
        lines += ["## Greedy token agreement", ""]
        rows = []
        for variant, a in agreement.items():
            for key, v in a["compared"].items():
                exact = f"{v['exact_captions']}/{v['captions']}"
                rows.append([variant, a["reference"], key, _n(v["token_agreement"], ".3f"), exact])
        lines += _table(["variant", "reference", "compared", "identical tokens", "identical captions"], rows)
        lines += [
            "",
            "Random weights give nearly flat next-token distributions, so quantized agreement here says "
            "little about a trained model: the next section measures that.",
            "",
        ]
    return lines


def _cold_start_section(cold: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if cold.get("runs"):
        lines += [
            f"## Cold start ({cold['variant']} bundles, a fresh process, median of {cold['repeats']})",
            "",
        ]
        seconds = ("import_s", "load_s", "first_caption_s", "process_s")
        rows = [
            [r["precision"], "yes" if r["check_files"] else "no", *(_n(r[k], ".2f") for k in seconds)]
            for r in cold["runs"]
        ]
        lines += _table(
            ["precision", "SHA-256 checked", "import s", "Captioner() s", "first caption s", "process s"],
            rows,
        )
        lines += ["", "process: the whole process, interpreter start included.", ""]
    return lines


def _notes_and_skips(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    notes = {r["backend"]: r["notes"] for r in report["results"] if r.get("notes")}
    if notes:
        lines += ["## Notes from the backends", ""]
        lines += [f"- {backend}: {text}" for backend, text in notes.items()]
        lines.append("")

    if report.get("skipped"):
        lines += ["## Skipped", ""]
        for s in report["skipped"]:
            fix = f" To run it: `{s['fix']}`." if s.get("fix") else ""
            lines.append(f"- {s['backend']}: {s['reason']}.{fix}")
        lines.append("")
    return lines


def trained_section(trained: dict[str, Any] | None) -> list[str]:
    """Markdown: the quantized bundles of `clipcap demo`'s trained models against their fp32 bundle."""
    if not trained:
        return []
    lines = ["## Quantized captions of a trained model", ""]
    rows = []
    for variant, entry in trained.items():
        rows.append([variant, "fp32", "(reference)", "1.000", _n(entry["exact_match_fp32"], ".3f"), "–"])
        for precision, r in entry["precisions"].items():
            rows.append(
                [
                    variant,
                    precision,
                    f"{r['exact_captions']}/{r['captions']}",
                    _n(r["token_agreement"], ".3f"),
                    _n(r["exact_match"], ".3f"),
                    _n(r["bundle_bytes"] / 2**20, ".1f"),
                ]
            )
    lines += _table(
        [
            "variant",
            "precision",
            "captions identical to fp32",
            "identical tokens",
            "exact match",
            "bundle MiB",
        ],
        rows,
    )
    lines += [
        "",
        "The models `clipcap demo` trains (a small CLIP and GPT-2 on synthetic shapes), exported at each "
        "precision and captioning the demo's held-out pictures (greedy, the bundle's stop tokens). "
        "Exact match: the caption equals one of the picture's reference captions.",
        "",
    ]
    return lines
