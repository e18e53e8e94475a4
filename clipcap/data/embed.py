"""`clipcap embed`: the CLIP image embeddings of a captioned image set, written as an embedding set.

:func:`embed_dataset` loads each example's image with :func:`clipcap.runtime.images.load_image`
and preprocesses it with :func:`clipcap.runtime.preprocess.preprocess` under the encoder's own
:class:`~clipcap.config.Preprocessing`: exactly what the ONNX runtime does to an image before its
``image_encoder.onnx``, so a mapper trained on these embeddings sees at training time what it will
see at inference. The result is written with :func:`clipcap.data.embeddings.write_embeddings`.

A missing image file (reason "missing") or one that cannot be decoded (reason "unreadable": corrupt,
truncated, not an image, too large) is skipped, listed in ``skipped.jsonl`` beside the set and
counted in the summary and in ``meta.json``; it never stops the run.

Resuming: the examples are embedded in shards of ``shard_size``; each finished shard is written
atomically to ``OUT/.partial/`` (``shard-000042.safetensors`` with its embeddings, then
``shard-000042.json`` with its kept records and skipped entries, whose presence marks the shard
done). ``.partial/plan.json`` records a fingerprint of the inputs (the examples' paths, ids, splits
and captions, the CLIP spec, the shard size). Running again with the same inputs skips the finished
shards; with different inputs it refuses (``force=True`` starts over). When every shard is done they
are merged into the final files and ``.partial/`` is removed.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipcap.config import ClipSpec, Preprocessing
from clipcap.data.datasets import Example
from clipcap.data.embed_shards import (  # the resumable state in OUT/.partial; names re-exported
    PARTIAL_DIR,
    PLAN_FILE,  # noqa: F401
    PLAN_FORMAT,  # noqa: F401
    PLAN_VERSION,  # noqa: F401
    SKIPPED_FILE,
    _discard,
    _merge_shards,
    _plan,
    _read_shard_entries,
    _shard_path,
    _start_or_resume,
    _write_shard,
    _write_text,
)
from clipcap.data.embeddings import META_FILE, write_embeddings
from clipcap.errors import OptionsError, require
from clipcap.models.clip import ImageEncoder
from clipcap.models.device import torch_device
from clipcap.runtime.images import ImageError, load_image
from clipcap.runtime.preprocess import preprocess

torch = require("torch", "export")

__all__ = ["EmbedSummary", "check_destination", "embed_dataset"]


# Why an image was skipped.
MISSING = "missing"
UNREADABLE = "unreadable"


@dataclass
class EmbedSummary:
    """What a finished :func:`embed_dataset` did."""

    count: int  # images embedded (rows of the set)
    skipped: dict[str, int]  # reason -> images skipped
    seconds: float  # this run's wall time (not an earlier, interrupted run's)
    out_dir: Path
    resumed: int = 0  # examples whose shards an earlier, interrupted run had finished

    @property
    def skipped_count(self) -> int:
        return sum(self.skipped.values())

    @property
    def skipped_file(self) -> Path:
        return self.out_dir / SKIPPED_FILE


def embed_dataset(
    examples: Sequence[Example],
    encoder: ImageEncoder,
    out_dir: str | Path,
    *,
    batch_size: int = 64,
    shard_size: int = 1024,
    device: str = "auto",
    progress: bool = True,
    source: dict[str, Any] | None = None,
    force: bool = False,
    workers: int | None = None,
) -> EmbedSummary:
    """Embed every example's image with ``encoder`` and write the embedding set to ``out_dir``.

    Args:
        examples: the images and their captions (:func:`clipcap.data.datasets.read_dataset`).
        encoder: the CLIP image encoder (:mod:`clipcap.models.clip`); moved to ``device``.
        out_dir: the embedding-set directory (made if missing).
        batch_size: images per forward pass.
        shard_size: examples per resumable unit of work (see the module docstring).
        device: the torch device to run CLIP on: "auto" (CUDA when available), "cpu", "cuda", "cuda:1".
        progress: show a tqdm progress bar (on a terminal).
        source: recorded as the set's ``meta.json`` "source" (what dataset, which options).
        force: start over: discard an interrupted run's shards and replace a complete set.
        workers: threads loading and preprocessing images while CLIP runs (default: up to 8;
            0: load in this thread). The results do not depend on it.

    Returns:
        An :class:`EmbedSummary`.

    Raises:
        OptionsError: no examples; bad sizes; an unusable device; ``out_dir`` already holds a complete
            set, or an interrupted run for other inputs (unless ``force``); a damaged shard.
        KeyboardInterrupt: interrupted; the finished shards stay, and running the same call (the
            same command) again resumes. The message says so.
    """
    started = time.perf_counter()
    examples = list(examples)
    workers = _checked_sizes(examples, batch_size, shard_size, workers)

    out_dir = Path(out_dir)
    torch_device = check_destination(out_dir, device=device, force=force)  # before --force removes anything
    if force:
        _discard(out_dir)
    partial = out_dir / PARTIAL_DIR
    _start_or_resume(partial, _plan(examples, encoder.spec, shard_size))

    shards = [examples[i : i + shard_size] for i in range(0, len(examples), shard_size)]
    done = {k for k in range(len(shards)) if _shard_path(partial, k, ".json").is_file()}
    resumed = sum(len(shards[k]) for k in done)
    skipped_before = sum(len(_read_shard_entries(partial, k)[1]) for k in done)

    encoder.to(torch_device)
    bar = _Progress(len(examples), resumed, skipped_before, progress)
    _embed_shards_left(shards, done, partial, encoder, torch_device, batch_size, workers, bar)

    embeds, records, skipped = _merge_shards(partial, len(shards), encoder.spec.embed_dim)
    counts = _write_set(out_dir, embeds, records, skipped, encoder.spec, source)
    shutil.rmtree(partial)
    return EmbedSummary(len(records), counts, time.perf_counter() - started, out_dir, resumed)


def _checked_sizes(examples: list[Example], batch_size: int, shard_size: int, workers: int | None) -> int:
    """Refuse an empty set and bad sizes; returns the number of loader threads."""
    if not examples:
        raise OptionsError("no examples to embed: the dataset has no usable rows")
    for name, value in (("batch_size", batch_size), ("shard_size", shard_size)):
        if not isinstance(value, int) or value < 1:
            raise OptionsError(f"{name} must be a whole number >= 1, got {value!r}")
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    if workers < 0:
        raise OptionsError(f"workers must be >= 0, got {workers}")
    return workers


def _embed_shards_left(
    shards: list[list[Example]],
    done: set[int],
    partial: Path,
    encoder: ImageEncoder,
    torch_device: torch.device,
    batch_size: int,
    workers: int,
    bar: _Progress,
) -> None:
    """Embed and save every shard not yet done; an interrupt says how much is saved and how to resume."""
    prepare = functools.partial(_prepare, spec=encoder.spec.preprocessing)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="clipcap-embed") if workers else None
    try:
        for k, shard in enumerate(shards):
            if k in done:
                continue
            embeds, records, skipped = _embed_shard(
                shard, encoder, torch_device, batch_size, prepare, pool, bar
            )
            _write_shard(partial, k, embeds, records, skipped)
            done.add(k)
    except KeyboardInterrupt:
        saved = sum(len(shards[k]) for k in done)
        total = sum(len(shard) for shard in shards)
        raise KeyboardInterrupt(
            f"interrupted: {len(done)} of {len(shards)} shards ({saved} of {total} images) are saved "
            f"in {partial}; run the same command again to resume"
        ) from None
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _write_set(
    out_dir: Path,
    embeds: np.ndarray,
    records: list[dict[str, Any]],
    skipped: list[dict[str, Any]],
    clip: ClipSpec,
    source: dict[str, Any] | None,
) -> dict[str, int]:
    """skipped.jsonl and the embedding set; returns the skip counts by reason."""
    counts: dict[str, int] = {}
    for entry in skipped:
        counts[entry["reason"]] = counts.get(entry["reason"], 0) + 1
    counts = dict(sorted(counts.items()))
    _write_text(out_dir / SKIPPED_FILE, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in skipped))
    write_embeddings(out_dir, embeds, records, clip=clip, source=source, skipped=counts)
    return counts


def check_destination(out_dir: str | Path, *, device: str = "auto", force: bool = False) -> torch.device:
    """The checks :func:`embed_dataset` starts with, for a caller to make before loading CLIP.

    Returns the torch device. Raises OptionsError: ``out_dir`` is a file, or holds a complete set
    and ``force`` is off; ``device`` is not a usable torch device.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OptionsError(f"{out_dir}: exists and is not a directory; pass another --out")
    if not force and (out_dir / META_FILE).exists():
        raise OptionsError(
            f"{out_dir}: already holds a complete embedding set; pass --force to compute it again "
            "(it replaces the set), or another --out"
        )
    return torch_device(device)


