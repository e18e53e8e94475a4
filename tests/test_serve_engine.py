"""The serving engine: a served caption is Captioner.caption's, token for token, whatever shares
the batch (greedy, beam, seeded sampling), under each admission rule; padding is exact; a failing
step fails its requests and the loop goes on; deadlines and cancellation free the rows."""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")  # the tiny bundle is exported from a PyTorch model

from clipcap.runtime import Captioner
from clipcap.serve.engine import Engine, EngineConfig, Observer, QueueFull
from clipcap.serve.inputs import load_pixels
from clipcap.serve.jobs import Job, ServeError


@pytest.fixture(scope="module")
def captioner(tiny_bundle):
    return Captioner(tiny_bundle[0], threads=1)


def images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(24 + 3 * i, 40 - 2 * i, 3), dtype=np.uint8) for i in range(n)]


# A stop set that random tiny models hit now and then, so captions end at different lengths.
SOME_STOPS = tuple(range(7, 50257, 97))

MIXES = [
    dict(strategy="greedy", max_new_tokens=12),
    dict(strategy="greedy", max_new_tokens=5, stop_token_ids=SOME_STOPS),
    dict(strategy="top_k", top_k=40, seed=3, max_new_tokens=16, stop_token_ids=SOME_STOPS),
    dict(strategy="top_p", top_p=0.9, temperature=0.8, seed=11, max_new_tokens=9),
    dict(strategy="top_k", top_k=5, seed=7, min_new_tokens=4, max_new_tokens=20, stop_token_ids=SOME_STOPS),
    dict(strategy="beam", beam_size=3, max_new_tokens=8, stop_token_ids=SOME_STOPS),
    dict(strategy="beam", beam_size=2, max_new_tokens=6, length_penalty=0.5),
    dict(strategy="greedy", max_new_tokens=1),
]


class Recorder(Observer):
    def __init__(self) -> None:
        self.step_rows: list[int] = []

    def step(self, rows: int, seconds: float) -> None:
        self.step_rows.append(rows)


class Waiter:
    """A job's events collected in the test thread."""

    def __init__(self) -> None:
        self.events: queue.Queue = queue.Queue()
        self.tokens: list[tuple[int, int]] = []
        self.finished: list = []

    def emit(self, event) -> None:
        self.events.put(event)

    def result(self, timeout: float = 60):
        while True:
            kind, value = self.events.get(timeout=timeout)
            if kind == "token":
                self.tokens.append(value)
            elif kind == "result":  # streaming: an image's caption as soon as it ended
                self.finished.append(value)
            else:
                return kind, value


def make_job(captioner, options, *, pixels=None, embeddings=None, **kw):
    waiter = Waiter()
    return Job(options, waiter.emit, pixels=pixels, embeddings=embeddings, **kw), waiter


def run_engine(captioner, config, observer=None) -> Engine:
    engine = Engine(captioner, config, observer)
    engine.start()
    return engine


def test_left_padding_is_exact(captioner):
    """Rows joining a running batch, left-padded, get the logits they would get alone."""
    from clipcap.serve.batch import KVBatch

    prefix = captioner.sessions["mapper"].run(
        None,
        {"image_embeds": np.random.default_rng(0).normal(size=(3, captioner.clip_dim)).astype(np.float32)},
    )[0]
    alone = []
    for i in range(3):
        b = KVBatch(captioner.sessions["decoder"], captioner.shape)
        b.prefill(prefix[i : i + 1])
        alone.append([b.step(np.array([t])) for t in (5, 300, 13, 9, 44, 17)])
    shared = KVBatch(captioner.sessions["decoder"], captioner.shape)
    shared.prefill(prefix[0:1])
    got = {0: [shared.step(np.array([t]))[0] for t in (5, 300)]}
    shared.prefill(prefix[1:3])  # two rows join two steps late: padding 2
    assert shared.pad.tolist() == [0, 2, 2]
    got[1], got[2] = [], []
    tokens = [(5, 300, 13, 9, 44, 17)[k] for k in range(6)]
    for s in range(4):
        out = shared.step(np.array([tokens[2 + s], tokens[s], tokens[s]]))
        got[0].append(out[0])
        got[1].append(out[1])
        got[2].append(out[2])
    shared.select(np.array([1, 2]))  # row 0 leaves: the padding columns go
    assert shared.pad.tolist() == [0, 0]
    for s in range(4, 6):
        out = shared.step(np.array([tokens[s], tokens[s]]))
        got[1].append(out[0])
        got[2].append(out[1])
    for i in range(3):
        for s, logits in enumerate(got[i]):
            assert np.abs(logits - alone[i][s][0]).max() <= 1e-5, (i, s)


