"""`clipcap bench serve`: the captioning server under load, each scheduler in a fresh process.

For each workload (a bundle and how its requests are drawn) and each scheduler (``--batching``
continuous, static, none), the benchmark starts ``python -m clipcap.serve`` on a free loopback
port with the same threads and limits, waits for ``/readyz``, warms it, and drives it from this
process with the async httpx client of ``serve_load``:

1. closed loop at each concurrency (1, 4, 16, 64): the server's peak captions/s is its saturation;
2. open loop, Poisson arrivals at fractions of that saturation (light to twice it); the continuous
   server also gets static's 70 % rate, the issue's comparison point.

Each point reads the server's ``/metrics`` before and after (rows per decode step) and samples its
RSS. Then, with no server running, the same requests go to a ``Captioner`` directly (the
concurrency-1 baseline) and the offline batch-16 throughput of ``clipcap bench``'s onnxruntime
backend is measured on the same bundle. Requests: the benchmark's pictures (JPEG), greedy, each
``max_new_tokens`` drawn from a seeded range; on the random-weight models ``min_new_tokens`` equals
it, so EOS never ends a caption early; the demo's trained bundles stop at their real EOS.

Every point is bounded (``duration`` seconds of sending, ``max_requests``), traffic goes to
127.0.0.1 only, and every server is stopped (SIGTERM, then SIGKILL) whatever happens.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clipcap.benchmarks.serve_baselines import (
    _load_average,
    config_section,
    describe_machine,
    direct_latency,
    offline_throughput,
)
from clipcap.benchmarks.serve_load import (
    Record,
    closed_loop,
    metric_total,
    open_loop,
    parse_metrics,
    poisson_schedule,
    summarise,
)
from clipcap.benchmarks.serve_options import (
    BEAM_SHARE,
    BEAM_SIZE,
    RUN_ORDER,
    ServeBenchOptions,
    Workload,
    bench_images,
    request_stream,
)
from clipcap.benchmarks.serve_server import Server

from clipcap.errors import ConfigError, require

Say = Callable[[str], None]


def run_serve_bench(options: ServeBenchOptions, say: Say | None = None) -> dict[str, Any]:
    require("httpx", "serve")
    if options.plot is not None:
        require("matplotlib", "bench")
    say = say or Progress()
    started = time.perf_counter()
    load = _load_average()
    if load is not None and load >= 0.5:
        say(f"warning: the machine is busy (load average {load:.1f}): the numbers will be noisy")
    workloads = prepare_workloads(options, say)
    say(
        f"{len(workloads)} workload(s) x {len(options.schedulers)} scheduler(s); expected at most "
        f"~{options.estimate_s(workloads) / 60:.0f} min"
    )
    images = bench_images(8 if not options.quick else 4, options.seed)
    report: dict[str, Any] = {
        "machine": describe_machine(options),
        "config": config_section(options, workloads),
        "workloads": [],
    }
    report["machine"]["load_average_at_start"] = load
    for workload in workloads:
        say(f"[{workload.name}] {workload.description}")
        entry: dict[str, Any] = {
            "name": workload.name,
            "bundle": str(workload.bundle),
            "precision": workload.precision,
            "trained": workload.trained,
            "description": workload.description,
            "servers": [],
        }
        saturation: dict[str, float] = {}
        for scheduler in [s for s in RUN_ORDER if s in options.schedulers]:
            server = bench_server(options, workload, scheduler, images, saturation, say)
            entry["servers"].append(server)
        entry["direct"] = direct_latency(options, workload, images, say)
        if not workload.trained:
            entry["offline"] = offline_throughput(options, workload, images, say)
        report["workloads"].append(entry)
    report["seconds"] = round(time.perf_counter() - started, 1)
    from clipcap.benchmarks.serve_report import write_reports

    for path in write_reports(report, options):
        say(f"wrote {path}")
    return report


def prepare_workloads(options: ServeBenchOptions, say: Say) -> list[Workload]:
    from clipcap.benchmarks.models import Assets, model_spec

    spec = model_spec(options.variant, options.quick)
    assets = Assets(spec, options.cache_dir, options.seed, say)
    g, m = spec.config.gpt2, spec.config.mapper
    workloads = []
    for precision in options.precisions:
        if not assets.has_bundle(precision):
            say(
                f"exporting the {spec.size} {options.variant} bundle at {precision} "
                f"(once, into {options.cache_dir})"
            )
        bundle = assets.bundle(precision)
        workloads.append(
            Workload(
                name=f"{options.variant}-{precision}",
                bundle=bundle,
                precision=precision,
                trained=False,
                max_tokens_room=g.n_positions - m.prefix_length,
                description=(
                    f"GPT-2 {g.n_layer} x {g.n_embd}, CLIP {spec.clip}, {options.variant} mapper, prefix "
                    f"{m.prefix_length}, random weights, {precision}; exactly max_new_tokens tokens"
                ),
            )
        )
    if options.trained_check:
        from clipcap.benchmarks.trained import read_demo

        try:
            demo = read_demo(options.demo_dir)
        except ConfigError as e:
            if options.trained is not None:  # named on the command line: the user wants to know
                raise
            say(f"the cache's demo is not usable, its bundles are skipped: {e}")
            demo = {"variants": []}
        for row in (r for r in demo["variants"] if r["variant"] == options.variant):
            bundle = Path(row["bundle"])
            manifest = json.loads((bundle / "clipcap.json").read_text())
            model = manifest["model"]
            workloads.append(
                Workload(
                    name=f"demo-{row['variant']}",
                    bundle=bundle,
                    precision=manifest.get("precision", "fp32"),
                    trained=True,
                    max_tokens_room=model["n_positions"] - model["prefix_length"],
                    description=(
                        f"`clipcap demo`'s trained {row['variant']} model (GPT-2 {model['n_layer']} x "
                        f"{model['embed_dim']}), fp32; captions end at its EOS"
                    ),
                )
            )
    return workloads


def bench_server(
    options: ServeBenchOptions,
    workload: Workload,
    scheduler: str,
    images: list[bytes],
    saturation: dict[str, float],
    say: Say,
) -> dict[str, Any]:
    """Every point of one scheduler on a fresh server."""
    with (
        tempfile.TemporaryDirectory(prefix="clipcap-bench-serve-") as tmp,
        Server(options, workload, scheduler, Path(tmp)) as server,
    ):
        ready_s = server.wait_ready()
        say(f"  [{workload.name} / {scheduler}] ready in {ready_s:.1f} s on port {server.port}")
        out: dict[str, Any] = {"scheduler": scheduler, "ready_s": ready_s, "command": server.command}
        points: list[dict[str, Any]] = []
        try:
            asyncio.run(_warm_up(server, options, workload, images))
            out["rss_after_warmup"] = server.rss_bytes()
            concurrencies, fractions = options.points(workload.trained)
            for c in concurrencies:
                points.append(_point(server, options, workload, images, "closed", c, None, say, scheduler))
            closed = [p["captions_per_s"] for p in points]
            sat = max(closed) if closed else 0.0
            saturation[scheduler] = sat
            out["saturation_captions_per_s"] = sat
            rates = [(f, f * sat, "own") for f in fractions]
            if scheduler == "static" and "continuous" in options.schedulers and 0.7 not in fractions:
                rates.append((0.7, 0.7 * sat, "own"))  # the rate continuous is compared at
            if scheduler == "continuous" and "static" in saturation:
                rates.append(
                    (0.7 * saturation["static"] / sat if sat else 0.7, 0.7 * saturation["static"], "static")
                )
            if sat > 0:
                for fraction, rate, basis in sorted(rates, key=lambda r: r[1]):
                    seconds = overload_duration(options, fraction, sat)
                    point = _point(
                        server, options, workload, images, "open", None, rate, say, scheduler, seconds
                    )
                    point.update({"fraction_of_saturation": fraction, "rate_basis": basis})
                    points.append(point)
            if options.beam_mix and not workload.trained:
                # What beam search costs the others: the same closed loop with a quarter of beams.
                c = 16 if 16 in concurrencies else max(concurrencies)
                point = _point(server, options, workload, images, "mix", c, None, say, scheduler)
                point.update({"beam_share": BEAM_SHARE, "beam_size": BEAM_SIZE})
                points.append(point)
        except Exception as e:  # a broken server: keep what was measured, say why
            out["error"] = f"{type(e).__name__}: {e}"
            say(f"  [{workload.name} / {scheduler}] error: {out['error']}\n{server.log_tail()}")
        out["points"] = points
        out["rss_end"] = server.rss_bytes()
        out["log_tail"] = server.log_tail(8)
    out["exit_code"] = server.exit_code
    return out


async def _warm_up(
    server: Server, options: ServeBenchOptions, workload: Workload, images: list[bytes]
) -> None:
    import httpx

    requests = request_stream(options, workload, images, workload.name)
    async with httpx.AsyncClient(base_url=server.url, timeout=options.request_timeout + 30) as client:
        await closed_loop(client, requests, 2, duration=30.0, max_requests=4)


def _point(
    server: Server,
    options: ServeBenchOptions,
    workload: Workload,
    images: list[bytes],
    kind: str,
    concurrency: int | None,
    rate: float | None,
    say: Say,
    scheduler: str,
    seconds: float | None = None,
) -> dict[str, Any]:
    seconds = options.duration if seconds is None else seconds
    records, metrics, rss = asyncio.run(
        _drive(server, options, workload, images, kind, concurrency, rate, seconds)
    )
    summary = summarise(records).to_dict()
    before, after = metrics
    steps = _delta(before, after, "clipcap_batch_step_rows_count")
    rows = _delta(before, after, "clipcap_batch_step_rows_sum")
    point = {
        "kind": kind,
        "concurrency": concurrency,
        "offered_per_s": rate,
        **summary,
        "decode_steps": steps,
        "rows_per_step_mean": rows / steps if steps else None,
        "generated_tokens": _delta(before, after, "clipcap_request_generated_tokens_total"),
        "rss_start": rss[0] if rss else None,
        "rss_max": max(rss) if rss else None,
        "rss_end": rss[-1] if rss else None,
    }
    if kind == "closed" and concurrency == 1:  # paired with the direct calls on the same requests
        point["records_latency_ms"] = {r.index: r.latency_ms for r in records if r.ok and not r.stream}
    shape = f"{rate:6.2f}/s" if kind == "open" else f"c={concurrency:<3}"
    say(
        f"    {scheduler:<10} {kind:<6} {shape}: {point['captions_per_s']:6.2f} captions/s, p50 "
        f"{_ms(point['latency_ms_p50'])}, p99 {_ms(point['latency_ms_p99'])}, "
        f"ttft p50 {_ms(point['ttft_ms_p50'])}, "
        f"rows/step {_num(point['rows_per_step_mean'])}, ok {point['ok']}, 503 {point['rejected']}, "
        f"504 {point['timed_out']}, failed {point['failed']}, RSS {_mib(point['rss_max'])}"
    )
    for message, count in point["errors"].items():
        say(f"      {count} x {message}")
    return point


def overload_duration(options: ServeBenchOptions, fraction: float, saturation: float) -> float:
    """Seconds of sending for an open-loop point: ``duration``, longer above saturation (up to 3x)
    so that the excess (fraction - 1) x saturation fills the waiting queue 1.5 times over and the
    503 path is exercised, not just a queue that the point ends before filling."""
    if fraction <= 1 or saturation <= 0:
        return options.duration
    fill = 1.5 * options.max_waiting / ((fraction - 1) * saturation)
    return min(max(options.duration, fill), 3 * options.duration)


def _delta(before: dict | None, after: dict | None, name: str) -> float:
    if before is None or after is None:
        return 0.0
    return metric_total(after, name) - metric_total(before, name)


async def _drive(server, options, workload, images, kind, concurrency, rate, seconds):
    import httpx

    beam_share = BEAM_SHARE if kind == "mix" else 0.0
    requests = request_stream(options, workload, images, workload.name, beam_share)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    rss: list[int] = []

    async def sample_rss() -> None:
        while True:
            value = server.rss_bytes()
            if value is not None:
                rss.append(value)
            await asyncio.sleep(0.25)

    async with httpx.AsyncClient(
        base_url=server.url, timeout=options.request_timeout + 30, limits=limits
    ) as client:
        before = await _metrics(client)
        sampler = asyncio.create_task(sample_rss())
        try:
            if kind in ("closed", "mix"):
                records: list[Record] = await closed_loop(
                    client, requests, concurrency, seconds, options.max_requests
                )
            else:
                schedule = poisson_schedule(
                    rate, seconds, options.seed + int(rate * 1000), options.max_requests
                )
                records = await open_loop(client, requests, schedule, timeout=options.request_timeout + 30)
        finally:
            sampler.cancel()
        value = server.rss_bytes()
        if value is not None:
            rss.append(value)
        after = await _metrics(client)
    return records, (before, after), rss


async def _metrics(client) -> dict | None:
    import httpx

    try:
        response = await client.get("/metrics")
    except httpx.HTTPError:
        return None
    return parse_metrics(response.text) if response.status_code == 200 else None


# --------------------------------------------------------------------------------------------------
# Baselines without a server


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f} MiB"


class Progress:
    """Progress lines on stderr, with the time since the start."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"{time.perf_counter() - self.start:7.1f}s  {message}", file=sys.stderr, flush=True)
