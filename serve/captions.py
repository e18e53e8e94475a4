"""POST /v1/captions: read the body within its limit, parse inputs and options, run, answer.

Inputs: multipart files under ``image`` (repeatable), one raw ``image/*`` body, or JSON
``{"embeddings": [[...], ...], <options>}``. Options: query parameters, form fields or JSON keys.
With ``stream=true`` the answer is Server-Sent Events: ``token`` per new token of each input,
``result`` when an input ends, ``done`` with the whole answer, or ``error`` if the request fails
after the stream began.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from typing import Any

from clipcap.serve.app import Refused, error_response
from clipcap.serve.engine import Engine, QueueFull
from clipcap.serve.inputs import check_embeddings, load_pixels
from clipcap.serve.jobs import Job, ServeError
from clipcap.serve.options import decoding_options, parse_bool
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from clipcap.errors import OptionsError

log = logging.getLogger("clipcap.serve")
OUTCOMES = {200: "ok", 400: "bad_input", 413: "too_large", 422: "invalid", 499: "cancelled"}
OUTCOMES |= {500: "failed", 503: "rejected", 504: "timeout"}

DESCRIPTION = """Caption images or CLIP embeddings.

* **multipart/form-data**: one or more files under the field `image` (repeat it), options as form
  fields or query parameters;
* **image/\\*** body: one image, options as query parameters;
* **application/json**: `{"embeddings": [[D floats], ...], "strategy": "beam", ...}`.

Options: `model` (optional with one bundle), `strategy` (greedy, top-k, top-p, beam), `top_k`,
`top_p`, `temperature`, `beam_size`, `length_penalty`, `max_new_tokens`, `min_new_tokens`, `stop`
(repeatable stop strings), `seed`, `stream`. Omitted ones take the bundle's defaults.

