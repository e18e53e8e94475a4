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
import dataclasses
import io
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipcap.benchmarks.options import DEFAULT_CACHE
from clipcap.benchmarks.serve_load import (
    Record,
    Request,
    closed_loop,
    metric_total,
    open_loop,
    parse_metrics,
    poisson_schedule,
    summarise,
)

from clipcap.errors import ConfigError, require
from clipcap.machine import cpu_name, memory_bytes, package_version

Say = Callable[[str], None]

SCHEDULERS = ("continuous", "static", "none")
PRECISIONS = ("fp32", "int8", "int4")
# Order of the runs: static first (its saturation sets the comparison rate), then continuous.
RUN_ORDER = ("static", "continuous", "none")


@dataclass(frozen=True)
class ServeBenchOptions:
    """A `clipcap bench serve` run; ``None`` fields take their default for the mode.

    - ``quick``: the tiny model of `clipcap bench --quick`, fp32, concurrency 1 and 4, open loop at
      0.5x and 2x saturation, 1.5 s points: checks that it all runs (CI); its numbers mean nothing.
    - ``load_fractions``: the open loop's offered rates as fractions of the scheduler's closed-loop peak.
    - ``tokens``: each request's ``max_new_tokens`` is drawn from this inclusive range.
    - ``stream_share``: the share of requests sent with ``stream=true`` (time to first token); the
      others are plain JSON requests (the latency the direct call is compared with).
    - ``trained``: a `clipcap demo` folder whose fp32 bundles are served too (real EOS); by default
      the cache's demo when it exists (`clipcap bench` makes one), never with ``quick``.
    """

    quick: bool = False
    precisions: tuple[str, ...] | None = None  # default fp32,int8; quick fp32
    variant: str = "mlp"
    schedulers: tuple[str, ...] = SCHEDULERS
    concurrency: tuple[int, ...] | None = None  # default 1,4,16,64; quick 1,4
    load_fractions: tuple[float, ...] | None = None  # default 0.25,0.5,0.7,1,2; quick 0.5,2
    duration: float | None = None  # seconds of sending per point; default 6, quick 1.5
    max_requests: int | None = None  # per point; default 400, quick 60
    tokens: tuple[int, int] | None = None  # default (5, 40); quick (4, 12)
    threads: int | None = None  # the server's ONNX Runtime threads (default: all cores)
    max_batch_rows: int = 16
    max_waiting: int = 64
    request_timeout: float = 60.0
    stream_share: float = 0.5
    direct_requests: int | None = None  # default 20, quick 8
    trained: Path | None = None
    trained_check: bool | None = None  # default: not quick, and a demo folder exists
    cache_dir: Path = DEFAULT_CACHE
    out: Path | None = None
    markdown: Path | None = None
    plot: Path | None = None
    seed: int = 0
    startup_timeout: float = 300.0
    beam_mix: bool = True  # one more closed-loop point per scheduler with a quarter of beam requests

    def __post_init__(self) -> None:
        q = self.quick
        defaults = {
            "precisions": ("fp32",) if q else ("fp32", "int8"),
            "concurrency": (1, 4) if q else (1, 4, 16, 64),
            "load_fractions": (0.5, 2.0) if q else (0.25, 0.5, 0.7, 1.0, 2.0),
            "duration": 1.5 if q else 6.0,
            "max_requests": 60 if q else 400,
            "tokens": (4, 12) if q else (5, 40),
            "threads": os.cpu_count() or 1,
            "direct_requests": 8 if q else 20,
        }
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        for name in ("precisions", "schedulers", "concurrency", "load_fractions"):
            object.__setattr__(self, name, tuple(dict.fromkeys(getattr(self, name))))
        object.__setattr__(self, "tokens", tuple(self.tokens))
        for name in ("cache_dir", "out", "markdown", "plot", "trained"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value).expanduser())
        if self.trained_check is None:
            object.__setattr__(self, "trained_check", not q and (self.demo_dir / "report.json").is_file())
        self._validate()

    @property
    def demo_dir(self) -> Path:
        return self.trained if self.trained is not None else self.cache_dir / "demo"

    def _validate(self) -> None:
        problems = []
        unknown = [s for s in self.schedulers if s not in SCHEDULERS]
        if unknown or not self.schedulers:
            problems.append(f"schedulers: name some of {', '.join(SCHEDULERS)}, got {list(self.schedulers)}")
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown or not self.precisions:
            problems.append(f"precisions: name some of {', '.join(PRECISIONS)}, got {list(self.precisions)}")
        if self.variant not in ("mlp", "transformer"):
            problems.append(f"variant must be mlp or transformer, got {self.variant!r}")
        if not self.concurrency or any(not isinstance(c, int) or c < 1 for c in self.concurrency):
            problems.append(f"concurrency: integers >= 1, got {list(self.concurrency)}")
        if any(not 0 < f <= 10 for f in self.load_fractions):
            problems.append(f"load fractions must be in (0, 10], got {list(self.load_fractions)}")
        low, high = self.tokens if len(self.tokens) == 2 else (0, -1)
        if not 1 <= low <= high:
            problems.append(f"tokens: a range LOW-HIGH with 1 <= LOW <= HIGH, got {self.tokens}")
        for name, least in (("duration", 0.1), ("request_timeout", 1.0), ("startup_timeout", 1.0)):
            if not getattr(self, name) >= least:
                problems.append(f"{name} must be >= {least}, got {getattr(self, name)}")
        for name, least in (("max_requests", 1), ("threads", 1), ("max_batch_rows", 1), ("max_waiting", 1)):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < least:
                problems.append(f"{name} must be an integer >= {least}, got {getattr(self, name)!r}")
        if not isinstance(self.direct_requests, int) or self.direct_requests < 0:
            problems.append(f"direct_requests must be an integer >= 0, got {self.direct_requests!r}")
        if not 0 <= self.stream_share <= 1:
            problems.append(f"stream_share must be in [0, 1], got {self.stream_share}")
        if self.trained is not None and not (self.trained / "report.json").is_file():
            problems.append(f"trained: {self.trained} holds no `clipcap demo` report.json")
        for path in (self.out, self.markdown, self.plot):
            if path is not None and not path.parent.is_dir():
                problems.append(f"{path}: no such directory {path.parent} to write into")
        if problems:
            raise ConfigError("invalid serve benchmark options: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in ("cache_dir", "out", "markdown", "plot", "trained"):
            d[name] = None if d[name] is None else str(d[name])
        for name in ("precisions", "schedulers", "concurrency", "load_fractions", "tokens"):
            d[name] = list(d[name])
        return d

    def points(self, trained: bool) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """(concurrencies, load fractions) of a workload: all of them for the random-weight models
        (the targets' workload); for the demo's trained bundles, concurrency 1 and 16 and the open
        loop at 0.7x and 2x (enough to see real EOS lengths under load, within the run's time)."""
        if not trained:
            return self.concurrency, self.load_fractions
        concurrency = tuple(c for c in self.concurrency if c in (1, 16)) or self.concurrency[:1]
        fractions = tuple(f for f in self.load_fractions if f in (0.7, 2.0)) or self.load_fractions[-1:]
        return concurrency, fractions

    def estimate_s(self, workloads: list[Workload]) -> float:
        """A rough upper estimate of the run's length: each point's sending time plus its drain, each
        server's start, and the baselines."""
        total = 0.0
        for w in workloads:
            concurrency, fractions = self.points(w.trained)
            points = len(concurrency) + len(fractions) + 1 + (self.beam_mix and not w.trained)
            per_server = (4 if self.quick else 12) + points * (self.duration + (1 if self.quick else 5))
            per_server += sum(2 * self.duration for f in fractions if f > 1)  # overload points run longer
            total += len(self.schedulers) * per_server + (3 if self.quick else 25)
        return total


@dataclass
class Workload:
    """A bundle served under a name, and how its requests are drawn."""

    name: str
    bundle: Path
    precision: str
    trained: bool  # real EOS (the demo's models) or exactly max_new_tokens (random weights)
    max_tokens_room: int  # n_positions - prefix_length: the most new tokens the model allows
    description: str = ""


# --------------------------------------------------------------------------------------------------
# The run


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


def bench_images(n: int, seed: int) -> list[bytes]:
    """The benchmark's pictures (`clipcap bench`'s, 640 x 480) as JPEG files, quality 90."""
    from clipcap.benchmarks.models import make_images

    out = []
    for image in make_images(n, seed):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


BEAM_SHARE, BEAM_SIZE = 0.25, 4  # the beam-mix point: a quarter of the requests, 4 beams each


def request_stream(
    options: ServeBenchOptions,
    workload: Workload,
    images: list[bytes],
    model: str | None,
    beam_share: float = 0.0,
) -> Iterator[Request]:
    """The workload's requests, the same sequence every time (seeded): image i % n, greedy,
    max_new_tokens drawn from ``options.tokens``, streamed with probability ``stream_share``;
    with ``beam_share``, that share of them beam search (``BEAM_SIZE`` beams; the lengths and the
    other draws stay the same, from their own generator)."""
    rng = random.Random(options.seed)
    beams = random.Random(options.seed + 1)
    low, high = options.tokens
    high = min(high, workload.max_tokens_room)
    low = min(low, high)
    index = 0
    while True:
        n = rng.randint(low, high)
        stream = rng.random() < options.stream_share
        request_options: dict[str, Any] = {"strategy": "greedy", "max_new_tokens": n}
        if beam_share and beams.random() < beam_share:
            request_options.update(strategy="beam", beam_size=BEAM_SIZE)
        if not workload.trained:
            request_options["min_new_tokens"] = n  # EOS and stop tokens cannot end it early
        if model is not None:
            request_options["model"] = model
        yield Request(
            index, images[index % len(images)], f"picture-{index % len(images)}.jpg", request_options, stream
        )
        index += 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m clipcap.serve`` in its own process on a loopback port; stopped on exit."""

    def __init__(self, options: ServeBenchOptions, workload: Workload, scheduler: str, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"server-{workload.name}-{scheduler}.log"
        self.command = [
            sys.executable,
            "-m",
            "clipcap.serve",
            f"{workload.name}={workload.bundle}",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--batching",
            scheduler,
            "--max-batch-rows",
            str(options.max_batch_rows),
            "--max-waiting",
            str(options.max_waiting),
            "--request-timeout",
            str(options.request_timeout),
            "--threads",
            str(options.threads),
        ]
        self.startup_timeout = options.startup_timeout
        self.process: subprocess.Popen | None = None
        self.exit_code: int | None = None

    def __enter__(self) -> Server:
        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT)
        self.started = time.perf_counter()
        return self

    def wait_ready(self) -> float:
        import httpx

        deadline = time.perf_counter() + self.startup_timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise ConfigError(
                    f"the server exited with status {self.process.returncode} before it was ready:\n"
                    f"  {' '.join(self.command)}\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return time.perf_counter() - self.started
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise ConfigError(f"the server was not ready after {self.startup_timeout:.0f} s:\n{self.log_tail()}")

    def rss_bytes(self) -> int | None:
        return process_rss(self.process.pid) if self.process else None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(f"  | {line}" for line in text[-lines:])

    def __exit__(self, *_) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.exit_code = self.process.returncode if self.process else None
        self.log.close()


def process_rss(pid: int) -> int | None:
    """Resident memory of a process (/proc on Linux, psutil elsewhere when installed)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except Exception:
        return None


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
