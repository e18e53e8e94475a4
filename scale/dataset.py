"""Caption a dataset on one machine: streamed, pipelined, in order, in constant memory.

    from clipcap.runtime import Captioner
    from clipcap.scale.dataset import caption_dataset
    from clipcap.scale.sources import iter_items

    captioner = Captioner("coco-bundle")
    for result in caption_dataset(captioner, iter_items(["photos/"])):
        print(result.key, result.caption.text if result.ok else result.error)

Three stages run at once:

1. the caller's thread walks the items (``clipcap.scale.sources``) and hands each to
2. a small pool of loader threads, which read, decode and preprocess the image (Pillow and numpy
   release the GIL for most of it), and submit its pixels to
3. the serving scheduler (``clipcap.serve.engine.Engine``, continuous batching): one decode loop
   owns the graphs; an image joins the running batch between two decode steps as soon as a row is
   free, so rows whose captions end early are refilled instead of idling until the longest caption
   of a fixed batch ends, which is what ``Captioner.caption`` does.

At most ``window`` items are between the first stage and the caller at any time (loading,
waiting, decoding, or done but waiting for an earlier item), so memory does not grow with the
dataset and results come back in input order. A bad image is a result with its error; it never
stops the job.

Exactness: each image is its own request, decoded with the same ``log_probs``, picker and stop
rule as ``Captioner.caption``; greedy and beam captions equal its captions token for token.
Seeded sampling: item i (counted over every item, skipped ones included) draws from a generator
seeded ``[seed, i % max_batch_rows]``, the one ``Captioner.caption(..., batch_size=max_batch_rows)``
gives it when no image before it in its chunk of the list failed to load; so a run and its
``--resume`` sample alike, whatever shares the batch.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from clipcap.runtime import Caption, Captioner
from clipcap.runtime.images import load_image
from clipcap.runtime.preprocess import preprocess
from clipcap.scale.output import result_row
from clipcap.scale.sources import Item
from clipcap.serve.engine import Engine, EngineConfig
from clipcap.serve.jobs import Job

from clipcap.errors import ImageError, OptionsError
from clipcap.options import DecodingOptions

__all__ = ["DatasetResult", "caption_dataset"]


@dataclass(frozen=True)
class DatasetResult:
    """One item's outcome: its caption, or the error that kept it from one."""

    key: str
    caption: Caption | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.caption is not None

    def row(self) -> dict:
        """The JSON line ``clipcap caption --json`` prints for it."""
        return result_row(self.key, self.caption, self.error)


def caption_dataset(
    captioner: Captioner,
    items: Iterable[Item | str],
    options: DecodingOptions | None = None,
    *,
    skip: Iterable[str] = (),
    workers: int = 2,
    max_batch_rows: int = 16,
    window: int | None = None,
    waiting_served_ratio: float = 0.5,
    max_waiting_steps: int = 8,
    **overrides: Any,
) -> Iterator[DatasetResult]:
    """Caption every item (an :class:`Item` or a plain path), yielding results in input order.

    Args:
        skip: keys already done (``--resume``): not loaded, not yielded.
        workers: loader threads (image reading, decoding, preprocessing).
        max_batch_rows: rows the decoder runs at once (a beam-search image takes beam_size).
        window: items in flight at most (default: 4 x max_batch_rows); bounds memory.
        waiting_served_ratio, max_waiting_steps: the engine's admission grouping (see
            ``clipcap.serve.engine``). A dataset wants throughput, not a short first token: by
            default images join a running batch once they can take half as many rows as are
            running (or after 8 steps), so the encoder, mapper and prefill run on groups.
        overrides: DecodingOptions fields over ``options`` (or the bundle's defaults), as for
            ``Captioner.caption``.

    The generator owns a decode loop while it runs; closing it (``break`` in a for loop, an
    exception, Ctrl-C) stops the loop and the loaders, dropping what was in flight.
    """
    options = captioner.options(options, **overrides)
    rows_per_image = options.beam_size if options.strategy == "beam" else 1
    if workers < 1:
        raise OptionsError(f"workers must be >= 1, got {workers}")
    if max_batch_rows < rows_per_image:
        raise OptionsError(
            f"max_batch_rows ({max_batch_rows}) must hold one image's {rows_per_image} beams; "
            "raise it or lower beam_size"
        )
    window = 4 * max_batch_rows if window is None else window
    if window < 1:
        raise OptionsError(f"window must be >= 1, got {window}")
    done = frozenset(skip)
    config = EngineConfig(
        "continuous",
        max_batch_rows,
        max_waiting=window,
        waiting_served_ratio=waiting_served_ratio,
        max_waiting_steps=max_waiting_steps,
    )
    engine = Engine(captioner, config)
    engine.start()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="clipcap-load")
    pending: collections.deque[Future] = collections.deque()
    try:
        for position, item in enumerate(_as_items(items)):
            if item.key in done:
                continue
            while len(pending) >= window:
                yield pending.popleft().result()
            seed_index = position % max_batch_rows
            pending.append(_start(item, seed_index, captioner, options, engine, pool))
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        engine.stop()


def _as_items(items: Iterable[Item | str]) -> Iterator[Item]:
    for item in items:
        yield item if isinstance(item, Item) else Item(str(item), source=str(item))


def _start(
    item: Item, seed_index: int, captioner: Captioner, options: DecodingOptions, engine: Engine, pool
) -> Future:
    """The item's future result: loaded by the pool, then decoded by the engine."""
    result: Future = Future()
    if item.error is not None:
        result.set_result(DatasetResult(item.key, error=item.error))
        return result

    def emit(event) -> None:  # the decode loop's thread
        kind, value = event
        if kind == "done":
            g = value[0]
            text = captioner.tokenizer.decode(g.tokens, skip_special_tokens=True)
            _settle(result, DatasetResult(item.key, Caption(text, g.tokens, g.score)))
        elif kind == "error":
            _settle(result, DatasetResult(item.key, error=f"{item.key}: {value}"))

    def load() -> None:  # a loader thread
        try:
            pixels = preprocess([load_image(item.source)], captioner.preprocessing)
        except ImageError as e:
            _settle(result, DatasetResult(item.key, error=str(e)))
            return
        job = Job(options, emit, pixels=pixels, request_id=item.key, seed_index=seed_index)
        engine.submit(job)  # the window keeps its queue from filling; a stopping one refuses

    def load_guarded() -> None:
        try:
            load()
        except BaseException as e:  # never leave the caller waiting on a future nobody sets
            _settle(result, DatasetResult(item.key, error=f"{item.key}: {type(e).__name__}: {e}"))

    pool.submit(load_guarded)
    return result


def _settle(result: Future, value: DatasetResult) -> None:
    """Set a result unless the job was closed first (its future cancelled: nobody waits for it)."""
    with contextlib.suppress(InvalidStateError):
        result.set_result(value)