# --------------------------------------------------------------------------------------------------
# One shard


@dataclass(frozen=True)
class _Skipped:
    reason: str
    message: str


def _prepare(example: Example, spec: Preprocessing) -> np.ndarray | _Skipped:
    """An example's preprocessed pixels [3, S, S], or why it is skipped. Safe to call from threads."""
    try:
        # Each image alone: one bad image must not cost its batch.
        return preprocess([load_image(example.image)], spec)[0]
    except ImageError as e:
        # os.path.exists, not Path.exists: False (not an exception) for a directory we may not enter.
        return _Skipped(UNREADABLE if os.path.exists(example.image) else MISSING, str(e))


def _embed_shard(
    shard: list[Example],
    encoder: ImageEncoder,
    device: torch.device,
    batch_size: int,
    prepare: Callable[[Example], np.ndarray | _Skipped],
    pool: ThreadPoolExecutor | None,
    bar: _Progress,
) -> tuple[np.ndarray, list[dict[str, Any]], list[dict[str, Any]]]:
    """(embeddings [n, D] of the kept images, their records, the skipped entries) of one shard."""
    embeds: list[np.ndarray] = []
    records: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for batch, prepared in _prepared_batches(shard, batch_size, prepare, pool):
        pixels = []
        skipped_before = len(skipped)
        for example, item in zip(batch, prepared, strict=True):
            if isinstance(item, _Skipped):
                skipped.append(
                    {
                        "image": str(Path(example.image).absolute()),
                        "image_id": example.image_id,
                        "reason": item.reason,
                        "message": item.message,
                    }
                )
                continue
            pixels.append(item)
            records.append(_record(example))
        if pixels:
            with torch.inference_mode():
                batch_embeds = encoder(torch.from_numpy(np.stack(pixels)).to(device))
            embeds.append(batch_embeds.float().cpu().numpy())
        bar.advance(len(batch), skipped=len(skipped) - skipped_before)
    if not embeds:
        return np.zeros((0, encoder.embed_dim), np.float32), records, skipped
    return np.concatenate(embeds), records, skipped


