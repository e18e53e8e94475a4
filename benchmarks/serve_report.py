"""`clipcap bench serve`'s report: JSON, markdown with issue 13's targets met or missed, a plot.

Torch-free. The targets are goals for the full-size models on the project's 2-core CPU; the report
states each against what this run measured (on a --quick run they are computed on a tiny model
and mean nothing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipcap.benchmarks.serve_targets import (
    _mib,
    _n,
    _table,
    _verdict,
    closed_point,
    point_label,
    targets,
)

COLOURS = {"continuous": "#1f77b4", "static": "#d62728", "none": "#2ca02c"}


def write_reports(report: dict[str, Any], options) -> list[Path]:
    from clipcap.benchmarks.report import write_files

    report["targets"] = targets(report)
    return write_files(report, options, markdown, plot)


# --------------------------------------------------------------------------------------------------
# Lookups


def markdown(report: dict[str, Any]) -> str:
    lines = _header_section(report)
    for w in report["workloads"]:
        lines += _workload_section(w)
    lines += _targets_section(report)
    lines += [
        "Latency: from sending the request to the whole answer (the `done` event for streamed ones); TTFT: "
        "to the first `token` event (streamed requests only); queue: the server's `timing.queue_ms`; "
        "rows/step: the mean rows of a decode step (`clipcap_batch_step_rows` in /metrics); RSS: the "
        "server process's peak resident memory during the point.",
        "",
    ]
    return "\n".join(lines)


def _header_section(report: dict[str, Any]) -> list[str]:
    m, c = report["machine"], report["config"]
    lines = ["# clipcap bench serve", ""]
    if c.get("quick"):
        lines += [
            "**Quick mode**: a tiny model and short points, to check that everything runs; its numbers "
            "mean nothing.",
            "",
        ]
    memory = f", {m['memory_bytes'] / 2**30:.0f} GiB memory" if m.get("memory_bytes") else ""
    lines += [
        f"Machine: {m['cpu']}, {m['cores']} cores{memory}; the server and the load generator share it "
        f"(server threads: {m['threads']}).",
        f"Software: Python {m['python']}, onnxruntime {m['onnxruntime']}, uvicorn {m['uvicorn']}, "
        f"FastAPI {m['fastapi']}, httpx {m['httpx']}; {m['os']}.",
        "",
        f"Reproduce: `{c['command']}`",
        "",
    ]
    load = m.get("load_average_at_start")
    if load is not None and load >= 0.5:
        lines += [
            f"**Warning**: the load average was {load:.1f} when the run started; the numbers are noisy.",
            "",
        ]
    lines += [
        f"Requests: {c['requests']}. Each scheduler runs in a fresh `python -m clipcap.serve` process on "
        f"127.0.0.1 with at most {c['max_batch_rows']} rows per batch, {c['max_waiting']} waiting requests "
        "and a "
        f"{c['request_timeout']:.0f} s deadline. Points: closed loop at concurrency "
        f"{', '.join(map(str, c['concurrency']))} ({c['duration']:.1f} s of sending, at most "
        f"{c['max_requests']} "
        f"requests, then the requests in flight finish); open loop with Poisson arrivals at "
        f"{', '.join(f'{f:g}' for f in c['load_fractions'])} x the scheduler's closed-loop peak "
        "(its saturation), "
        f"and continuous also at 70 % of static's. The whole run took {report['seconds']:.0f} s.",
        "",
    ]
    return lines


def _workload_section(w: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    lines += [f"## {w['name']}", "", w["description"] + ".", ""]
    header = [
        "scheduler", "point", "offered/s", "captions/s", "p50 ms", "p90 ms", "p99 ms", "TTFT p50",
        "TTFT p99", "queue p50", "rows/step", "ok", "503", "504", "failed", "RSS",
    ]  # fmt: skip
    rows = []
    for s in w["servers"]:
        for p in s["points"]:
            rows.append(
                [
                    s["scheduler"],
                    point_label(p),
                    _n(p.get("offered_per_s"), ".2f"),
                    _n(p["captions_per_s"], ".2f"),
                    *(_n(p.get(k), ".0f") for k in ("latency_ms_p50", "latency_ms_p90", "latency_ms_p99")),
                    *(_n(p.get(k), ".0f") for k in ("ttft_ms_p50", "ttft_ms_p99", "queue_ms_p50")),
                    _n(p.get("rows_per_step_mean")),
                    str(p["ok"]),
                    str(p["rejected"]),
                    str(p["timed_out"]),
                    str(p["failed"]),
                    _mib(p.get("rss_max")),
                ]
            )
        if s.get("error"):
            rows.append([s["scheduler"], f"**error**: {s['error']}", *[""] * (len(header) - 2)])
    lines += [*_table(header, rows), ""]
    direct, offline = w.get("direct") or {}, w.get("offline") or {}
    notes = []
    if direct:
        notes.append(
            "direct `Captioner.caption`, one request at a time: p50 "
            f"{_n(direct['latency_ms_p50'])} ms over "
            f"{len(direct['latency_ms'])} requests"
        )
    if offline:
        notes.append(
            f"offline batch {offline['batch']} (`clipcap bench`'s onnxruntime backend, "
            f"{offline['new_tokens']} "
            f"tokens each): {_n(offline['captions_per_s'], '.2f')} captions/s"
        )
    for s in w["servers"]:
        mix = next((p for p in s["points"] if p["kind"] == "mix"), None)
        plain = closed_point(w, s["scheduler"], mix["concurrency"]) if mix else None
        if mix and plain and mix.get("greedy_latency_ms_p50") is not None:
            notes.append(
                f"{s['scheduler']}, beam cost: with {mix['beam_share']:.0%} of the requests beam search "
                f"({mix['beam_size']} beams) at concurrency {mix['concurrency']}, the greedy requests' "
                f"latency p50 / p99 is {_n(mix['greedy_latency_ms_p50'], '.0f')} / "
                f"{_n(mix['greedy_latency_ms_p99'], '.0f')} ms against "
                f"{_n(plain['latency_ms_p50'], '.0f')} / {_n(plain['latency_ms_p99'], '.0f')} ms with no "
                "beams; the beams' own p50 "
                f"{_n(mix.get('beam_latency_ms_p50'), '.0f')} ms; {_n(mix['captions_per_s'], '.2f')} "
                f"captions/s against {_n(plain['captions_per_s'], '.2f')}"
            )
        notes.append(
            f"{s['scheduler']}: ready {s['ready_s']:.1f} s after start, saturation "
            f"{_n(s.get('saturation_captions_per_s'), '.2f')} captions/s, exit status "
            f"{s.get('exit_code')}"
        )
    lines += [f"- {n}" for n in notes] + [""]
    return lines


def _targets_section(report: dict[str, Any]) -> list[str]:
    c = report["config"]
    lines: list[str] = []
    ts = report.get("targets") or targets(report)
    if ts:
        lines += ["## Targets (issue 13)", ""]
        if c.get("quick"):
            lines += [
                "Computed on the quick mode's tiny model: they show the report works, nothing about "
                "the goals.",
                "",
            ]
        rows = [
            [t["workload"], t["target"], t["goal"], t["measured"] or "–", _verdict(t), t["how"]] for t in ts
        ]
        lines += [*_table(["workload", "target", "goal", "measured", "verdict", "how"], rows), ""]
    return lines


def summary(report: dict[str, Any]) -> str:
    lines = []
    for w in report["workloads"]:
        for s in w["servers"]:
            c16 = closed_point(w, s["scheduler"], 16)
            lines.append(
                f"{w['name']:<14} {s['scheduler']:<10} saturation "
                f"{_n(s.get('saturation_captions_per_s'), '.2f')} "
                f"captions/s"
                + (
                    f", c=16 {c16['captions_per_s']:.2f}/s p99 {c16['latency_ms_p99']:.0f} ms"
                    if c16 and c16.get("latency_ms_p99")
                    else ""
                )
            )
    for t in report.get("targets") or targets(report):
        lines.append(
            f"target [{t['workload']}] {t['target']}: {t['measured'] or '-'} (goal {t['goal']}): "
            f"{_verdict(t)}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Plot


def plot(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    workloads = report["workloads"]
    fig, axes = plt.subplots(2, len(workloads), figsize=(5.2 * len(workloads) + 1, 8.5), squeeze=False)
    for col, w in enumerate(workloads):
        for row, kind in enumerate(("closed", "open")):
            ax = axes[row][col]
            for s in w["servers"]:
                points = sorted(
                    (p for p in s["points"] if p["kind"] == kind and p.get("latency_ms_p50") is not None),
                    key=lambda p: p["offered_per_s"] if kind == "open" else p["concurrency"],
                )
                if not points:
                    continue
                colour = COLOURS.get(s["scheduler"], "#555555")
                xs = [p["captions_per_s"] for p in points]
                ax.plot(xs, [p["latency_ms_p50"] for p in points], "-o", color=colour, ms=5)
                ax.plot(xs, [p["latency_ms_p99"] for p in points], "--^", color=colour, ms=5, alpha=0.85)
                if kind == "closed":
                    for p in points:
                        ax.annotate(
                            f"c{p['concurrency']}", (p["captions_per_s"], p["latency_ms_p50"]),
                            textcoords="offset points", xytext=(4, -10), fontsize=7, color=colour,
                        )  # fmt: skip
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
            ax.set_xlabel("throughput (captions / s)")
            ax.set_ylabel("latency (ms)")
            what = "closed loop (concurrency)" if kind == "closed" else "open loop (Poisson, offered load)"
            ax.set_title(f"{w['name']}: {what}", fontsize=10)
    handles = [Line2D([], [], color=COLOURS[s], lw=2.5) for s in COLOURS]
    handles += [
        Line2D([], [], color="#444", ls="-", marker="o"),
        Line2D([], [], color="#444", ls="--", marker="^"),
    ]
    labels = [*COLOURS, "p50", "p99"]
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    m = report["machine"]
    title = f"clipcap bench serve: {m['cpu']}, {m['threads']} threads"
    if report["config"].get("quick"):
        title += " (quick mode: a tiny model)"
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
