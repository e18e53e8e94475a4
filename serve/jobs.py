"""One request inside the engine: its inputs, its options, and the decoding state of its rows.

A request's rows are decoded exactly as ``clipcap.runtime.decoding.decode`` decodes a call of
``Captioner``: the same ``log_probs``, the same token picker (``selector``: one generator per
image, seeded ``[seed, b]`` with b the image's index in the request), the same stop rule. Only
the batch around the rows differs, and padding does not change their logits.

Greedy and sampling (``PathDecoder``) step here, in the decode loop's thread. Beam search
(``BeamDecoder``) runs the runtime's own ``BeamSearch`` in a thread of its own against a stand-in
``Inference`` that hands each step's logits in and the beams' gather and tokens out, so the beam
bookkeeping exists once; the engine applies the gather to the request's rows of the shared batch.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from clipcap.runtime.decoding import BeamSearch, Generation, log_probs, selector

from clipcap.options import DecodingOptions


class Cancelled(Exception):
    """The request left (deadline, client gone, shutdown): its beam thread unwinds with this."""


class ServeError(Exception):
    """A request's end with an HTTP status: 500 step failure, 503 shutting down, 504 deadline."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# ("token", (image, token id)) and ("result", (image, Generation)) when streaming, then
# ("done", [Generation per image]) or ("error", ServeError)
Event = tuple[str, Any]


@dataclass(eq=False)
class Job:
    """A submitted request. ``pixels`` [n, 3, S, S] or ``embeddings`` [n, D]; events go to ``emit``
    from the decode loop's thread (the HTTP side bridges them into its event loop)."""

    options: DecodingOptions
    emit: Callable[[Event], None]
    pixels: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    deadline: float = float("inf")  # time.monotonic()
    stream: bool = False
    request_id: str = "-"
    submitted: float = field(default_factory=time.monotonic)
    admitted: float | None = None
    prefilled: float | None = None
    cancelled: str | None = None  # why, once cancel() was called (any thread)
    decoder: PathDecoder | BeamDecoder | None = None
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # batch rows it owns
    logits: np.ndarray | None = None  # its rows' logits from the last prefill or step, not yet used
    tokens_out: int = 0
    seed_index: int = 0  # sampling: image b draws from a generator seeded [seed, seed_index + b]

    @property
    def images(self) -> int:
        data = self.pixels if self.pixels is not None else self.embeddings
        return 0 if data is None else len(data)

    @property
    def max_rows(self) -> int:
        """Rows it may hold at once: one per image, beam_size per image for beam search."""
        return self.images * (self.options.beam_size if self.options.strategy == "beam" else 1)

    def cancel(self, why: str) -> None:
        self.cancelled = self.cancelled or why

    def start(self) -> None:
        self.decoder = (BeamDecoder if self.options.strategy == "beam" else PathDecoder)(self)


class PathDecoder:
    """Greedy or sampling for one request's images: ``decode``'s one-path loop, a step at a time."""

    def __init__(self, job: Job) -> None:
        self.job, self.options = job, job.options
        n = job.images
        self.select = selector(self.options, n, job.seed_index)
        self.stops = frozenset(self.options.stop_token_ids)
        self.tokens: list[list[int]] = [[] for _ in range(n)]
        self.scores = np.zeros(n, dtype=np.float64)
        self.alive = np.arange(n)  # the image of each of its rows
        self.step = 0

    @property
    def rows_needed(self) -> int:
        return len(self.alive)

    def group(self) -> tuple[DecodingOptions, int]:
        """Requests with equal options share one log_probs call when it treats them alike: the
        step matters only while it is below min_new_tokens (stop tokens suppressed), so every
        later step is one group, whenever each request joined."""
        return self.options, min(self.step, self.options.min_new_tokens)

    def advance(self, logprobs: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Pick the next tokens from this request's log-probs. Returns (rows kept, their tokens),
        or None when every caption has ended."""
        next_tokens = self.select(logprobs, self.alive)
        self.scores[self.alive] += logprobs[np.arange(len(self.alive)), next_tokens].astype(np.float64)
        for b, t in zip(self.alive, next_tokens, strict=True):
            self.tokens[b].append(int(t))
            if self.job.stream:
                self.job.emit(("token", (int(b), int(t))))
        self.job.tokens_out += len(next_tokens)
        self.step += 1
        # A set lookup per row: a request holds a few rows, and np.isin's setup costs more.
        ended = [int(t) in self.stops for t in next_tokens]
        finished = np.array(ended, dtype=bool) | (self.step == self.options.max_new_tokens)
        if self.job.stream:
            for b in self.alive[finished]:
                self.job.emit(("result", (int(b), Generation(self.tokens[b], float(self.scores[b])))))
        keep = np.flatnonzero(~finished)
        self.alive = self.alive[keep]
        if not len(keep):
            return None
        return keep, next_tokens[keep]

    def results(self) -> list[Generation]:
        return [Generation(t, float(s)) for t, s in zip(self.tokens, self.scores, strict=True)]

    def close(self) -> None:
        pass


class _Handoff:
    """The ``Inference`` the beam thread drives: logits come in from the engine, gathers and
    tokens go out to it."""

    def __init__(self) -> None:
        self.inbox: queue.Queue = queue.Queue(maxsize=1)
        self.outbox: queue.Queue = queue.Queue(maxsize=1)
        self.gather: np.ndarray | None = None

    def _receive(self) -> np.ndarray:
        logits = self.inbox.get()
        if logits is None:
            raise Cancelled
        return logits

    def prefill(self, prefix_embeds: np.ndarray) -> np.ndarray:
        return self._receive()

    def select(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        self.gather = rows if self.gather is None else self.gather[rows]

    def step(self, tokens: np.ndarray) -> np.ndarray:
        gather, self.gather = self.gather, None
        self.outbox.put(("step", (gather, np.asarray(tokens, dtype=np.int64))))
        return self._receive()


class BeamDecoder:
    """The runtime's ``BeamSearch`` for one request, in its own thread, one engine step at a time."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.handoff = _Handoff()
        self.generations: list[Generation] | None = None
        self.rows_needed = job.max_rows
        self.thread = threading.Thread(target=self._run, name=f"beam-{job.request_id}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            placeholder = np.zeros((self.job.images, 0, 0), dtype=np.float32)  # run() reads only its length
            out = BeamSearch(self.job.options).run(self.handoff, placeholder)
            self.handoff.outbox.put(("done", out))
        except Cancelled:
            pass
        except Exception as e:  # handed to the engine, which fails this request alone
            self.handoff.outbox.put(("error", e))

    def group(self) -> None:
        return None  # computes its own log-probs

    def advance(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Hand the logits of this request's rows to the search; its answer is the gather of its
        rows (beams moving, images finishing) and their next tokens, or None when it is done."""
        self.handoff.inbox.put(logits)
        kind, value = self.handoff.outbox.get()
        if kind == "error":
            raise value
        if kind == "done":
            self.generations = value
            return None
        gather, tokens = value
        self.rows_needed = len(tokens)
        self.job.tokens_out += len(tokens)
        return (np.arange(len(logits)) if gather is None else gather), tokens

    def results(self) -> list[Generation]:
        assert self.generations is not None
        return self.generations

    def close(self) -> None:
        """Unblock and end the search thread if it is still waiting for logits."""
        if self.thread.is_alive():
            with contextlib.suppress(queue.Full):
                self.handoff.inbox.put_nowait(None)


__all__ = ["BeamDecoder", "Cancelled", "Event", "Job", "PathDecoder", "ServeError", "log_probs"]
