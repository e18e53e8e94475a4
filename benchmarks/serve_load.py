"""The load generator of `clipcap bench serve`: an async httpx client against a captioning server.

Torch-free and model-free: it only speaks the HTTP API (``POST /v1/captions``, its Server-Sent
Events, ``/metrics``), so its statistics can be tested against any server.

- ``closed_loop``: ``concurrency`` clients, each sending its next request when the last answered;
- ``open_loop``: requests sent at Poisson arrival times (``poisson_schedule``) at an offered rate,
  whatever the answers, as independent users do;
- ``send``: one request, streamed (time to first token from the first ``token`` event) or not;
- ``summarise``: captions/s, latency and time-to-first-token percentiles, queue time, rejected
  (503), timed-out (504) and failed counts of one point;
- ``parse_metrics``: the server's Prometheus text into ``{(name, labels): value}``.

Times are ``time.perf_counter()`` seconds; reported durations are milliseconds.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from clipcap.benchmarks.timing import percentile


@dataclass(frozen=True)
class Request:
    """One caption request: an image and its decoding options (form fields)."""

    index: int
    image: bytes
    filename: str
    options: dict[str, Any]
    stream: bool = False
    content_type: str = "image/jpeg"


@dataclass
class Record:
    """What one request met."""

    index: int
    stream: bool
    scheduled: float  # when it was meant to leave (open loop) or left (closed loop)
    start: float = 0.0
    end: float = 0.0
    status: int | None = None  # HTTP status; None: no answer (connection failed)
    first_token: float | None = None  # streamed requests: the first token event's arrival
    queue_ms: float | None = None  # the server's timing.queue_ms
    server_ms: float | None = None  # the server's timing.total_ms
    tokens: int = 0
    caption: str | None = None
    error: str | None = None
    token_events: int = 0
    beam: bool = False  # a beam-search request (the benchmark's beam mix)

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None

    @property
    def latency_ms(self) -> float:
        return (self.end - self.start) * 1000

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first_token is None else (self.first_token - self.start) * 1000

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["latency_ms"] = self.latency_ms
        d["ttft_ms"] = self.ttft_ms
        return d


def form_fields(options: dict[str, Any], stream: bool) -> dict[str, str | list[str]]:
    """Decoding options as multipart form fields (a list repeats its field, as ``stop`` does)."""
    fields: dict[str, str | list[str]] = {}
    for name, value in options.items():
        if isinstance(value, (list, tuple)):
            fields[name] = [_text(v) for v in value]
        else:
            fields[name] = _text(value)
    fields["stream"] = "true" if stream else "false"
    return fields


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


async def send(client, request: Request, scheduled: float | None = None) -> Record:
    """POST one request; never raises for what the server or the network did (the record says)."""
    import httpx

    now = time.perf_counter()
    record = Record(request.index, request.stream, scheduled if scheduled is not None else now)
    record.beam = request.options.get("strategy") == "beam"
    files = [("image", (request.filename, request.image, request.content_type))]
    data = form_fields(request.options, request.stream)
    record.start = time.perf_counter()
    try:
        if request.stream:
            async with client.stream("POST", "/v1/captions", files=files, data=data) as response:
                record.status = response.status_code
                if response.status_code != 200:
                    await response.aread()
                    record.error = _error_of(response.content)
                else:
                    await _read_events(response, record)
        else:
            response = await client.post("/v1/captions", files=files, data=data)
            record.status = response.status_code
            if response.status_code != 200:
                record.error = _error_of(response.content)
            else:
                _take_answer(response.json(), record)
    except httpx.HTTPError as e:
        record.error = f"{type(e).__name__}: {e}"
    except (ValueError, KeyError, TypeError) as e:  # an answer we cannot read
        record.error = f"unreadable answer: {type(e).__name__}: {e}"
    record.end = time.perf_counter()
    return record


def _error_of(content: bytes) -> str:
    try:
        return str(json.loads(content)["error"])
    except (ValueError, KeyError, TypeError):
        return content[:200].decode(errors="replace") or "no message"


def _take_answer(answer: dict[str, Any], record: Record) -> None:
    entry = answer["results"][0]
    timing = answer.get("timing") or {}
    record.queue_ms = timing.get("queue_ms")
    record.server_ms = timing.get("total_ms")
    if "error" in entry:
        record.error = str(entry["error"])
        return
    record.caption = entry["caption"]
    record.tokens = len(entry.get("tokens") or [])


async def _read_events(response, record: Record) -> None:
    """Server-Sent Events until ``done`` (the whole answer) or ``error``."""
    async for event, data in sse_events(response.aiter_lines()):
        if event == "token":
            if record.first_token is None:
                record.first_token = time.perf_counter()
            record.token_events += 1
        elif event == "result":
            if record.first_token is None:  # beam search sends no token events
                record.first_token = time.perf_counter()
        elif event == "done":
            _take_answer(data, record)
            return
        elif event == "error":
            record.status = int(data.get("status") or 500)
            record.error = str(data.get("error"))
            return
    record.error = "the stream ended without a done event"


async def sse_events(lines) -> Any:
    """(event, JSON data) pairs from an async iterator of text/event-stream lines."""
    event, data = "message", []
    async for line in lines:
        line = line.rstrip("\r")
        if not line:
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if key == "event":
            event = value
        elif key == "data":
            data.append(value)
    if data:
        yield event, json.loads("\n".join(data))


# --------------------------------------------------------------------------------------------------
# Load shapes


REJECT_BACKOFF_S = 0.1  # a closed-loop client's pause after a 503 (the server says Retry-After: 1)


async def closed_loop(
    client, requests: Iterator[Request], concurrency: int, duration: float, max_requests: int
) -> list[Record]:
    """``concurrency`` workers send requests back to back until ``duration`` seconds have passed
    or ``max_requests`` were sent; requests in flight then finish."""
    records: list[Record] = []
    sent = 0
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal sent
        while sent < max_requests and time.perf_counter() < deadline:
            sent += 1
            record = await send(client, next(requests))
            records.append(record)
            if record.status == 503:  # rejected: back off as Retry-After asks, rather than hammer
                await asyncio.sleep(REJECT_BACKOFF_S)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return records


def poisson_schedule(rate: float, duration: float, seed: int, max_count: int | None = None) -> list[float]:
    """Arrival offsets (s, from 0) of a Poisson process at ``rate`` per second over ``duration``:
    exponential gaps of mean 1 / rate, drawn from ``seed``."""
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    rng = random.Random(seed)
    times, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration or (max_count is not None and len(times) >= max_count):
            return times
        times.append(t)


async def open_loop(
    client, requests: Iterator[Request], schedule: Sequence[float], timeout: float | None = None
) -> list[Record]:
    """Send a request at each offset of ``schedule`` (seconds from now), answered or not; then wait
    for every answer (at most ``timeout`` seconds after the last arrival)."""
    start = time.perf_counter()
    tasks = []
    for offset in schedule:
        delay = start + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(client, next(requests), scheduled=start + offset)))
    done = (await asyncio.wait(tasks, timeout=timeout))[0] if tasks else set()
    records = []
    for offset, task in zip(schedule, tasks, strict=True):
        if task in done:
            records.append(task.result())
        else:
            task.cancel()
            records.append(Record(-1, False, start + offset, error="no answer within the timeout"))
    return records


# --------------------------------------------------------------------------------------------------
# Statistics


def _pcts(values: Sequence[float], prefix: str) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for q in (50, 90, 99):
        out[f"{prefix}_p{q}"] = percentile(values, q) if values else None
    return out


@dataclass
class PointSummary:
    """One load point: what was offered and what came back."""

    sent: int
    ok: int
    rejected: int  # 503: queue full or draining
    timed_out: int  # 504: past the request deadline
    failed: int  # everything else that is not a caption (other statuses, item errors, no answer)
    seconds: float  # first request sent to last answer
    captions_per_s: float
    tokens_per_s: float
    stats: dict[str, float | None] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # the most frequent messages of failures

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        stats = d.pop("stats")
        d.update(stats)
        return d


def summarise(records: Sequence[Record]) -> PointSummary:
    """The point's counts, rates and percentiles (latency over the captioned requests, time to first
    token over the streamed ones, the 503s' answer time over the rejected ones)."""
    if not records:
        return PointSummary(0, 0, 0, 0, 0, 0.0, 0.0, 0.0)
    ok = [r for r in records if r.ok]
    rejected = [r for r in records if r.status == 503]
    timed_out = [r for r in records if r.status == 504]
    failed = [r for r in records if not r.ok and r.status not in (503, 504)]
    first = min(r.start or r.scheduled for r in records)
    last = max(r.end for r in records)
    seconds = max(last - first, 1e-9)
    stats: dict[str, float | None] = {}
    stats.update(_pcts([r.latency_ms for r in ok], "latency_ms"))
    stats["latency_ms_mean"] = sum(r.latency_ms for r in ok) / len(ok) if ok else None
    stats["latency_ms_max"] = max((r.latency_ms for r in ok), default=None)
    stats.update(_pcts([t for r in ok if (t := r.ttft_ms) is not None], "ttft_ms"))
    stats.update(_pcts([r.queue_ms for r in ok if r.queue_ms is not None], "queue_ms"))
    stats.update(_pcts([r.latency_ms for r in rejected], "reject_ms"))
    stats["reject_ms_max"] = max((r.latency_ms for r in rejected), default=None)
    plain = [r.latency_ms for r in ok if not r.stream]
    streamed = [r.latency_ms for r in ok if r.stream]
    stats["latency_ms_p50_plain"] = percentile(plain, 50) if plain else None
    stats["latency_ms_p50_streamed"] = percentile(streamed, 50) if streamed else None
    if any(r.beam for r in records):  # a beam mix: what the beams cost the greedy requests
        greedy = [r.latency_ms for r in ok if not r.beam]
        beams = [r.latency_ms for r in ok if r.beam]
        stats.update(_pcts(greedy, "greedy_latency_ms"))
        stats.update(_pcts(beams, "beam_latency_ms"))
    # How late the open loop's client sent its requests (its own lag, not the server's).
    lags = [(r.start - r.scheduled) * 1000 for r in records if r.start]
    stats["send_lag_ms_p50"] = percentile(lags, 50) if lags else None
    stats["send_lag_ms_p99"] = percentile(lags, 99) if lags else None
    errors: dict[str, int] = {}
    for r in [*failed, *timed_out]:
        key = f"{r.status}: {(r.error or '')[:120]}"
        errors[key] = errors.get(key, 0) + 1
    return PointSummary(
        sent=len(records),
        ok=len(ok),
        rejected=len(rejected),
        timed_out=len(timed_out),
        failed=len(failed),
        seconds=seconds,
        captions_per_s=len(ok) / seconds,
        tokens_per_s=sum(r.tokens for r in ok) / seconds,
        stats=stats,
        errors=dict(sorted(errors.items(), key=lambda kv: -kv[1])[:5]),
    )