def test_padding_trimmed_when_rows_leave(captioner):
    from clipcap.serve.batch import KVBatch

    prefix = captioner.sessions["mapper"].run(
        None, {"image_embeds": np.ones((2, captioner.clip_dim), dtype=np.float32)}
    )[0]
    b = KVBatch(captioner.sessions["decoder"], captioner.shape)
    b.prefill(prefix[:1])
    b.step(np.array([1]))
    b.step(np.array([2]))
    b.prefill(prefix[1:])
    P = prefix.shape[1]
    assert b.length == P + 2 and b.pad.tolist() == [0, 2]
    b.select(np.array([1]))
    assert b.length == P and b.pad.tolist() == [0] and b.past[0].shape[2] == P


def expected(captioner, sources, options):
    return [(c.tokens, c.score) for c in captioner.caption(sources, options, batch_size=len(sources))]


@pytest.mark.parametrize("batching", ["continuous", "static", "none", "continuous-grouped"])
def test_served_equals_captioner(captioner, batching):
    """>= 32 concurrent requests of mixed images, options and lengths; each equals the sequential
    Captioner result, token for token."""
    recorder = Recorder()
    ratio = 1.0 if batching == "continuous-grouped" else 0.0
    batching = batching.split("-")[0]
    config = EngineConfig(batching, max_batch_rows=24, waiting_served_ratio=ratio, max_waiting_steps=3)
    engine = run_engine(captioner, config, recorder)
    cases = []
    for i in range(36):
        options = captioner.options(**MIXES[i % len(MIXES)])
        sources = images(1 + i % 3, seed=i)
        cases.append((sources, options))
    jobs = []

    def submit(sources, options, delay):
        time.sleep(delay)  # requests arrive while others run, so they join mid-batch
        pixels, _ = load_pixels(captioner, sources)
        job, waiter = make_job(captioner, options, pixels=pixels, stream=True)
        engine.submit(job)
        jobs.append((sources, options, waiter))

    threads = [
        threading.Thread(target=submit, args=(s, o, 0.002 * (k % 9))) for k, (s, o) in enumerate(cases)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        for sources, options, waiter in jobs:
            kind, value = waiter.result()
            assert kind == "done", value
            want = expected(captioner, sources, options)
            assert [g.tokens for g in value] == [w[0] for w in want], options
            assert [g.score for g in value] == pytest.approx([w[1] for w in want], abs=1e-4)
            if options.strategy != "beam":  # streamed tokens, in order per image, are the caption
                for b, g in enumerate(value):
                    assert [t for i, t in waiter.tokens if i == b] == g.tokens
                assert sorted(waiter.finished, key=lambda f: f[0]) == list(enumerate(value))
    finally:
        engine.stop(5)
    assert max(recorder.step_rows) <= 24
    if batching == "none":
        assert max(recorder.step_rows) <= 3 * 3  # one request: at most 3 images x beam_size 3
    if batching == "continuous":
        assert max(recorder.step_rows) > 9  # requests really shared steps


class _Rows:
    """A stand-in for a running or waiting request: only its row counts matter to admission."""

    def __init__(self, rows: int) -> None:
        self.max_rows = rows
        self.decoder = type("D", (), {"rows_needed": rows})()


@pytest.mark.parametrize(
    "running, waiting, waited, admit",
    [
        ([4], [1], 0, False),  # 1 waiting row against 4 running: let the group grow
        ([4], [1, 1, 1], 0, False),
        ([4], [1, 1, 2], 0, True),  # the group reached 1.0 x the running rows
        ([12, 2], [1, 1], 0, False),  # 2 free rows of 16: let more rows free up
        ([4, 2], [4, 4], 0, True),  # 8 rows can join 6
        ([4], [1], 4, True),  # the oldest waited max_waiting_steps (5) steps
        ([4], [], 0, True),
    ],
)
def test_grouped_admission_waits_for_a_group_or_a_bounded_time(captioner, running, waiting, waited, admit):
    config = EngineConfig(max_batch_rows=16, waiting_served_ratio=1.0, max_waiting_steps=5)
    engine = Engine(captioner, config)
    engine.running = [_Rows(n) for n in running]
    engine.waiting.extend(_Rows(n) for n in waiting)
    engine._steps_waited = waited
    assert engine._worth_admitting() is admit
    assert Engine(captioner, EngineConfig(max_batch_rows=16))._worth_admitting()  # ratio 0: always


def test_embeddings_request_skips_the_encoder(captioner):
    engine = run_engine(captioner, EngineConfig())
    try:
        emb = np.random.default_rng(5).normal(size=(4, captioner.clip_dim)).astype(np.float32)
        options = captioner.options(strategy="top_p", top_p=0.8, seed=2, max_new_tokens=10)
        job, waiter = make_job(captioner, options, embeddings=emb)
        engine.submit(job)
        kind, value = waiter.result()
        want = captioner.caption_embeddings(emb, options)
        assert kind == "done" and [g.tokens for g in value] == [c.tokens for c in want]
    finally:
        engine.stop(5)


class FailOnce:
    """Wraps the decoder session: its next run with a decode step raises once."""

    def __init__(self, session) -> None:
        self.session, self.armed = session, True

    def run(self, outputs, feeds):
        if self.armed and feeds["input_ids"].shape[1] == 1:
            self.armed = False
            raise RuntimeError("injected fault")
        return self.session.run(outputs, feeds)


def test_step_fault_fails_that_step_and_the_loop_goes_on(captioner, caplog):
    engine = Engine(captioner, EngineConfig())
    engine.batch.session = FailOnce(engine.batch.session)
    engine.start()
    try:
        options = captioner.options(max_new_tokens=6)
        job, waiter = make_job(captioner, options, embeddings=np.ones((2, captioner.clip_dim), np.float32))
        with caplog.at_level("ERROR", logger="clipcap.serve"):
            engine.submit(job)
            kind, error = waiter.result()
        assert kind == "error" and error.status == 500 and "injected fault" in str(error)
        assert any(
            "decode step failed" in r.getMessage() and "injected fault" in r.getMessage()
            for r in caplog.records
        )
        job, waiter = make_job(captioner, options, embeddings=np.ones((2, captioner.clip_dim), np.float32))
        engine.submit(job)
        kind, value = waiter.result()
        assert kind == "done" and len(value) == 2 and engine.batch.rows == 0
    finally:
        engine.stop(5)


def test_deadline_and_cancel_free_the_rows(captioner):
    engine = run_engine(captioner, EngineConfig())
    try:
        options = captioner.options(max_new_tokens=120, stop_token_ids=())
        emb = np.ones((2, captioner.clip_dim), np.float32)
        late, late_w = make_job(captioner, options, embeddings=emb, deadline=time.monotonic() + 0.05)
        gone, gone_w = make_job(captioner, options, embeddings=emb)
        engine.submit(late)
        engine.submit(gone)
        time.sleep(0.01)
        gone.cancel("client disconnected")
        assert late_w.result()[1].status == 504
        assert gone_w.result()[1].status == 499
        deadline = time.monotonic() + 5
        while not engine.idle() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.idle() and engine.batch.rows == 0
    finally:
        engine.stop(5)


def test_queue_full_and_too_large(captioner):
    from clipcap.errors import OptionsError

    engine = Engine(captioner, EngineConfig(max_waiting=2, max_batch_rows=4))  # not started: nothing drains
    options = captioner.options()
    emb = np.ones((1, captioner.clip_dim), np.float32)
    engine.submit(make_job(captioner, options, embeddings=emb)[0])
    engine.submit(make_job(captioner, options, embeddings=emb)[0])
    with pytest.raises(QueueFull):
        engine.submit(make_job(captioner, options, embeddings=emb)[0])
    with pytest.raises(OptionsError, match="max-batch-rows 4"):
        engine.submit(make_job(captioner, captioner.options(strategy="beam", beam_size=5), embeddings=emb)[0])
    engine.start()
    engine.stop(5)  # what was queued gets 503


def test_stop_answers_queued_requests(captioner):
    engine = Engine(captioner, EngineConfig())
    job, waiter = make_job(
        captioner, captioner.options(), embeddings=np.ones((1, captioner.clip_dim), np.float32)
    )
    engine.submit(job)
    engine.start()
    engine.stop(5)
    kind, value = waiter.result()
    assert kind == "done" or (kind == "error" and isinstance(value, ServeError) and value.status == 503)


class Slow:
    def __init__(self, session, delay: float) -> None:
        self.session, self.delay = session, delay

    def run(self, outputs, feeds):
        time.sleep(self.delay)
        return self.session.run(outputs, feeds)


class Raising:
    def run(self, outputs, feeds):
        raise RuntimeError("injected mapper fault")


def test_prefill_fault_fails_only_the_admitted_request(captioner, monkeypatch):
    engine = Engine(captioner, EngineConfig())
    engine.batch.session = Slow(engine.batch.session, 0.01)
    engine.start()
    try:
        emb = np.random.default_rng(9).normal(size=(2, captioner.clip_dim)).astype(np.float32)
        options = captioner.options(max_new_tokens=40, stop_token_ids=())
        running, running_w = make_job(captioner, options, embeddings=emb)
        engine.submit(running)
        while running.prefilled is None:
            time.sleep(0.005)
        monkeypatch.setitem(captioner.sessions, "mapper", Raising())
        late, late_w = make_job(captioner, options, embeddings=emb[:1])
        engine.submit(late)
        kind, error = late_w.result()
        assert kind == "error" and error.status == 500 and "injected mapper fault" in str(error)
        monkeypatch.undo()
        kind, value = running_w.result()
        assert kind == "done"
        assert [g.tokens for g in value] == [c.tokens for c in captioner.caption_embeddings(emb, options)]
    finally:
        engine.stop(5)
