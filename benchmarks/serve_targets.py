"""`clipcap bench serve`'s lookups into a report and issue 13's targets, each met or missed."""

from __future__ import annotations

from typing import Any

RSS_GROWTH_LIMIT = 1.10  # "RSS stays flat": the overload point's peak within 10 % of the earlier peak


def server(workload: dict[str, Any], scheduler: str) -> dict[str, Any] | None:
    return next((s for s in workload["servers"] if s["scheduler"] == scheduler), None)


def closed_point(workload: dict[str, Any], scheduler: str, concurrency: int) -> dict[str, Any] | None:
    s = server(workload, scheduler)
    if s is None:
        return None
    return next((p for p in s["points"] if p["kind"] == "closed" and p["concurrency"] == concurrency), None)


def open_points(workload: dict[str, Any], scheduler: str) -> list[dict[str, Any]]:
    s = server(workload, scheduler)
    return [] if s is None else [p for p in s["points"] if p["kind"] == "open"]


def _get(point: dict[str, Any] | None, key: str) -> float | None:
    return None if point is None else point.get(key)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


# --------------------------------------------------------------------------------------------------
# Targets


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 13's goals for each random-weight workload, against this run's numbers."""
    out: list[dict[str, Any]] = []
    for w in report["workloads"]:
        if w.get("trained"):
            continue

        def add(name, goal, measured, met, how, note="", w=w):
            out.append(
                {
                    "workload": w["name"],
                    "target": name,
                    "goal": goal,
                    "measured": measured,
                    "met": met,
                    "how": how,
                    "note": note,
                }
            )

        _throughput_target(w, add)
        _latency_at_70_target(w, add)
        _concurrency_1_target(report, w, add)
        _sustained_target(w, add)
        _overload_targets(report, w, add)
    return out


def _throughput_target(w, add) -> None:
    # 1. continuous >= 3x none at concurrency 16.
    c16, n16 = closed_point(w, "continuous", 16), closed_point(w, "none", 16)
    ratio = _ratio(_get(c16, "captions_per_s"), _get(n16, "captions_per_s"))
    add(
        "throughput at concurrency 16, continuous vs none",
        ">= 3.00x",
        _fmt(ratio, "x"),
        None if ratio is None else ratio >= 3,
        "closed loop, captions/s",
        _short(ratio, 3, "x", higher=True),
    )


def _latency_at_70_target(w, add) -> None:
    # 2. at 70 % of static's saturation, continuous p99 <= 0.6 x static's.
    static_70 = next(
        (p for p in open_points(w, "static") if abs(p["fraction_of_saturation"] - 0.7) < 1e-9), None
    )
    cont_70 = next((p for p in open_points(w, "continuous") if p.get("rate_basis") == "static"), None)
    if cont_70 is None and static_70 is not None:  # continuous's own point at the same rate, if any
        cont_70 = next(
            (
                p
                for p in open_points(w, "continuous")
                if abs(p["offered_per_s"] - static_70["offered_per_s"]) < 1e-6
            ),
            None,
        )
    ratio = _ratio(_get(cont_70, "latency_ms_p99"), _get(static_70, "latency_ms_p99"))
    rate = _get(static_70, "offered_per_s")
    add(
        "p99 latency at 70 % of static's saturation, continuous vs static",
        "<= 0.60x",
        _fmt(ratio, "x"),
        None if ratio is None else ratio <= 0.6,
        "open loop" + (f" at {rate:.2f}/s" if rate else ""),
        _short(ratio, 0.6, "x", higher=False),
    )


def _concurrency_1_target(report, w, add) -> None:
    # 3. concurrency 1: served <= direct + 5 ms (the same requests, paired).
    c1 = closed_point(w, "continuous", 1)
    direct = (w.get("direct") or {}).get("latency_ms") or {}
    diffs = _paired(report, w, c1, direct)
    extra = None if not diffs else _median(diffs)
    add(
        "latency at concurrency 1, served (continuous) - direct Captioner.caption",
        "<= +5.0 ms",
        None if extra is None else f"{extra:+.1f} ms",
        None if extra is None else extra <= 5.0,
        f"median over {len(diffs)} identical requests (JSON answers)",
        "" if extra is None or extra <= 5 else f"{extra - 5:.1f} ms over",
    )


def _sustained_target(w, add) -> None:
    # 4. sustained throughput >= 0.8 x offline batch 16.
    offline = (w.get("offline") or {}).get("captions_per_s")
    s = server(w, "continuous")
    peak = None if s is None else s.get("saturation_captions_per_s")
    ratio = _ratio(peak, offline)
    add(
        "sustained throughput, continuous peak vs offline batch 16",
        ">= 0.80x",
        _fmt(ratio, "x"),
        None if ratio is None else ratio >= 0.8,
        f"closed-loop peak {_n(peak, '.2f')}/s vs `clipcap bench` onnxruntime batch 16 "
        f"{_n(offline, '.2f')}/s "
        f"({(w.get('offline') or {}).get('new_tokens', '?')} tokens each)",
        _short(ratio, 0.8, "x", higher=True),
    )


def _overload_targets(report, w, add) -> None:
    s = server(w, "continuous")
    timeout = report["config"]["request_timeout"]
    # 5. below saturation nothing fails; at 2x the excess gets a quick 503, the rest finishes in
    # time, and RSS stays flat.
    below = [p for p in open_points(w, "continuous") if p["fraction_of_saturation"] < 1 - 1e-9]
    below += [p for p in (s or {}).get("points", []) if p["kind"] == "closed"]
    bad = sum(p["failed"] + p["timed_out"] + p["rejected"] for p in below)
    add(
        "no failed request below saturation (continuous)",
        "0",
        None if not below else str(bad),
        None if not below else bad == 0,
        f"{len(below)} points: closed loop and open loop under 1.0x; failed + 504 + 503",
    )
    over = [p for p in open_points(w, "continuous") if p["fraction_of_saturation"] >= 2 - 1e-9]
    top = over[-1] if over else None
    if top is None:
        add("503 within 50 ms at 2x saturation (continuous)", "<= 50 ms", None, None, "no 2x point")
    elif not top["rejected"]:
        add(
            "503 within 50 ms at 2x saturation (continuous)",
            "<= 50 ms",
            "no 503",
            None,
            f"{top['ok']} of {top['sent']} answered: the queue limit ({report['config']['max_waiting']}) "
            "was never reached in this point's duration",
        )
    else:
        worst = top["reject_ms_p99"]
        add(
            "503 within 50 ms at 2x saturation (continuous)",
            "<= 50 ms",
            f"p99 {worst:.1f} ms (max {top['reject_ms_max']:.1f})",
            worst <= 50,
            f"{top['rejected']} of {top['sent']} rejected",
            "" if worst <= 50 else f"{worst - 50:.1f} ms over",
        )
    if top is not None:
        late = top["timed_out"] + top["failed"]
        slowest = top.get("latency_ms_max")
        in_time = late == 0 and (slowest is None or slowest <= timeout * 1000)
        add(
            "accepted requests finish within their deadline at 2x saturation (continuous)",
            f"0 late (deadline {timeout:.0f} s)",
            f"{late} late, slowest {_n(None if slowest is None else slowest / 1000, '.1f')} s",
            in_time,
            "504 + failed among the accepted",
        )
        earlier = [p.get("rss_max") for p in (s or {}).get("points", []) if p is not top and p.get("rss_max")]
        growth = _ratio(top.get("rss_max"), max(earlier) if earlier else None)
        add(
            "server RSS flat at 2x saturation (continuous)",
            f"<= {RSS_GROWTH_LIMIT:.2f}x the earlier peak",
            _fmt(growth, "x"),
            None if growth is None else growth <= RSS_GROWTH_LIMIT,
            f"peak {_mib(top.get('rss_max'))} vs {_mib(max(earlier) if earlier else None)} before",
        )


def _paired(report, workload, point, direct: dict) -> list[float]:
    """Served minus direct latency of the same requests (by index; the JSON, not streamed, ones)."""
    if point is None or not direct:
        return []
    served = point.get("records_latency_ms") or {}
    return [served[i] - direct[i] for i in served if i in direct]


def _median(values: list[float]) -> float:
    from clipcap.benchmarks.timing import median

    return median(values)


def _fmt(value: float | None, unit: str) -> str | None:
    return None if value is None else f"{value:.2f}{unit}"


def _short(value: float | None, goal: float, unit: str, higher: bool) -> str:
    if value is None:
        return ""
    if (value >= goal) if higher else (value <= goal):
        return ""
    gap = goal - value if higher else value - goal
    return f"missed by {gap:.2f}{unit} ({value / goal * 100:.0f}% of the goal)"


def _verdict(t: dict[str, Any]) -> str:
    if t["met"] is None:
        return "not measured in this run" if t["measured"] is None else f"not decided: {t['how']}"
    return "met" if t["met"] else "missed" + (f": {t['note']}" if t["note"] else "")


# --------------------------------------------------------------------------------------------------
# Markdown


def _n(value: float | None, fmt: str = ".1f") -> str:
    return "–" if value is None else format(value, fmt)


def _mib(value: float | None) -> str:
    return "–" if value is None else f"{value / 2**20:.0f} MiB"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def point_label(p: dict[str, Any]) -> str:
    if p["kind"] == "closed":
        return f"closed c={p['concurrency']}"
    if p["kind"] == "mix":
        return f"closed c={p['concurrency']}, {p['beam_share']:.0%} beam ({p['beam_size']} beams)"
    basis = " (static's)" if p.get("rate_basis") == "static" else ""
    return f"open {p['fraction_of_saturation']:.2f}x{basis}"
