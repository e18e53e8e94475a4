"""`clipcap bench serve`: the load generator's statistics and the quick run end to end.

The load generator is tested against a small fake captioning server (Starlette on uvicorn, a
loopback port) whose answers are known, so its counts, percentiles and times can be checked; the
quick run drives the real `python -m clipcap.serve`, skipped until that package can serve.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import socket
import threading
import time

import pytest
from clipcap.benchmarks.serve_load import (
    Record,
    Request,
    closed_loop,
    form_fields,
    metric_total,
    open_loop,
    parse_metrics,
    poisson_schedule,
    send,
    sse_events,
    summarise,
)

# --------------------------------------------------------------------------------------------------
# Statistics without a server


def test_poisson_schedule_has_the_offered_rate_and_exponential_gaps():
    times = poisson_schedule(50.0, 200.0, seed=3)
    assert times == sorted(times) and times[0] > 0 and times[-1] < 200.0
    assert len(times) / 200.0 == pytest.approx(50.0, rel=0.03)  # 10,000 arrivals: sd ~1 %
    gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    mean = sum(gaps) / len(gaps)
    assert mean == pytest.approx(1 / 50.0, rel=0.03)
    # Exponential: the share of gaps above the mean is e^-1, and the sd equals the mean.
    above = sum(g > mean for g in gaps) / len(gaps)
    assert above == pytest.approx(math.exp(-1), abs=0.02)
    sd = math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps))
    assert sd == pytest.approx(mean, rel=0.05)
    assert poisson_schedule(50.0, 200.0, seed=3) == times  # seeded
    assert poisson_schedule(50.0, 200.0, seed=4) != times
    assert len(poisson_schedule(50.0, 200.0, seed=3, max_count=7)) == 7
    with pytest.raises(ValueError):
        poisson_schedule(0, 1.0, seed=0)


def _record(i, latency_ms, status=200, stream=False, ttft_ms=None, queue_ms=None, tokens=3, error=None):
    start = 100.0 + i
    r = Record(i, stream, start, start=start, end=start + latency_ms / 1000, status=status, error=error)
    r.first_token = None if ttft_ms is None else start + ttft_ms / 1000
    r.queue_ms, r.tokens = queue_ms, tokens
    return r


def test_summarise_counts_and_percentiles():
    import numpy as np

    latencies = [float(v) for v in range(1, 101)]  # 1..100 ms
    records = [
        _record(i, v, stream=i % 2 == 0, ttft_ms=v / 4 if i % 2 == 0 else None, queue_ms=v / 10)
        for i, v in enumerate(latencies)
    ]
    records += [_record(200 + i, 2.0, status=503, error="queue full") for i in range(5)]
    records += [_record(300, 7.0, status=504, error="deadline")]
    records += [_record(301, 9.0, status=500, error="step failed")]
    records += [_record(302, 9.0, status=200, error="cannot read the image")]  # an item error
    s = summarise(records).to_dict()
    assert (s["sent"], s["ok"], s["rejected"], s["timed_out"], s["failed"]) == (108, 100, 5, 1, 2)
    for q in (50, 90, 99):
        assert s[f"latency_ms_p{q}"] == pytest.approx(np.percentile(latencies, q))
    streamed = [v / 4 for i, v in enumerate(latencies) if i % 2 == 0]
    assert s["ttft_ms_p50"] == pytest.approx(np.percentile(streamed, 50))
    assert s["queue_ms_p99"] == pytest.approx(np.percentile([v / 10 for v in latencies], 99))
    assert s["reject_ms_p99"] == pytest.approx(2.0)
    assert s["latency_ms_p50_plain"] == pytest.approx(np.percentile(latencies[1::2], 50))
    # From the first start (100.0) to the last end (record 302 starts at 402.0, ends 9 ms later).
    assert s["seconds"] == pytest.approx(402.009 - 100.0)
    assert s["captions_per_s"] == pytest.approx(100 / s["seconds"])
    assert s["tokens_per_s"] == pytest.approx(300 / s["seconds"])
    assert s["errors"] == {"504: deadline": 1, "500: step failed": 1, "200: cannot read the image": 1}
    empty = summarise([]).to_dict()
    assert empty["sent"] == 0 and empty["captions_per_s"] == 0


def test_parse_metrics_reads_labels_histograms_and_sums():
    text = "\n".join(
        [
            "# HELP clipcap_request_count Requests by model and outcome.",
            "# TYPE clipcap_request_count counter",
            'clipcap_request_count_total{model="a",outcome="ok"} 7.0',
            'clipcap_request_count_total{model="b",outcome="ok"} 2.0',
            'clipcap_request_count_total{model="a",outcome="rejected"} 1.0',
            'clipcap_batch_step_rows_bucket{le="1.0",model="a"} 3.0',
            'clipcap_batch_step_rows_bucket{le="+Inf",model="a"} 10.0',
            'clipcap_batch_step_rows_sum{model="a"} 42.0',
            'clipcap_batch_step_rows_count{model="a"} 10.0',
            'odd_label{text="a \\"quoted\\", comma"} 1.5',
            "clipcap_queue_size 4",
            "garbage line",
        ]
    )
    m = parse_metrics(text)
    assert metric_total(m, "clipcap_request_count_total") == 10
    assert metric_total(m, "clipcap_request_count_total", outcome="ok") == 9
    assert metric_total(m, "clipcap_request_count_total", model="a", outcome="ok") == 7
    assert (
        metric_total(m, "clipcap_batch_step_rows_sum") / metric_total(m, "clipcap_batch_step_rows_count")
        == 4.2
    )
    assert m[("clipcap_queue_size", ())] == 4
    assert m[("odd_label", (("text", 'a "quoted", comma'),))] == 1.5


def test_sse_events_parse_comments_multiline_data_and_crlf():
    async def lines():
        for line in [
            ": a comment",
            "event: token",
            'data: {"index": 0, "text": "a"}',
            "",
            "event: done\r",
            'data: {"results":\r',
            "data: [1]}\r",
            "\r",
            'data: {"no": "event name"}',
        ]:
            yield line

    async def collect():
        return [e async for e in sse_events(lines())]

    assert asyncio.run(collect()) == [
        ("token", {"index": 0, "text": "a"}),
        ("done", {"results": [1]}),
        ("message", {"no": "event name"}),
    ]


def test_form_fields_repeat_lists_and_spell_booleans():
    fields = form_fields({"max_new_tokens": 5, "stop": [".", "!"], "flag": True}, stream=True)
    assert fields == {"max_new_tokens": "5", "stop": [".", "!"], "flag": "true", "stream": "true"}


# --------------------------------------------------------------------------------------------------
# The load generator against a fake server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeServer:
    """A captioning server stand-in: each request takes max_new_tokens x ``step`` seconds, streams a
    token event per token; more than ``capacity`` requests at once get 503 at once."""

    def __init__(self, step: float = 0.004, capacity: int = 1000) -> None:
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse, StreamingResponse
        from starlette.routing import Route

        self.step, self.capacity, self.active, self.seen = step, capacity, 0, []

        async def captions(request):
            form = await request.form()
            n = int(form["max_new_tokens"])
            stream = form.get("stream") == "true"
            upload = form["image"]
            self.seen.append((upload.filename, len(await upload.read()), n, stream))
            if self.active >= self.capacity:
                return JSONResponse(
                    {"error": "the queue is full"}, status_code=503, headers={"Retry-After": "1"}
                )
            if n == 0:
                return JSONResponse({"error": "max_new_tokens must be >= 1"}, status_code=422)
            self.active += 1
            words = [f"w{i}" for i in range(n)]
            answer = {
                "model": "fake",
                "results": [{"caption": " ".join(words), "tokens": list(range(n)), "score": -1.0}],
                "timing": {"queue_ms": 1.5, "total_ms": n * self.step * 1000},
            }
            if not stream:
                try:
                    await asyncio.sleep(n * self.step)
                finally:
                    self.active -= 1
                return JSONResponse(answer)

            async def events():
                try:
                    for i in range(n):
                        await asyncio.sleep(self.step)
                        data = {"index": 0, "token": i, "text": " ".join(words[: i + 1]), "delta": words[i]}
                        yield f"event: token\ndata: {json.dumps(data)}\n\n"
                    yield f"event: result\ndata: {json.dumps({'index': 0, **answer['results'][0]})}\n\n"
                    yield f"event: done\ndata: {json.dumps(answer)}\n\n"
                finally:
                    self.active -= 1

            return StreamingResponse(events(), media_type="text/event-stream")

        self.app = Starlette(routes=[Route("/v1/captions", captions, methods=["POST"])])

    def __enter__(self):
        import uvicorn

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the fake server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *_):
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _requests(n_tokens=(3, 6), stream_every=2):
    i = 0
    while True:
        n = n_tokens[i % len(n_tokens)]
        yield Request(
            i, b"\xff\xd8 fake jpeg %d" % i, f"p{i}.jpg", {"max_new_tokens": n}, stream=i % stream_every == 0
        )
        i += 1


def _run(coro_fn, url):
    import httpx

    async def main():
        async with httpx.AsyncClient(
            base_url=url, timeout=30, limits=httpx.Limits(max_connections=None)
        ) as c:
            return await coro_fn(c)

    return asyncio.run(main())


def test_send_reads_streamed_and_plain_answers_and_errors():
    pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    with FakeServer(step=0.01) as fake:
        streamed = Request(0, b"abc", "a.jpg", {"max_new_tokens": 5}, stream=True)
        plain = Request(1, b"abcd", "b.jpg", {"max_new_tokens": 3}, stream=False)
        bad = Request(2, b"x", "c.jpg", {"max_new_tokens": 0}, stream=True)
        records = _run(lambda c: asyncio.gather(send(c, streamed), send(c, plain), send(c, bad)), fake.url)
    s, p, b = records
    assert s.ok and s.token_events == 5 and s.tokens == 5 and s.caption == "w0 w1 w2 w3 w4"
    assert s.queue_ms == 1.5 and 5 <= s.ttft_ms < s.latency_ms and s.latency_ms >= 50
    assert p.ok and p.ttft_ms is None and p.tokens == 3 and p.latency_ms >= 30
    assert not b.ok and b.status == 422 and b.error == "max_new_tokens must be >= 1"
    assert sorted(fake.seen) == [("a.jpg", 3, 5, True), ("b.jpg", 4, 3, False), ("c.jpg", 1, 0, True)]


def test_closed_loop_keeps_the_concurrency_and_stops_at_the_bound():
    pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    with FakeServer(step=0.005) as fake:
        records = _run(lambda c: closed_loop(c, _requests(), 4, duration=30.0, max_requests=24), fake.url)
        assert fake.active == 0
    assert len(records) == 24 and all(r.ok for r in records)
    assert sorted(r.index for r in records) == list(range(24))
    # Never more than 4 in flight: at any request's start, at most 3 others were running.
    for r in records:
        overlapping = sum(o.start < r.start < o.end for o in records if o is not r)
        assert overlapping <= 3
    s = summarise(records)
    # 24 requests of 3 or 6 tokens at 5 ms per token, 4 at a time: about 24 * 22.5 ms / 4 = 135 ms.
    assert 0.1 < s.seconds < 3 and s.captions_per_s == pytest.approx(24 / s.seconds)
    assert s.stats["ttft_ms_p50"] < s.stats["latency_ms_p50"]


def test_open_loop_sends_on_schedule_and_counts_rejections():
    pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    schedule = poisson_schedule(200.0, 0.5, seed=1)  # ~100 arrivals in 0.5 s
    with FakeServer(step=0.02, capacity=3) as fake:  # 3 at a time, 60-120 ms each: overloaded
        records = _run(lambda c: open_loop(c, _requests(), schedule, timeout=20), fake.url)
    s = summarise(records)
    assert s.sent == len(schedule) and s.ok + s.rejected == s.sent and s.failed == 0
    assert s.rejected > s.sent / 2 and s.ok >= 3
    assert s.stats["reject_ms_p50"] < s.stats["latency_ms_p50"]
    # An open loop sends on its schedule, not when answers come back: while the first accepted
    # request was being answered (60 ms at least), many more left. The lag bounds only catch a
    # client that stalls; how closely it keeps the schedule is the benchmark's figure (a loaded
    # 2-core machine delays sends by tens of ms), not a timed test's.
    first = min((r for r in records if r.ok), key=lambda r: r.start)
    assert sum(r.start < first.end for r in records) > 3 * fake.capacity
    assert s.stats["send_lag_ms_p50"] < 250 and s.stats["send_lag_ms_p99"] < 2000


# --------------------------------------------------------------------------------------------------
# The quick run against the real server


def _server_importable() -> bool:
    return importlib.util.find_spec("clipcap.serve.__main__") is not None and (
        importlib.util.find_spec("clipcap.serve.app") is not None
    )


def test_bad_options_are_config_errors(tmp_path):
    from clipcap.benchmarks.serve_run import ServeBenchOptions

    from clipcap.errors import ConfigError

    with pytest.raises(ConfigError, match="schedulers"):
        ServeBenchOptions(schedulers=("fifo",), cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="tokens"):
        ServeBenchOptions(tokens=(9, 3), cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="no such directory"):
        ServeBenchOptions(out=tmp_path / "missing" / "x.json", cache_dir=tmp_path)
    quick = ServeBenchOptions(quick=True, cache_dir=tmp_path)
    assert quick.precisions == ("fp32",) and quick.concurrency == (1, 4) and not quick.trained_check
    full = ServeBenchOptions(cache_dir=tmp_path)
    assert full.concurrency == (1, 4, 16, 64) and full.precisions == ("fp32", "int8")
    from clipcap.benchmarks.serve_run import Workload

    workloads = [Workload(n, tmp_path, "fp32", trained, 100) for n, trained in (("a", 0), ("b", 0), ("d", 1))]
    assert full.estimate_s(workloads) < 20 * 60  # the full run is meant to fit in ~20 minutes
    assert full.points(trained=True) == ((1, 16), (0.7, 2.0)) and full.points(False)[0] == (1, 4, 16, 64)


def test_overload_points_send_until_the_queue_overflows(tmp_path):
    from clipcap.benchmarks.serve_run import ServeBenchOptions, overload_duration

    o = ServeBenchOptions(cache_dir=tmp_path, duration=6.0, max_waiting=64)
    assert overload_duration(o, 0.7, 10.0) == 6.0  # below saturation: the plain duration
    # 2x a saturation of 10/s: 10 excess requests a second fill 1.5 x 64 in 9.6 s.
    assert overload_duration(o, 2.0, 10.0) == pytest.approx(9.6)
    assert overload_duration(o, 2.0, 1.0) == 18.0  # capped at 3 x the duration
    assert overload_duration(o, 2.0, 100.0) == 6.0


def test_command_line_parses_into_options(tmp_path):
    import argparse

    from clipcap.benchmarks import serve_command

    parser = argparse.ArgumentParser()
    serve_command.add_arguments(parser)
    args = parser.parse_args(
        [
            "--quick",
            "--schedulers",
            "continuous,none",
            "--tokens",
            "3-9",
            "--cache",
            str(tmp_path),
            "--load",
            "0.5",
        ]
    )
    o = serve_command.options_from(args)
    assert (
        o.quick
        and o.schedulers == ("continuous", "none")
        and o.tokens == (3, 9)
        and o.load_fractions == (0.5,)
    )
    from clipcap.benchmarks.serve_baselines import reproduce_command

    assert "--tokens 3-9" in reproduce_command(o)


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    pytest.importorskip("httpx")
    pytest.importorskip("onnx")
    pytest.importorskip("matplotlib")
    if not _server_importable():
        pytest.skip("clipcap.serve has no server yet (serve/app.py and serve/__main__.py)")
    from clipcap.benchmarks.serve_run import ServeBenchOptions, run_serve_bench

    folder = tmp_path_factory.mktemp("bench_serve")
    options = ServeBenchOptions(
        quick=True,
        cache_dir=folder / "cache",
        out=folder / "serve.json",
        markdown=folder / "serve.md",
        plot=folder / "serve.png",
    )
    lines: list[str] = []
    started = time.perf_counter()
    report = run_serve_bench(options, say=lines.append)
    return report, options, lines, time.perf_counter() - started


def test_quick_run_measures_every_scheduler(quick_report):
    report, _, lines, seconds = quick_report
    assert seconds < 180, f"the quick run took {seconds:.0f} s"
    (workload,) = report["workloads"]
    assert [s["scheduler"] for s in workload["servers"]] == ["static", "continuous", "none"]
    for s in workload["servers"]:
        assert "error" not in s, s.get("error")
        assert s["exit_code"] == 0, f"{s['scheduler']} exited {s['exit_code']}:\n{s['log_tail']}"
        closed = [p for p in s["points"] if p["kind"] == "closed"]
        opened = [p for p in s["points"] if p["kind"] == "open"]
        assert [p["concurrency"] for p in closed] == [1, 4] and len(opened) >= 2
        for p in closed:
            assert p["ok"] == p["sent"] > 0 and p["failed"] == p["timed_out"] == p["rejected"] == 0
            assert 0 < p["latency_ms_p50"] <= p["latency_ms_p99"] and p["ttft_ms_p50"] <= p["latency_ms_p99"]
            assert p["rss_max"] > 20 * 2**20
        assert s["saturation_captions_per_s"] == max(p["captions_per_s"] for p in closed)
        (mix,) = [p for p in s["points"] if p["kind"] == "mix"]  # a quarter of beam requests
        assert mix["ok"] == mix["sent"] > 0 and mix["beam_size"] == 4
        assert mix["greedy_latency_ms_p50"] is not None and mix["beam_latency_ms_p50"] is not None
        for p in opened:
            assert p["ok"] > 0 and p["offered_per_s"] > 0
    # Rows per decode step come from /metrics: one row at a time without batching, more with it at c=4.
    none4 = next(p for p in workload["servers"][2]["points"] if p["concurrency"] == 4)
    cont4 = next(p for p in workload["servers"][1]["points"] if p["concurrency"] == 4)
    assert none4["rows_per_step_mean"] == pytest.approx(1.0)
    assert cont4["rows_per_step_mean"] > 1.0
    assert workload["direct"]["latency_ms_p50"] > 0 and workload["offline"]["captions_per_s"] > 0
    assert any("ready in" in line for line in lines)


def test_quick_run_writes_json_markdown_and_plot(quick_report):
    report, options, _, _ = quick_report
    saved = json.loads(options.out.read_text())
    assert saved["config"]["quick"] and saved["workloads"][0]["servers"][0]["points"]
    text = options.markdown.read_text()
    assert (
        "Quick mode" in text
        and "## Targets (issue 13)" in text
        and "Reproduce: `clipcap bench serve --quick`" in text
    )
    names = {t["target"] for t in report["targets"]}
    assert any("concurrency 16" in n for n in names) and any("70 %" in n for n in names)
    # The quick run has no concurrency 16: that target is "not measured", never made up.
    c16 = next(t for t in report["targets"] if "concurrency 16" in t["target"])
    assert c16["met"] is None and c16["measured"] is None
    direct = next(t for t in report["targets"] if "concurrency 1," in t["target"])
    assert direct["measured"] is not None
    assert options.plot.stat().st_size > 10_000
