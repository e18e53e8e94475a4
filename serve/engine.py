"""One engine per bundle: a bounded waiting queue and a decode loop that owns the decoder.

The loop is TGI's router in miniature. Requests wait in a FIFO of at most ``max_waiting``; when it
is full, ``submit`` raises ``QueueFull`` at once (the HTTP side answers 503 with Retry-After), so
memory stays bounded. Between two decode steps the admission rule lets waiting requests in while
the rows they need fit under ``max_batch_rows`` (a request that does not fit yet waits; nothing
behind it overtakes it). Admitted requests are encoded (image encoder, unless they brought CLIP
embeddings), mapped and prefilled together, and their KV rows join the running batch left-padded
(``serve/batch.py``). Then every request picks its next tokens from its rows' logits; rows that
ended, requests past their deadline and requests whose client left leave the batch before the
next step.

Three admission rules, one loop:

- ``continuous`` (default): admit between two steps (iteration-level batching, as TGI and vLLM
  do). Every admission runs the image encoder, the mapper and a prefill while the running rows
  wait, and those graphs cost less per image in a larger batch; so, as TGI's router does
  (``waiting_served_ratio``, ``max_waiting_tokens``), while a batch runs, waiting requests join
  only once the rows they can take reach ``waiting_served_ratio`` x the running rows, or once the
  oldest has waited ``max_waiting_steps`` steps. Ratio 0 admits at every step.
- ``static``: admit only into an empty batch, after waiting up to ``batch_wait_ms`` for more
  requests; the batch then runs to completion (Ray Serve's ``@serve.batch``, Triton's dynamic
  batcher).
- ``none``: one request at a time (a plain web wrapper around ``Captioner``).

A failure inside a step fails that step's requests with a 500 and one log line, and the loop goes
on with an empty batch.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
from clipcap.runtime import Captioner
from clipcap.runtime.decoding import log_probs
from clipcap.serve.batch import KVBatch
from clipcap.serve.jobs import Job, ServeError

from clipcap.errors import OptionsError

log = logging.getLogger("clipcap.serve")

POLICIES = ("continuous", "static", "none")


class QueueFull(Exception):
    """More requests wait than ``max_waiting`` allows (or the engine is shutting down)."""


class Observer:
    """What the engine reports as it runs; the app's metrics implement it. Called from the loop."""

    def queue_size(self, n: int) -> None: ...
    def batch_rows(self, n: int) -> None: ...
    def step(self, rows: int, seconds: float) -> None: ...
    def prefill(self, jobs: int, seconds: float) -> None: ...


