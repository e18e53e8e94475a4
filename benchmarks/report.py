"""The benchmark's report: JSON, a markdown page (with the targets, met or missed), a PNG plot.

Ratios are taken within one run, between medians (p50), so the machine's state is shared by the
numbers compared.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from clipcap.benchmarks.options import BenchOptions

PLOT_STAGES = ("preprocess", "image_encoder", "mapper", "prefill", "decode", "other")
STAGE_COLOURS = {
    "preprocess": "#9e9e9e",
    "image_encoder": "#4e79a7",
    "mapper": "#76b7b2",
    "prefill": "#f28e2b",
    "decode": "#e15759",
    "other": "#d4d4d4",
}


def write_reports(report: dict[str, Any], options: BenchOptions) -> list[Path]:
    written = []
    if options.out is not None:
        options.out.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
        written.append(options.out)
    if options.markdown is not None:
        options.markdown.write_text(markdown(report))
        written.append(options.markdown)
    if options.plot is not None:
        plot(report, options.plot)
        written.append(options.plot)
    return written


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --------------------------------------------------------------------------------------------------
# Lookups


def series_colours(names: list[str]) -> dict[str, tuple[float, ...]]:
    """A distinct colour for each of up to 20 series: tab20's ten strong colours first, then their
    light partners (matplotlib's default cycle repeats after ten)."""
    import matplotlib

    palette = matplotlib.colormaps["tab20"].colors
    return {name: palette[(2 * i) % 20 + (2 * i) // 20 % 2] for i, name in enumerate(names)}


def label(row: dict[str, Any]) -> str:
    text = f"{row['backend']} {row['precision']}"
    return text if row.get("device", "cpu") == "cpu" else f"{text} ({row['device']})"


def find(
    results: Iterable[dict[str, Any]], *, variant: str, backend: str, batch: int, precision: str = "fp32"
) -> dict[str, Any] | None:
    for row in results:
        if (row["variant"], row["backend"], row["precision"], row["batch"]) == (
            variant,
            backend,
            precision,
            batch,
        ):
            return row
    return None


def _value(row: dict[str, Any] | None, key: str) -> float | None:
    return None if row is None else row.get(key)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


# --------------------------------------------------------------------------------------------------
# Targets


ROOFLINE_FP32 = "per-token decode, onnxruntime fp32, share of the roofline"
ROOFLINE_INT8 = "per-token decode, onnxruntime int8, share of the roofline"
INT8_VS_TORCH = "end to end, onnxruntime int8 vs pytorch (speed-up)"
INT8_VS_NOCACHE = "end to end, onnxruntime int8 vs pytorch-nocache (speed-up)"
FP32_VS_TORCH = "end to end, onnxruntime fp32 vs pytorch (speed-up)"
BATCH16 = "throughput, onnxruntime fp32, batch 16 vs batch 1"


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goals, each against what this run measured (per variant, at batch 1 unless said)."""
    results = report["results"]
    out = []
    for variant in report["config"]["variants"]:

        def row(backend, precision="fp32", batch=1, variant=variant):
            return find(results, variant=variant, backend=backend, precision=precision, batch=batch)

        ort32, ort8 = row("onnxruntime"), row("onnxruntime", "int8")
        torch, nocache = row("pytorch"), row("pytorch-nocache")
        e2e = {name: _value(r, "e2e_ms_p50") for name, r in (("torch", torch), ("nocache", nocache))}
        batch16 = _value(row("onnxruntime", batch=16), "captions_per_s")
        # The fastest any caption could be: every decode step at the roofline, nothing else costing
        # anything (no image encoder, no prefill). A speed-up goal above baseline / that is out of
        # reach on this machine, however good the runtime.
        tokens = report["config"]["new_tokens"]
        floor8, floor32 = (_product(_value(r, "roofline_ms"), tokens) for r in (ort8, ort32))
        goals = [
            (ROOFLINE_FP32, 0.87, "fraction", _value(ort32, "roofline_fraction"), None),
            (ROOFLINE_INT8, 0.87, "fraction", _value(ort8, "roofline_fraction"), None),
            (
                INT8_VS_TORCH,
                8.0,
                "ratio",
                _ratio(e2e["torch"], _value(ort8, "e2e_ms_p50")),
                _ratio(e2e["torch"], floor8),
            ),
            (
                INT8_VS_NOCACHE,
                16.0,
                "ratio",
                _ratio(e2e["nocache"], _value(ort8, "e2e_ms_p50")),
                _ratio(e2e["nocache"], floor8),
            ),
            (
                FP32_VS_TORCH,
                2.3,
                "ratio",
                _ratio(e2e["torch"], _value(ort32, "e2e_ms_p50")),
                _ratio(e2e["torch"], floor32),
            ),
            (BATCH16, 8.0, "ratio", _ratio(batch16, _value(ort32, "captions_per_s")), None),
        ]
        for name, goal, kind, measured, ceiling in goals:
            met = None if measured is None else measured >= goal
            out.append(
                {
                    "variant": variant,
                    "target": name,
                    "goal": goal,
                    "kind": kind,
                    "measured": measured,
                    "met": met,
                    "shortfall": None if measured is None or met else goal - measured,
                    "ceiling": ceiling,
                }
            )
    return out


def _product(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a * b


def _fmt_goal(value: float | None, kind: str) -> str:
    if value is None:
        return "not measured"
    # Three decimals for fractions: a roofline share of 0.868 against a goal of 0.87 must not read
    # "0.87, missed by 0.00".
    return f"{value:.3f}" if kind == "fraction" else f"{value:.2f}x"


def _verdict(t: dict[str, Any]) -> str:
    if t["met"] is None:
        return "not measured in this run"
    if t["met"]:
        return "met"
    share = t["measured"] / t["goal"] * 100
    verdict = f"missed by {_fmt_goal(t['shortfall'], t['kind'])} ({share:.0f}% of the goal)"
    if t.get("ceiling") is not None and t["ceiling"] < t["goal"]:
        verdict += (
            f"; out of reach here: at most {_fmt_goal(t['ceiling'], t['kind'])} with every decode step "
            "at the roofline and the image encoder and prefill free"
        )
    return verdict


# --------------------------------------------------------------------------------------------------
# Markdown


def _n(value: float | None, fmt: str = ".1f") -> str:
    return "–" if value is None else format(value, fmt)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def markdown(report: dict[str, Any]) -> str:
    m, c, results = report["machine"], report["config"], report["results"]
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

    batches = c["batch_sizes"]
    lines += ["## Throughput (captions/s)", ""]
    keys = []
    for r in results:
        key = (r["variant"], label(r))
        if key not in keys:
            keys.append(key)
    rows = []
    for variant, name in keys:
        cells = []
        for b in batches:
            hit = next(
                (r for r in results if (r["variant"], label(r), r["batch"]) == (variant, name, b)), None
            )
            cells.append(_n(_value(hit, "captions_per_s"), ".2f"))
        rows.append([variant, name, *cells])
    lines += [*_table(["variant", "backend", *[f"batch {b}" for b in batches]], rows), ""]

    lines += ["## Targets", ""]
    rows = []
    for t in targets(report):
        goal, measured = _fmt_goal(t["goal"], t["kind"]), _fmt_goal(t["measured"], t["kind"])
        rows.append([t["variant"], t["target"], goal, measured, _verdict(t)])
    lines += [*_table(["variant", "target", "goal", "measured", "verdict"], rows), ""]

    if report.get("agreement"):
        lines += ["## Greedy token agreement", ""]
        rows = []
        for variant, a in report["agreement"].items():
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

    lines += trained_section(report.get("trained_agreement"))

    cold = report.get("cold_start") or {}
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

    notes = {r["backend"]: r["notes"] for r in results if r.get("notes")}
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
    return "\n".join(lines)


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


def summary(report: dict[str, Any]) -> str:
    """A short plain-text table for the terminal: batch 1 latency and the largest batch's throughput."""
    results = report["results"]
    top = max(report["config"]["batch_sizes"])
    header = ["variant", "backend", "e2e p50 ms", "ms/token", "roofline", f"captions/s @{top}"]
    rows = [header]
    for r in (r for r in results if r["batch"] == 1):
        big = find(results, variant=r["variant"], backend=r["backend"], precision=r["precision"], batch=top)
        rows.append(
            [r["variant"], label(r), _n(r.get("e2e_ms_p50"))]
            + [_n(v, ".2f") for v in (r.get("per_token_ms_p50"), r.get("roofline_fraction"))]
            + [_n(_value(big, "captions_per_s"), ".2f")]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for r in rows:
        cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells))
    lines.insert(1, "  ".join("-" * w for w in widths))
    for t in targets(report):
        goal, measured = _fmt_goal(t["goal"], t["kind"]), _fmt_goal(t["measured"], t["kind"])
        lines.append(f"target [{t['variant']}] {t['target']}: {measured} (goal {goal}): {_verdict(t)}")
    for variant, entry in (report.get("trained_agreement") or {}).items():
        for precision, r in entry["precisions"].items():
            lines.append(
                f"trained {variant} {precision}: {r['exact_captions']}/{r['captions']} captions identical "
                f"to fp32, exact match {r['exact_match']:.3f} (fp32 {entry['exact_match_fp32']:.3f})"
            )
    for s in report.get("skipped", []):
        lines.append(f"skipped {s['backend']}: {s['reason']}" + (f" ({s['fix']})" if s.get("fix") else ""))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Plot


def plot(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    results = report["results"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 6.5), gridspec_kw={"width_ratios": [1.25, 1]})

    ones = [r for r in results if r["batch"] == 1]
    names = [
        f"{r['variant']}: {label(r)}"
        + ("" if (r.get("stages_ms") or {}).get("image_encoder") else " (decoder only)")
        for r in ones
    ]
    for y, r in enumerate(ones):
        x = 0.0
        s = r.get("stages_ms") or {}
        segments = _segments(r, s)
        if not segments and r.get("e2e_ms_p50") is not None:
            segments = [("other", r["e2e_ms_p50"])]
        for stage, width in segments:
            left.barh(y, width, left=x, color=STAGE_COLOURS[stage], edgecolor="white", linewidth=0.5)
            x += width
        total = r.get("e2e_ms_p50") or x
        left.text(x, y, f" {total:.0f} ms", va="center", fontsize=8)
    left.set_yticks(range(len(ones)), names, fontsize=8)
    left.invert_yaxis()
    left.set_xlabel("ms per caption at batch 1, by stage (medians; the number: end to end p50)")
    left.set_title("Latency, batch 1")
    handles = [plt.Rectangle((0, 0), 1, 1, color=STAGE_COLOURS[s]) for s in PLOT_STAGES]
    left.legend(
        handles,
        [s.replace("_", " ") for s in PLOT_STAGES],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.1),
        ncol=len(PLOT_STAGES),
        fontsize=8,
    )
    left.margins(x=0.15)

    styles = {v: ls for v, ls in zip(report["config"]["variants"], ("-", "--", ":", "-."), strict=False)}
    keys = []
    for r in results:
        key = (r["variant"], label(r))
        if key not in keys:
            keys.append(key)
    # One colour per backend (the same in both variants, which differ by line style); the legend
    # sits below the axes, off the points.
    colours = series_colours(list(dict.fromkeys(name for _, name in keys)))
    for variant, name in keys:
        points = sorted(
            (r["batch"], r["captions_per_s"])
            for r in results
            if (r["variant"], label(r)) == (variant, name) and r.get("captions_per_s")
        )
        if points:
            xs, ys = zip(*points, strict=True)
            right.plot(
                xs, ys, styles.get(variant, "-"), marker="o", color=colours[name], label=f"{variant}: {name}"
            )
    right.set_xscale("log", base=2)
    right.set_yscale("log")
    right.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    right.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    right.tick_params(axis="y", which="minor", labelsize=7)
    right.set_xticks(report["config"]["batch_sizes"], [str(b) for b in report["config"]["batch_sizes"]])
    right.set_xlabel("batch size")
    right.set_ylabel("captions / s")
    right.set_title("Throughput")
    right.grid(True, which="both", alpha=0.3)
    right.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)

    m = report["machine"]
    title = f"clipcap bench: {m['cpu']}, {m['threads']} threads, {m['read_gbps']:.1f} GB/s read"
    if report["config"].get("quick"):
        title += " (quick mode: a tiny model)"
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _segments(row: dict[str, Any], stages: dict[str, Any]) -> list[tuple[str, float]]:
    out = []
    steps = max(row.get("new_tokens", 1) - 1, 0)
    for stage in PLOT_STAGES:
        if stage == "decode":
            value = stages.get("decode_per_token")
            value = None if value is None else value * steps
        else:
            value = stages.get(stage)
        if value:
            out.append((stage, value))
    return out
