"""The HTTP API (FastAPI): captions, streaming, health, readiness, metrics, models, the web page.

``create_app(engines, limits=...)`` builds one app around already-opened engines (one per bundle
name); the app starts their decode loops, warms each with one caption, and only then answers
/readyz with 200. Every error a client sees is JSON ``{"error": message}``; never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from clipcap.serve.engine import Engine
from clipcap.serve.jobs import Job
from clipcap.serve.metrics import Metrics
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from clipcap.errors import OptionsError

log = logging.getLogger("clipcap.serve")
STATIC = Path(__file__).parent / "static"
OUTCOMES = {200: "ok", 400: "bad_input", 413: "too_large", 422: "invalid", 499: "cancelled"}
OUTCOMES |= {500: "failed", 503: "rejected", 504: "timeout"}


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 32 * 1024 * 1024
    max_images: int = 16
    request_timeout_s: float = 60.0
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1 or self.max_images < 1 or self.request_timeout_s <= 0:
            raise OptionsError(
                f"limits must be positive: max_body_bytes={self.max_body_bytes}, "
                f"max_images={self.max_images}, request_timeout_s={self.request_timeout_s}"
            )


class Refused(Exception):
    """A request answered with an error status before (or instead of) captioning."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.extra = status, extra


def error_response(status: int, message: str, **extra: Any) -> JSONResponse:
    headers = {"Retry-After": str(extra.pop("retry_after"))} if "retry_after" in extra else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def create_app(engines: dict[str, Engine], *, limits: Limits | None = None, warm: bool = True) -> FastAPI:
    """An app serving these engines (name -> Engine). ``warm``: caption once per bundle before
    /readyz says 200."""
    if not engines:
        raise OptionsError("serve at least one bundle")
    limits = limits or Limits()
    metrics = Metrics()
    for name, engine in engines.items():
        engine.observer = metrics.observer(name)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        for engine in engines.values():
            engine.start()
        warming = asyncio.create_task(_warm_up(app, engines, warm))
        yield
        warming.cancel()
        app.state.draining = True
        await asyncio.gather(*(asyncio.to_thread(e.stop, 10) for e in engines.values()))

    app = FastAPI(
        title="clipcap serve",
        description="Image captioning with ClipCap bundles on ONNX Runtime, continuously batched. "
        "See docs/serving.md.",
        version="1",
        lifespan=lifespan,
    )
    app.state.engines, app.state.limits, app.state.metrics = engines, limits, metrics
    app.state.ready, app.state.draining, app.state.inflight = False, False, 0
    _routes(app)
    return app


async def _warm_up(app: FastAPI, engines: dict[str, Engine], warm: bool) -> None:
    """One real caption through each engine (the first runs allocate; clients should not pay)."""
    try:
        for name, engine in engines.items():
            if warm:
                embeddings = np.zeros((1, engine.captioner.clip_dim), dtype=np.float32)
                options = engine.captioner.options(max_new_tokens=2)
                await _run_job(engine, Job(options, lambda e: None, embeddings=embeddings), None, warmup=True)
            log.info("model %s ready", name)
        app.state.ready = True
    except Exception as e:  # a bundle that cannot caption keeps /readyz at 503 and says why
        log.error("warm-up failed: %s: %s", type(e).__name__, e)


async def _run_job(engine: Engine, job: Job, request: Request | None, warmup: bool = False):
    """Submit and wait for the end; the events in between go to ``job.stream_queue`` if set."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    job.emit = lambda event: loop.call_soon_threadsafe(events.put_nowait, event)
    engine.submit(job)
    while True:
        kind, value = await events.get()
        if kind == "done":
            return value
        if kind == "error":
            raise value


def _routes(app: FastAPI) -> None:
    state = app.state

    @app.middleware("http")
    async def request_ids(request: Request, call_next):
        request.state.id = request.headers.get("x-request-id") or uuid.uuid4().hex[:16]
        request.state.arrived = time.monotonic()
        try:
            response = await call_next(request)
        except Exception as e:  # never a traceback to the client
            log.error("request %s failed: %s: %s", request.state.id, type(e).__name__, e)
            response = error_response(500, f"internal error ({type(e).__name__}); see the server's log")
        response.headers["X-Request-ID"] = request.state.id
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail))

    @app.get("/healthz", summary="Liveness: 200 while the process serves HTTP")
    async def healthz():
        return {"status": "alive"}

    @app.get(
        "/readyz", summary="Readiness: 200 once every bundle is loaded and warmed; 503 starting or draining"
    )
    async def readyz():
        if state.draining:
            return error_response(503, "draining: the server is shutting down")
        if not state.ready:
            return error_response(503, "starting: the bundles are loading and warming up")
        return {"status": "ready", "models": list(state.engines)}

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics():
        for name, engine in state.engines.items():
            state.metrics.queue.labels(name).set(len(engine.waiting))
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", summary="The served bundles: sizes, precision, CLIP, generation defaults")
    async def models():
        return {"models": [_model_summary(name, e) for name, e in state.engines.items()]}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        page = STATIC / "index.html"
        if page.is_file():
            return FileResponse(page)
        return HTMLResponse("<!doctype html><title>clipcap serve</title><p>POST images to /v1/captions.</p>")

    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

    from clipcap.serve.captions import add_captions_route

    add_captions_route(app)


def _model_summary(name: str, engine: Engine) -> dict[str, Any]:
    manifest = engine.captioner.bundle.manifest
    clip = manifest.get("clip", {})
    return {
        "name": name,
        "variant": manifest.get("variant"),
        "precision": manifest.get("precision"),
        "model": manifest.get("model"),
        "clip": {k: clip.get(k) for k in ("backend", "model", "embed_dim") if k in clip},
        "generation": engine.captioner.defaults.to_dict(),
        "provider": engine.captioner.providers[0],
        "batching": engine.config.batching,
        "max_batch_rows": engine.config.max_batch_rows,
    }


__all__ = ["Limits", "Refused", "create_app", "error_response"]