@dataclass(frozen=True)
class EngineConfig:
    batching: str = "continuous"
    max_batch_rows: int = 32
    max_waiting: int = 256
    batch_wait_ms: float = 5.0
    waiting_served_ratio: float = 0.0
    max_waiting_steps: int = 8

    def __post_init__(self) -> None:
        if self.batching not in POLICIES:
            raise OptionsError(f"batching must be one of {', '.join(POLICIES)}, got {self.batching!r}")
        if self.max_batch_rows < 1:
            raise OptionsError(f"max_batch_rows must be >= 1, got {self.max_batch_rows}")
        if self.max_waiting < 1:
            raise OptionsError(f"max_waiting must be >= 1, got {self.max_waiting}")
        if self.batch_wait_ms < 0:
            raise OptionsError(f"batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        if self.waiting_served_ratio < 0:
            raise OptionsError(f"waiting_served_ratio must be >= 0, got {self.waiting_served_ratio}")
        if self.max_waiting_steps < 1:
            raise OptionsError(f"max_waiting_steps must be >= 1, got {self.max_waiting_steps}")


class Engine:
    """Serve one bundle's captioner. ``start()`` runs the loop in a thread; ``submit`` from any thread."""

    def __init__(
        self, captioner: Captioner, config: EngineConfig | None = None, observer: Observer | None = None
    ) -> None:
        self.captioner = captioner
        self.config = config or EngineConfig()
        self.observer = observer or Observer()
        self.batch = KVBatch(captioner.sessions["decoder"], captioner.shape)
        self.waiting: collections.deque[Job] = collections.deque()
        self.running: list[Job] = []
        self.accepting = True
        self._wake = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._steps_waited = 0  # decode steps since the oldest waiting request could have joined

    # --- the API the HTTP side uses (any thread) ----------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="clipcap-decode", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue a request, or raise QueueFull at once; OptionsError if it can never fit a batch."""
        if job.max_rows > self.config.max_batch_rows:
            raise OptionsError(
                f"this request needs {job.max_rows} batch rows ({job.images} inputs"
                + (f" x beam_size {job.options.beam_size}" if job.options.strategy == "beam" else "")
                + f"), more than the server's --max-batch-rows {self.config.max_batch_rows}; "
                "send fewer images or a smaller beam_size"
            )
        with self._wake:
            self._check_room()
            self.waiting.append(job)
            self._wake.notify()

    def check_room(self) -> None:
        """Raise QueueFull now if a submit would: the HTTP side asks before it decodes a request's
        images, so an overloaded server refuses without doing that work first."""
        with self._wake:
            self._check_room()

    def _check_room(self) -> None:
        if not self.accepting:
            raise QueueFull("the server is shutting down")
        if len(self.waiting) >= self.config.max_waiting:
            raise QueueFull(f"{len(self.waiting)} requests are waiting (the server's --max-waiting)")

    def wake(self) -> None:
        """Let the loop notice a cancellation now rather than at its next step."""
        with self._wake:
            self._wake.notify()

    def idle(self) -> bool:
        with self._wake:
            return not self.waiting and not self.running

    def stop(self, timeout: float | None = None) -> None:
        """End the loop; requests still queued or running get 503."""
        with self._wake:
            self.accepting = False
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def rows(self) -> int:
        return sum(job.decoder.rows_needed for job in self.running if job.decoder)

    # --- the loop -----------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            admitted = self._admit()
            if admitted is None:
                break
            self._drop_left()
            if admitted:
                self._run_guarded(self._prefill, admitted, "prefill")
            if self.running:
                self._run_guarded(self._step, list(self.running), "decode step")
            self.observer.batch_rows(self.batch.rows)
        for job in [*self.running, *self.waiting]:
            self._finish(job, ServeError(503, "the server shut down before this request finished"))
        self.running, self.waiting = [], collections.deque()

    def _admit(self) -> list[Job] | None:
        """The admission rule: the requests that join the batch before the next step (None: stop)."""
        policy = self.config.batching
        with self._wake:
            while not self._stop and not self.running and not self.waiting:
                self._wake.wait()
            if self._stop:
                return None
            if policy != "continuous" and self.running:
                return []
            if policy == "continuous" and self.running and not self._worth_admitting():
                self._steps_waited += 1
                return []
            self._steps_waited = 0
            if policy == "static" and self.config.batch_wait_ms > 0:
                self._collect()
            room = self.config.max_batch_rows - self.rows
            admitted = []
            while self.waiting and self.waiting[0].max_rows <= room:
                if policy == "none" and admitted:
                    break
                job = self.waiting.popleft()
                room -= job.max_rows
                admitted.append(job)
            self.observer.queue_size(len(self.waiting))
            return admitted

    def _worth_admitting(self) -> bool:
        """Continuous batching with a running batch: admit now, or let the free rows and the
        waiting group grow? (Called holding the lock.)"""
        ratio = self.config.waiting_served_ratio
        if not self.waiting or ratio == 0 or self._steps_waited + 1 >= self.config.max_waiting_steps:
            return True
        room = self.config.max_batch_rows - self.rows
        admissible = min(room, sum(j.max_rows for j in self.waiting))
        return admissible >= ratio * self.rows

    def _collect(self) -> None:
        """Static batching: wait up to batch_wait_ms after the first request for the batch to fill
        (called holding the lock; the wait releases it so submit can add)."""
        end = time.monotonic() + self.config.batch_wait_ms / 1000
        while not self._stop and sum(j.max_rows for j in self.waiting) < self.config.max_batch_rows:
            left = end - time.monotonic()
            if left <= 0:
                break
            self._wake.wait(left)

    def _drop_left(self) -> None:
        """Requests past their deadline or cancelled leave, waiting or running, before the next step."""
        now = time.monotonic()
        with self._wake:
            for job in [j for j in self.waiting if j.cancelled or now > j.deadline]:
                self.waiting.remove(job)
                self._finish(job, _why_gone(job))
        gone = [j for j in self.running if j.cancelled or now > j.deadline]
        if gone:
            self._leave(gone)
            for job in gone:
                self._finish(job, _why_gone(job))

    def _run_guarded(self, work, jobs: list[Job], what: str) -> None:
        """A failure fails these requests (and resets the batch they share), never the loop."""
        try:
            work(jobs)
        except Exception as e:
            log.error(
                "%s failed for %d requests (%s): %s: %s",
                what,
                len(jobs),
                ",".join(j.request_id for j in jobs),
                type(e).__name__,
                e,
            )
            owned = sum(len(j.rows) for j in self.running if j not in jobs)
            if what == "prefill" and self.batch.rows == owned:
                # The running batch is untouched (the failure came before the new rows joined):
                # only the admitted requests fail.
                failed = set(jobs)
                self.running = [j for j in self.running if j not in failed]
            else:  # the shared cache may be half-updated: every request in it fails
                failed = set(jobs) | set(self.running)
                self.running = []
                self.batch.clear()
            for job in failed:
                self._finish(job, ServeError(500, f"the {what} failed: {type(e).__name__}: {e}"))

    def _prefill(self, jobs: list[Job]) -> None:
        start = time.monotonic()
        captioner = self.captioner
        embeds = self._embed(jobs)
        prefix = captioner.sessions["mapper"].run(None, {"image_embeds": embeds})[0]
        first = self.batch.rows
        logits = self.batch.prefill(prefix)
        offset = 0
        for job in jobs:
            job.admitted, job.prefilled = start, time.monotonic()
            job.rows = np.arange(first + offset, first + offset + job.images)
            job.logits = logits[offset : offset + job.images]
            offset += job.images
            job.start()
            self.running.append(job)
        self.observer.prefill(len(jobs), time.monotonic() - start)

    def _embed(self, jobs: list[Job]) -> np.ndarray:
        """CLIP embeddings [rows, D] of these requests, in order: one image-encoder run for all
        the images among them; requests with embeddings skip the encoder."""
        pixels = [j.pixels for j in jobs if j.pixels is not None]
        encoded = iter(())
        if pixels:
            session = self.captioner.sessions["image_encoder"]
            encoded = iter(session.run(None, {"pixel_values": np.concatenate(pixels)})[0])
        parts = []
        for job in jobs:
            own = [next(encoded) for _ in range(job.images)] if job.pixels is not None else None
            parts.append(job.embeddings if own is None else np.stack(own))
        return np.concatenate(parts).astype(np.float32)

    def _step(self, jobs: list[Job]) -> None:
        """Every request picks its tokens; ended rows leave; one decoder step for the rest."""
        start = time.monotonic()
        chosen = self._choose(jobs, {job: job.logits for job in jobs})
        gather, tokens, still = [], [], []
        for job in jobs:
            picked = chosen[job]
            if picked is None:
                self._finish(job, None)
                continue
            keep, next_tokens = picked
            gather.append(job.rows[keep])
            tokens.append(next_tokens)
            still.append(job)
        self._regather(still, gather)
        if not still:
            return
        out = self.batch.step(np.concatenate(tokens))
        for job in still:
            job.logits = out[job.rows]
        self.observer.step(self.batch.rows, time.monotonic() - start)

    def _choose(self, jobs: list[Job], logits: dict[Job, np.ndarray]):
        """Each request's (kept rows, tokens) or None. Greedy and sampling requests with equal
        options at the same step share one log_probs call (it works row by row, so grouping does
        not change a value); beam search computes its own."""
        groups: dict[tuple, list[Job]] = collections.defaultdict(list)
        chosen = {}
        for job in jobs:
            key = job.decoder.group()
            if key is None:
                chosen[job] = job.decoder.advance(logits[job])
            else:
                groups[key].append(job)
        for (options, step), members in groups.items():
            lp = log_probs(np.concatenate([logits[j] for j in members]), options, step)
            offset = 0
            for job in members:
                n = len(logits[job])
                chosen[job] = job.decoder.advance(lp[offset : offset + n])
                offset += n
        return chosen

    def _leave(self, jobs: list[Job]) -> None:
        """Take these requests' rows out of the batch now."""
        keep = [j for j in self.running if j not in jobs]
        self._regather(keep, [j.rows for j in keep])

    def _regather(self, jobs: list[Job], parts: list[np.ndarray]) -> None:
        """The batch becomes ``parts`` (each request's rows, in order), one gather for all; the
        gather is the identity for requests whose rows neither ended nor moved."""
        self.batch.select(np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64))
        offset = 0
        for job, part in zip(jobs, parts, strict=True):
            job.rows = np.arange(offset, offset + len(part))
            offset += len(part)
        self.running = list(jobs)

    def _finish(self, job: Job, error: ServeError | None) -> None:
        if job.decoder is not None:
            job.decoder.close()
        if error is not None:
            job.emit(("error", error))
        else:
            job.emit(("done", job.decoder.results()))


def _why_gone(job: Job) -> ServeError:
    if job.cancelled:
        return ServeError(499, f"the request was cancelled: {job.cancelled}")
    return ServeError(504, "the request ran past its deadline (--request-timeout) and was stopped")


__all__ = ["POLICIES", "Engine", "EngineConfig", "Observer", "QueueFull"]
