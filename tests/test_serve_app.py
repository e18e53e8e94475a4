"""The HTTP API against a real uvicorn on a loopback port, with a real httpx client: every status
code, multipart / raw / JSON inputs, SSE streaming, metrics, models, readiness and draining, and
SIGTERM of a ``python -m clipcap.serve`` process with a request in flight."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")  # the tiny bundle is exported from a PyTorch model
pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
pytest.importorskip("multipart")
pytest.importorskip("prometheus_client")

from clipcap.runtime import Captioner, ImageError, load_image  # noqa: E402
from clipcap.serve.app import Limits, create_app  # noqa: E402
from clipcap.serve.engine import Engine, EngineConfig  # noqa: E402
from PIL import Image  # noqa: E402


@pytest.fixture(scope="module")
def captioner(tiny_bundle):
    return Captioner(tiny_bundle[0], threads=1)


def png(seed: int, size=(40, 30)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


@contextlib.contextmanager
def serving(engines, **limits):
    """A real uvicorn on 127.0.0.1 (a free port), in a thread; yields (base URL, app)."""
    app = create_app(engines, limits=Limits(**limits))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    try:
        yield url, app
    finally:
        server.should_exit = True
        thread.join(15)


def wait_ready(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(f"{url}/readyz").status_code != 200:
        assert time.monotonic() < deadline, "never ready"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def server(captioner):
    """One server for the tests that only send requests."""
    with serving({"tiny": Engine(captioner, EngineConfig(max_batch_rows=16))}, max_body_bytes=200_000) as (
        url,
        _,
    ):
        wait_ready(url)
        yield url


def captions_of(captioner, images, **options):
    return [c.tokens for c in captioner.caption(images, captioner.options(**options), batch_size=len(images))]


def test_multipart_several_images_one_bad(server, captioner):
    files = [
        ("image", ("a.png", png(1))),
        ("image", ("bad.png", b"not an image")),
        ("image", ("c.png", png(3))),
    ]
    r = httpx.post(f"{server}/v1/captions", files=files, data={"max_new_tokens": "7", "strategy": "greedy"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (
        body["model"] == "tiny"
        and len(body["results"]) == 3
        and set(body["timing"]) == {"queue_ms", "total_ms"}
    )
    a, bad, c = body["results"]
    with pytest.raises(ImageError) as raised:
        load_image(b"not an image")
    assert bad == {"error": str(raised.value), "filename": "bad.png"}  # the runtime's own message
    assert (a["filename"], c["filename"]) == ("a.png", "c.png")
    want = captions_of(captioner, [png(1), png(3)], max_new_tokens=7)
    assert [a["tokens"], c["tokens"]] == want
    assert a["caption"] == captioner.tokenizer.decode(want[0], skip_special_tokens=True)
    assert r.headers["x-request-id"]


def test_raw_image_body_with_query_options(server, captioner):
    r = httpx.post(
        f"{server}/v1/captions?strategy=top-k&top_k=20&seed=4&max_new_tokens=9",
        content=png(5),
        headers={"Content-Type": "image/png", "X-Request-ID": "abc-123"},
    )
    assert r.status_code == 200 and r.headers["x-request-id"] == "abc-123"
    assert [r.json()["results"][0]["tokens"]] == captions_of(
        captioner, [png(5)], strategy="top_k", top_k=20, seed=4, max_new_tokens=9
    )
    assert "filename" not in r.json()["results"][0]


def test_embeddings_json_beam(server, captioner):
    emb = np.random.default_rng(2).normal(size=(2, captioner.clip_dim)).astype(np.float32)
    payload = {"embeddings": emb.tolist(), "strategy": "beam", "beam_size": 3, "max_new_tokens": 6}
    r = httpx.post(f"{server}/v1/captions", json=payload)
    assert r.status_code == 200, r.text
    want = captioner.caption_embeddings(emb, strategy="beam", beam_size=3, max_new_tokens=6)
    assert [e["tokens"] for e in r.json()["results"]] == [c.tokens for c in want]


def read_events(response) -> list[tuple[str, dict]]:
    events, kind = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            events.append((kind, json.loads(line[6:])))
    return events


@pytest.mark.parametrize("strategy", ["greedy", "top_p", "beam"])
def test_streaming_equals_the_plain_answer(server, strategy):
    files = [("image", ("a.png", png(7))), ("image", ("b.png", png(8)))]
    extra = {"top_p": {"top_p": "0.9", "seed": "3"}, "beam": {"beam_size": "2"}}.get(strategy, {})
    data = {"strategy": strategy, "max_new_tokens": "8", **extra}
    plain = httpx.post(f"{server}/v1/captions", files=files, data=data).json()
    with httpx.stream("POST", f"{server}/v1/captions", files=files, data={**data, "stream": "true"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = read_events(r)
    kinds = [k for k, _ in events]
    assert kinds[-1] == "done" and kinds.count("result") == 2
    assert events[-1][1]["results"] == plain["results"]
    for index in (0, 1):
        tokens = [d for k, d in events if k == "token" and d["index"] == index]
        result = next(d for k, d in events if k == "result" and d["index"] == index)
        assert result["caption"] == plain["results"][index]["caption"]
        if strategy == "beam":
            assert not tokens  # beam sends no token events
        else:
            assert [t["token"] for t in tokens] == result["tokens"]
            assert (
                tokens[-1]["text"] == result["caption"]
                and "".join(t["delta"] for t in tokens) == result["caption"]
            )
            assert kinds.index("result") > kinds.index("token")


@pytest.mark.parametrize(
    "query, content, status, words",
    [
        ("", None, 400, "no input"),
        ("", b"junk", 400, "no usable image"),  # multipart with only a bad image
        ("?top_k=abc&strategy=top-k", b"img", 422, "top_k"),
        ("?temperature=0&strategy=top_p", b"img", 422, "temperature"),
        ("?frobnicate=1", b"img", 422, "frobnicate"),
        ("?model=nope", b"img", 422, "nope"),
        ("?strategy=sideways", b"img", 422, "strategy"),
        ("?beam_size=9&strategy=beam", b"img", 422, "max-batch-rows"),  # 2 images x 9 rows > 16
    ],
)
def test_bad_requests(server, query, content, status, words):
    if content is None:
        r = httpx.post(f"{server}/v1/captions{query}")
    elif content == b"junk":
        r = httpx.post(f"{server}/v1/captions{query}", files=[("image", ("x.jpg", b"junk"))])
        assert r.json()["results"][0]["filename"] == "x.jpg"
    else:
        r = httpx.post(
            f"{server}/v1/captions{query}", files=[("image", ("a.png", png(1))), ("image", png(2))]
        )
    assert r.status_code == status, r.text
    assert words in r.json()["error"] and "Traceback" not in r.text


def test_body_over_the_limit_is_refused_unread(server):
    big = b"\0" * 300_000  # the fixture's limit: 200,000 bytes
    r = httpx.post(f"{server}/v1/captions", content=big, headers={"Content-Type": "image/png"})
    assert r.status_code == 413 and "200000" in r.json()["error"]

    def chunks():  # no Content-Length: counted while it arrives
        for _ in range(40):
            yield b"\0" * 10_000

    r = httpx.post(f"{server}/v1/captions", content=chunks(), headers={"Content-Type": "image/png"})
    assert r.status_code == 413


def test_too_many_images(captioner):
    with serving({"tiny": Engine(captioner)}, max_images=2) as (url, _):
        r = httpx.post(f"{url}/v1/captions", files=[("image", png(i)) for i in range(3)])
        assert r.status_code == 413 and "--max-images" in r.json()["error"]


def test_models_metrics_health(server):
    assert httpx.get(f"{server}/healthz").status_code == 200
    models = httpx.get(f"{server}/v1/models").json()["models"]
    assert models[0]["name"] == "tiny" and models[0]["precision"] == "fp32"
    assert models[0]["model"]["n_layer"] == 2 and models[0]["generation"]["strategy"] == "greedy"
    httpx.post(
        f"{server}/v1/captions?max_new_tokens=3", content=png(1), headers={"Content-Type": "image/png"}
    )
    text = httpx.get(f"{server}/metrics").text
    for name in (
        'clipcap_request_count_total{model="tiny",outcome="ok"}',
        "clipcap_queue_size",
        "clipcap_batch_current_rows",
        "clipcap_batch_step_rows_bucket",
        "clipcap_request_queue_duration_seconds_bucket",
        "clipcap_request_prefill_duration_seconds_bucket",
        "clipcap_request_decode_duration_seconds_bucket",
        "clipcap_request_total_duration_seconds_bucket",
        'clipcap_request_generated_tokens_total{model="tiny"}',
    ):
        assert name in text, name
    assert "/v1/captions" in httpx.get(f"{server}/openapi.json").text
    assert httpx.get(f"{server}/").status_code == 200


class Gate:
    """Wraps a session: each run waits for the gate (and sleeps ``delay``); counts runs."""

    def __init__(self, session, delay: float = 0.0, open_: bool = True) -> None:
        self.session, self.delay = session, delay
        self.opened = threading.Event()
        if open_:
            self.opened.set()

    def run(self, outputs, feeds):
        self.opened.wait(30)
        time.sleep(self.delay)
        return self.session.run(outputs, feeds)


def embeddings_body(captioner, n=1, **options):
    return {"embeddings": np.ones((n, captioner.clip_dim)).tolist(), **options}


def test_readyz_waits_for_warm_up(tiny_bundle):
    fresh = Captioner(tiny_bundle[0], threads=1)
    gate = Gate(fresh.sessions["mapper"], open_=False)
    fresh.sessions["mapper"] = gate
    with serving({"tiny": Engine(fresh)}) as (url, _):
        assert httpx.get(f"{url}/healthz").status_code == 200
        r = httpx.get(f"{url}/readyz")
        assert r.status_code == 503 and "starting" in r.json()["error"]
        gate.opened.set()
        wait_ready(url)


def test_queue_full_is_503_at_once_and_timeout_is_504(captioner):
    engine = Engine(captioner, EngineConfig(max_waiting=1, max_batch_rows=1))
    with serving({"tiny": engine}, request_timeout_s=1.5) as (url, _):
        wait_ready(url)
        gate = Gate(engine.batch.session, open_=False)
        engine.batch.session = gate
        body = embeddings_body(captioner, max_new_tokens=5)
        answers = {}

        def send(key):
            answers[key] = httpx.post(f"{url}/v1/captions", json=body, timeout=30)

        first = threading.Thread(target=send, args=("running",))
        first.start()
        time.sleep(0.3)  # it holds the only row (stuck in its prefill at the gate)
        second = threading.Thread(target=send, args=("waiting",))
        second.start()
        time.sleep(0.3)
        start = time.monotonic()
        r = httpx.post(f"{url}/v1/captions", json=body)
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1 and "waiting" in r.json()["error"]
        assert time.monotonic() - start < 0.5
        # Refused before its images are decoded: a broken upload gets the 503, not a 400.
        r = httpx.post(f"{url}/v1/captions", files={"image": ("x.png", b"not a png", "image/png")})
        assert r.status_code == 503 and "waiting" in r.json()["error"]
        first.join()
        second.join()
        gate.opened.set()
        assert answers["running"].status_code == 504 or answers["waiting"].status_code == 504
        assert "deadline" in (answers["waiting"].json()["error"])
        r = httpx.post(f"{url}/v1/captions", json=body)
        assert r.status_code == 200
        text = httpx.get(f"{url}/metrics").text
        assert 'outcome="rejected"' in text and 'outcome="timeout"' in text


def test_disconnect_frees_the_rows(captioner):
    engine = Engine(captioner)
    with serving({"tiny": engine}) as (url, _):
        wait_ready(url)
        engine.batch.session = Gate(engine.batch.session, delay=0.02)
        body = embeddings_body(captioner, n=3, max_new_tokens=120)
        for stream in (False, True):
            if stream:  # read the first token, then hang up
                with httpx.stream("POST", f"{url}/v1/captions?stream=true", json=body) as r:
                    assert next(r.iter_lines()).startswith("event: token")
            else:  # give up waiting for the answer
                with pytest.raises(httpx.ReadTimeout):
                    httpx.post(f"{url}/v1/captions", json=body, timeout=0.5)
            deadline = time.monotonic() + 5
            while not engine.idle():
                assert time.monotonic() < deadline, "the disconnected request's rows stayed in the batch"
                time.sleep(0.02)
            assert engine.batch.rows == 0


class FailOnce:
    def __init__(self, session) -> None:
        self.session, self.armed = session, True

    def run(self, outputs, feeds):
        if self.armed and feeds["input_ids"].shape[1] == 1:
            self.armed = False
            raise RuntimeError("injected fault")
        return self.session.run(outputs, feeds)


@pytest.mark.parametrize("stream", [False, True])
def test_step_fault_is_500_and_the_next_request_succeeds(captioner, stream):
    engine = Engine(captioner)
    with serving({"tiny": engine}) as (url, _):
        wait_ready(url)
        engine.batch.session = FailOnce(engine.batch.session)
        body = embeddings_body(captioner, max_new_tokens=4)
        if stream:
            with httpx.stream("POST", f"{url}/v1/captions?stream=true", json=body) as r:
                events = read_events(r)
            assert events[-1][0] == "error" and events[-1][1]["status"] == 500
            assert "injected fault" in events[-1][1]["error"]
        else:
            r = httpx.post(f"{url}/v1/captions", json=body)
            assert (
                r.status_code == 500 and "injected fault" in r.json()["error"] and "Traceback" not in r.text
            )
        assert httpx.post(f"{url}/v1/captions", json=body).status_code == 200


def test_draining_turns_readyz_and_requests_to_503(captioner):
    with serving({"tiny": Engine(captioner)}) as (url, app):
        wait_ready(url)
        app.state.draining = True
        assert httpx.get(f"{url}/readyz").status_code == 503
        r = httpx.post(f"{url}/v1/captions", json=embeddings_body(captioner))
        assert r.status_code == 503 and "Retry-After" in r.headers


def test_several_models_need_a_name(captioner):
    with serving({"a": Engine(captioner), "b": Engine(captioner)}) as (url, _):
        wait_ready(url)
        body = embeddings_body(captioner, max_new_tokens=3)
        r = httpx.post(f"{url}/v1/captions", json=body)
        assert r.status_code == 422 and "model is required" in r.json()["error"]
        assert httpx.post(f"{url}/v1/captions", json={**body, "model": "b"}).json()["model"] == "b"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_finishes_the_request_in_flight(tiny_bundle, captioner):
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clipcap.serve",
            f"tiny={tiny_bundle[0]}",
            "--port",
            str(port),
            "--grace",
            "20",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.1)
        body = embeddings_body(captioner, n=8, strategy="beam", beam_size=4, max_new_tokens=120)
        body["embeddings"] = np.random.default_rng(0).normal(size=(8, captioner.clip_dim)).tolist()
        answer = {}
        sender = threading.Thread(
            target=lambda: answer.setdefault("r", httpx.post(f"{url}/v1/captions", json=body, timeout=60))
        )
        sender.start()
        time.sleep(0.3)  # in flight: 8 images x 4 beams, 120 steps
        proc.send_signal(signal.SIGTERM)
        sender.join(60)
        assert proc.wait(60) == 0
        assert answer["r"].status_code == 200 and len(answer["r"].json()["results"]) == 8
        out = proc.stdout.read()
        assert "draining: 1 requests in flight" in out and "Traceback" not in out
    finally:
        if proc.poll() is None:
            proc.kill()
