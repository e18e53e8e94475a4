"""The benchmark's report: JSON, a markdown page (with the targets, met or missed), a PNG plot.

Ratios are taken within one run, between medians (p50), so the machine's state is shared by the
numbers compared.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clipcap.benchmarks.options import BenchOptions

# The page, the plot and the targets live in their own modules; their names are re-exported here,
# where `clipcap bench` and the tests import them.
from clipcap.benchmarks.report_markdown import _n, markdown, trained_section  # noqa: F401
from clipcap.benchmarks.report_plot import PLOT_STAGES, STAGE_COLOURS, plot, series_colours  # noqa: F401
from clipcap.benchmarks.report_targets import (  # noqa: F401
    BATCH16,
    FP32_VS_TORCH,
    INT8_VS_NOCACHE,
    INT8_VS_TORCH,
    ROOFLINE_FP32,
    ROOFLINE_INT8,
    _fmt_goal,
    _value,
    _verdict,
    find,
    label,
    targets,
)


def write_reports(report: dict[str, Any], options: BenchOptions) -> list[Path]:
    return write_files(report, options, markdown, plot)


def write_files(
    report: dict[str, Any],
    options: Any,
    render_markdown: Callable[[dict[str, Any]], str],
    render_plot: Callable[[dict[str, Any], Path], None],
) -> list[Path]:
    """The report as JSON, markdown and a plot, to whichever of options.out / .markdown / .plot is
    set (both benchmarks write their reports this way); the paths written."""
    written = []
    if options.out is not None:
        options.out.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
        written.append(options.out)
    if options.markdown is not None:
        options.markdown.write_text(render_markdown(report))
        written.append(options.markdown)
    if options.plot is not None:
        render_plot(report, options.plot)
        written.append(options.plot)
    return written


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


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