def _prepared_batches(
    examples: list[Example],
    batch_size: int,
    prepare: Callable[[Example], np.ndarray | _Skipped],
    pool: ThreadPoolExecutor | None,
) -> Iterator[tuple[list[Example], list[np.ndarray | _Skipped]]]:
    """The examples in batches with their prepared images; with a pool, the next batch loads meanwhile."""
    batches = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
    if pool is None:
        for batch in batches:
            yield batch, [prepare(e) for e in batch]
        return
    ahead: list[Future] = [pool.submit(prepare, e) for e in batches[0]] if batches else []
    for i, batch in enumerate(batches):
        current = ahead
        if i + 1 < len(batches):
            ahead = [pool.submit(prepare, e) for e in batches[i + 1]]
        yield batch, [f.result() for f in current]


def _record(example: Example) -> dict[str, Any]:
    return {
        # Absolute, so training and evaluation find the images from any working directory.
        "image": str(Path(example.image).absolute()),
        "image_id": example.image_id,
        "captions": list(example.captions),
        "split": example.split,
    }


class _Progress:
    """A tqdm bar over images, with the count skipped so far as its postfix."""

    def __init__(self, total: int, done: int, skipped: int, enabled: bool) -> None:
        tqdm = require("tqdm", "train").tqdm
        # disable=None: tqdm shows the bar on a terminal only, not in a redirected log.
        self.bar = tqdm(
            total=total,
            initial=done,
            unit="img",
            desc="embed",
            disable=None if enabled else True,
            postfix={"skipped": skipped},
        )
        self.skipped = skipped

    def advance(self, images: int, skipped: int) -> None:
        if skipped:
            self.skipped += skipped
            self.bar.set_postfix(skipped=self.skipped, refresh=False)
        self.bar.update(images)

    def close(self) -> None:
        self.bar.close()