Answer: `{"model", "results": [{"caption", "tokens", "score", "filename"?} | {"error", "filename"?}],
"timing": {"queue_ms", "total_ms"}}`. Statuses: 400 no usable input, 413 body or image count over
the limit, 422 bad option or unknown model, 503 queue full or shutting down (Retry-After), 504 past
the deadline, 500 a failed step. With `stream=true`: `text/event-stream` with events `token`
(`{"index", "token", "text", "delta"}`), `result` (`{"index", ...entry}`), `done` (the whole
answer) and `error` (`{"error", "status"}`).
"""

OPENAPI = {
    "parameters": [
        {"name": n, "in": "query", "required": False, "schema": {"type": t}}
        for n, t in (
            ("model", "string"),
            ("strategy", "string"),
            ("top_k", "integer"),
            ("top_p", "number"),
            ("temperature", "number"),
            ("beam_size", "integer"),
            ("length_penalty", "number"),
            ("max_new_tokens", "integer"),
            ("min_new_tokens", "integer"),
            ("stop", "string"),
            ("seed", "integer"),
            ("stream", "boolean"),
        )
    ],
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"embeddings": {"type": "array", "items": {"type": "array"}}},
                },
                "example": {"embeddings": [[0.1, -0.2, 0.3]], "strategy": "greedy", "max_new_tokens": 20},
            },
        }
    },
    "responses": {
        "200": {
            "description": "One entry per input, in order",
            "content": {
                "application/json": {
                    "example": {
                        "model": "coco",
                        "results": [{"caption": "a dog on a beach", "tokens": [64, 3290], "score": -3.2}],
                        "timing": {"queue_ms": 0.4, "total_ms": 61.0},
                    }
                },
                "text/event-stream": {"example": 'event: token\ndata: {"index": 0, "token": 64, ...}\n\n'},
            },
        }
    },
}


def add_captions_route(app: FastAPI) -> None:
    @app.post(
        "/v1/captions",
        summary="Caption images or CLIP embeddings",
        description=DESCRIPTION,
        openapi_extra=OPENAPI,
    )
    async def captions(request: Request):
        state = request.app.state
        rid = request.state.id
        name = "-"
        state.inflight += 1
        try:
            if state.draining:
                raise Refused(503, "the server is shutting down; retry on another instance", retry_after=5)
            fields, inputs = await _read_request(request)
            name, engine = _pick_model(state.engines, fields.pop("model", []))
            options = decoding_options(engine.captioner, fields)
            stream = (
                parse_bool("stream", fields.get("stream", ["false"])[-1]) if "stream" in fields else False
            )
            _check_room(engine, state.limits)  # before decoding images: a full queue answers at once
            job, where, names = await _make_job(engine, options, inputs, rid, state.limits, stream)
            run = _Run(request, engine, job, name, where, names)  # binds job.emit before submit
            _submit(engine, job, state.limits)
        except (Refused, OptionsError) as e:
            state.inflight -= 1
            status = e.status if isinstance(e, Refused) else 422
            extra = e.extra if isinstance(e, Refused) else {}
            _count(state, name, status)
            log.info("request %s model=%s status=%d %s", rid, name, status, e)
            return error_response(status, str(e), **extra)
        if stream:
            return StreamingResponse(
                run.events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        return await run.answer()


async def _read_request(request: Request) -> tuple[dict[str, list[Any]], list[tuple[str | None, Any]]]:
    """(options by name, inputs as (file name, bytes) or ("embeddings", array data))."""
    limits = request.app.state.limits
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise Refused(413, _too_large(limits, f"{int(declared)} bytes declared"))
    chunks, size = [], 0
    async for chunk in request.stream():  # counted as it arrives: a body without a length is cut off too
        size += len(chunk)
        if size > limits.max_body_bytes:
            raise Refused(413, _too_large(limits, f"more than {limits.max_body_bytes} bytes sent"))
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # Starlette's form parser reads the cached body instead of the spent stream
    fields: dict[str, list[Any]] = collections.defaultdict(list)
    for key, value in request.query_params.multi_items():
        fields[key].append(value)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    inputs: list[tuple[str | None, Any]] = []
    if kind == "multipart/form-data" or kind == "application/x-www-form-urlencoded":
        form = await request.form(max_files=limits.max_images + 1, max_fields=100)
        for key, value in form.multi_items():
            if hasattr(value, "read"):
                if key != "image":
                    raise Refused(422, f"files go under the field name 'image', got a file under {key!r}")
                inputs.append((value.filename or None, await value.read()))
            else:
                fields[key].append(value)
    elif kind.startswith("image/"):
        inputs.append((None, body))
    elif kind == "application/json":
        inputs = _json_inputs(body, fields)
    elif body:
        raise Refused(
            400, f"unsupported Content-Type {kind or '(none)'!r}: send multipart/form-data, image/* or JSON"
        )
    if not inputs:
        raise Refused(
            400, "no input: send images under the form field 'image', an image/* body, or embeddings"
        )
    if len(inputs) > limits.max_images and inputs[0][0] != "embeddings":
        raise Refused(
            413, f"{len(inputs)} images in one request; the server's --max-images is {limits.max_images}"
        )
    return dict(fields), inputs


def _json_inputs(body: bytes, fields: dict[str, list[Any]]) -> list[tuple[str | None, Any]]:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Refused(400, f"the JSON body does not parse: {e}") from None
    if not isinstance(data, dict) or "embeddings" not in data:
        raise Refused(400, 'the JSON body must be an object with "embeddings": [[...], ...]')
    for key, value in data.items():
        if key == "embeddings":
            continue
        fields[key].extend(value if key == "stop" and isinstance(value, list) else [value])
    return [("embeddings", data["embeddings"])]


def _too_large(limits, what: str) -> str:
    return f"the body is over the server's limit of {limits.max_body_bytes} bytes ({what}; --max-body-mb)"


def _pick_model(engines: dict[str, Engine], names: list[Any]) -> tuple[str, Engine]:
    if not names:
        if len(engines) == 1:
            return next(iter(engines.items()))
        raise OptionsError(f"model is required when several are served: one of {', '.join(engines)}")
    name = str(names[-1])
    if name not in engines:
        raise OptionsError(f"unknown model {name!r}: this server has {', '.join(engines)} (GET /v1/models)")
    return name, engines[name]


async def _make_job(engine, options, inputs, rid, limits, stream) -> tuple[Job, list, list]:
    """The job, and per input its row in the job or its ImageError, and its file name."""
    captioner = engine.captioner
    deadline = time.monotonic() + limits.request_timeout_s
    if inputs[0][0] == "embeddings":
        embeddings = check_embeddings(captioner, inputs[0][1])
        if len(embeddings) > limits.max_images:
            raise Refused(
                413, f"{len(embeddings)} embeddings in one request; --max-images is {limits.max_images}"
            )
        job = Job(
            options, lambda e: None, embeddings=embeddings, deadline=deadline, stream=stream, request_id=rid
        )
        return job, list(range(len(embeddings))), [None] * len(embeddings)
    names = [n for n, _ in inputs]
    pixels, where = await asyncio.to_thread(load_pixels, captioner, [data for _, data in inputs])
    if pixels is None:
        errors = [_entry_error(e, n) for e, n in zip(where, names, strict=True)]
        raise Refused(400, "no usable image in the request", results=errors)
    job = Job(options, lambda e: None, pixels=pixels, deadline=deadline, stream=stream, request_id=rid)
    return job, where, names


def _submit(engine: Engine, job: Job, limits) -> None:
    _busy_is_503(engine.submit, job, limits=limits)


def _check_room(engine: Engine, limits) -> None:
    _busy_is_503(engine.check_room, limits=limits)


def _busy_is_503(call, *args, limits) -> None:
    try:
        call(*args)
    except QueueFull as e:
        raise Refused(
            503, f"the server is busy: {e}; retry later", retry_after=limits.retry_after_s
        ) from None


def _entry_error(error, filename) -> dict[str, Any]:
    return {"error": str(error), **({"filename": filename} if filename else {})}


def _count(state, model: str, status: int) -> None:
    state.metrics.requests.labels(model, OUTCOMES.get(status, str(status))).inc()


def sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


class ClientGone(Exception):
    pass


class _Run:
    """One accepted request: its events from the decode loop, turned into the answer or a stream."""

    def __init__(
        self, request: Request, engine: Engine, job: Job, model: str, where: list, names: list
    ) -> None:
        self.request, self.engine, self.job, self.model = request, engine, job, model
        self.where, self.names = where, names
        self.rows = {row: i for i, row in enumerate(where) if isinstance(row, int)}  # job row -> input index
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        job.emit = lambda event: loop.call_soon_threadsafe(self.queue.put_nowait, event)
        self.tokens: dict[int, list[int]] = collections.defaultdict(list)
        self.texts: dict[int, str] = collections.defaultdict(str)

    async def answer(self):
        status = 500
        try:
            while True:
                kind, value = await self._next_watching_client()
                if kind == "done":
                    status = 200
                    return JSONResponse(self._response(value))
                if kind == "error":
                    status = value.status
                    return error_response(value.status, str(value))
        except ClientGone:
            status = 499
            return JSONResponse({"error": "client disconnected"}, status_code=499)
        finally:
            self._end(status)

    async def events(self):
        """The SSE stream. A client that leaves closes this generator (Starlette), which cancels the job."""
        status = None  # set by the last event; still None in the end: the client left first
        try:
            for index, row in enumerate(self.where):
                if not isinstance(row, int):
                    yield sse("result", {"index": index, **_entry_error(row, self.names[index])})
            sent: set[int] = set()
            while True:
                kind, value = await self._next()
                if kind == "token":
                    yield sse("token", self._token(*value))
                elif kind == "result":
                    row, generation = value
                    sent.add(row)
                    yield sse("result", {"index": self.rows[row], **self._entry(generation, self.rows[row])})
                elif kind == "done":
                    for row, generation in enumerate(value):
                        if row not in sent:
                            yield sse(
                                "result", {"index": self.rows[row], **self._entry(generation, self.rows[row])}
                            )
                    status = 200
                    yield sse("done", self._response(value))
                    return
                else:
                    status = value.status
                    yield sse("error", {"error": str(value), "status": value.status})
                    return
        finally:
            self._end(499 if status is None else status)

    async def _next_watching_client(self):
        while True:
            try:
                return await asyncio.wait_for(self.queue.get(), min(0.2, self._left()))
            except TimeoutError:
                if self._left() <= 0:
                    return "error", self._deadline_passed()
                if await self.request.is_disconnected():
                    raise ClientGone from None

    async def _next(self):
        """The next event, or the deadline's 504 even while the decode loop is inside a long step
        (it can only drop a request between steps)."""
        try:
            return await asyncio.wait_for(self.queue.get(), self._left())
        except TimeoutError:
            return "error", self._deadline_passed()

    def _left(self) -> float:
        return max(self.job.deadline - time.monotonic(), 0.0)

    def _deadline_passed(self) -> ServeError:
        self.job.cancel("deadline passed")
        self.engine.wake()
        return ServeError(504, "the request ran past its deadline (--request-timeout) and was stopped")

    def _token(self, row: int, token: int) -> dict[str, Any]:
        index = self.rows[row]
        self.tokens[index].append(token)
        text = self.engine.captioner.tokenizer.decode(self.tokens[index], skip_special_tokens=True)
        before = self.texts[index]
        self.texts[index] = text
        delta = text[len(before) :] if text.startswith(before) else text
        return {"index": index, "token": token, "text": text, "delta": delta}

    def _entry(self, generation, index: int) -> dict[str, Any]:
        text = self.engine.captioner.tokenizer.decode(generation.tokens, skip_special_tokens=True)
        name = self.names[index]
        return {
            "caption": text,
            "tokens": generation.tokens,
            "score": generation.score,
            **({"filename": name} if name else {}),
        }

    def _response(self, generations) -> dict[str, Any]:
        results = [
            self._entry(generations[row], i) if isinstance(row, int) else _entry_error(row, self.names[i])
            for i, row in enumerate(self.where)
        ]
        job = self.job
        queue_ms = None if job.admitted is None else round((job.admitted - job.submitted) * 1000, 3)
        total_ms = round((time.monotonic() - self.request.state.arrived) * 1000, 3)
        return {
            "model": self.model,
            "results": results,
            "timing": {"queue_ms": queue_ms, "total_ms": total_ms},
        }

    def _end(self, status: int) -> None:
        """Whatever ended the request: its rows leave the batch, and it is counted and logged once."""
        state, job = self.request.app.state, self.job
        if status != 200:
            job.cancel("client disconnected" if status == 499 else f"ended with status {status}")
            self.engine.wake()
        state.inflight -= 1
        _count(state, self.model, status)
        m, now = state.metrics, time.monotonic()
        m.durations["total"].labels(self.model).observe(now - self.request.state.arrived)
        if job.admitted is not None:
            m.durations["queue"].labels(self.model).observe(job.admitted - job.submitted)
        if job.prefilled is not None and status == 200:
            m.durations["decode"].labels(self.model).observe(now - job.prefilled)
            m.inputs.labels(self.model).inc(job.images)
        m.tokens.labels(self.model).inc(job.tokens_out)
        log.info(
            "request %s model=%s inputs=%d status=%d total_ms=%.1f",
            job.request_id,
            self.model,
            len(self.where),
            status,
            (now - self.request.state.arrived) * 1000,
        )