# --------------------------------------------------------------------------------------------------
# Metrics


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text exposition -> {(sample name, sorted labels): value}."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "{" in line:
            name, rest = line.split("{", 1)
            labels_text, _, value_text = rest.rpartition("}")
            labels = tuple(sorted(_labels(labels_text)))
        else:
            name, _, value_text = line.partition(" ")
            labels = ()
        try:
            value = float(value_text.split()[0])
        except (ValueError, IndexError):
            continue
        out[(name.strip(), labels)] = value
    return out


def _labels(text: str) -> list[tuple[str, str]]:
    labels, i = [], 0
    while i < len(text):
        eq = text.find("=", i)
        if eq < 0:
            break
        key = text[i:eq].strip().lstrip(",").strip()
        j = eq + 2  # past ="
        value = []
        while j < len(text) and text[j] != '"':
            if text[j] == "\\" and j + 1 < len(text):
                j += 1
                value.append({"n": "\n"}.get(text[j], text[j]))
            else:
                value.append(text[j])
            j += 1
        labels.append((key, "".join(value)))
        i = j + 1
    return labels


def metric_total(metrics: dict, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in metrics.items() if n == name and want <= set(ls))


def metrics_delta(before: dict, after: dict, name: str, **labels: str) -> float:
    return metric_total(after, name, **labels) - metric_total(before, name, **labels)
