"""The benchmark report's plot (matplotlib, imported when it draws): latency at batch 1 by stage,
and throughput by batch size. Torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipcap.benchmarks.report_targets import label, series

PLOT_STAGES = ("preprocess", "image_encoder", "mapper", "prefill", "decode", "other")
STAGE_COLOURS = {
    "preprocess": "#9e9e9e",
    "image_encoder": "#4e79a7",
    "mapper": "#76b7b2",
    "prefill": "#f28e2b",
    "decode": "#e15759",
    "other": "#d4d4d4",
}


def series_colours(names: list[str]) -> dict[str, tuple[float, ...]]:
    """A distinct colour for each of up to 20 series: tab20's ten strong colours first, then their
    light partners (matplotlib's default cycle repeats after ten)."""
    import matplotlib

    palette = matplotlib.colormaps["tab20"].colors
    return {name: palette[(2 * i) % 20 + (2 * i) // 20 % 2] for i, name in enumerate(names)}


def plot(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 6.5), gridspec_kw={"width_ratios": [1.25, 1]})
    _plot_latency(left, results)
    _plot_throughput(right, results, report["config"])

    m = report["machine"]
    title = f"clipcap bench: {m['cpu']}, {m['threads']} threads, {m['read_gbps']:.1f} GB/s read"
    if report["config"].get("quick"):
        title += " (quick mode: a tiny model)"
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_latency(left: Any, results: list[dict[str, Any]]) -> None:
    """Batch 1's stacked stages per backend, with the end-to-end median at the bar's end."""
    import matplotlib.pyplot as plt

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


def _plot_throughput(right: Any, results: list[dict[str, Any]], config: dict[str, Any]) -> None:
    """Captions per second against the batch size, log-log, one line per variant and backend."""
    import matplotlib.ticker

    styles = {v: ls for v, ls in zip(config["variants"], ("-", "--", ":", "-."), strict=False)}
    keys = series(results)
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
    right.set_xticks(config["batch_sizes"], [str(b) for b in config["batch_sizes"]])
    right.set_xlabel("batch size")
    right.set_ylabel("captions / s")
    right.set_title("Throughput")
    right.grid(True, which="both", alpha=0.3)
    right.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)


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
