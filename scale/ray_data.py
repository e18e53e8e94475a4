"""Caption a dataset on a Ray cluster: a Ray Data job with one Captioner per actor.

How ``clipcap caption`` calls it (``--ray``)::

    from clipcap.scale.ray_data import add_ray_arguments, caption_with_ray, ray_settings
    from clipcap.scale.sources import iter_items

    add_ray_arguments(parser.add_argument_group("Ray"))  # --ray --ray-address --workers ...
    ...
    if args.ray:
        summary = caption_with_ray(
            iter_items(args.images),
            args.bundle,
            {"stop_strings": args.stop, **flags.decoding_overrides(args)},
            out=args.out,                  # a JSONL file; None prints the rows on stdout
            batch_size=args.batch_size,
            threads=args.threads,          # per actor; None: one per CPU the actor reserves
            provider=args.provider or "cpu",
            **ray_settings(args),          # address, workers, cpus_per_worker, gpus_per_worker
        )
        return 1 if summary.failed else 0

Each output row is what ``clipcap caption --json`` prints: ``{"input": key, "caption", "tokens",
"score"}`` or ``{"input": key, "error"}``, one per item, in the items' order. Bad options, a
missing bundle or a missing ``ray`` fail before any work (OptionsError, BundleError,
MissingDependencyError); a bad image is a row with its error and the others are still captioned.

On a cluster the bundle path must name the same bundle on every node (a shared filesystem, or
copied to the same place on each; ``hf:`` names are fetched by each node). See docs/scaling.md.

Ray itself is imported only when a job starts: :class:`CaptionBatch`, the batch function, is
plain numpy + the runtime, so Spark's ``predict_batch_udf`` can wrap it without Ray installed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from clipcap.errors import OptionsError, require
from clipcap.options import DecodingOptions

__all__ = [
    "CaptionBatch",
    "RaySummary",
    "add_ray_arguments",
    "caption_with_ray",
    "iter_ray_rows",
    "ray_settings",
]


@dataclass(frozen=True)
class RaySummary:
    """What a job did: rows written with a caption, rows with an error, and its clock.

    ``seconds`` is the whole call (start-up included); ``startup_seconds`` the part before the
    first row arrived (``ray.init``, actors starting, each opening the bundle)."""

    captioned: int
    failed: int
    seconds: float
    startup_seconds: float

    @property
    def images_per_second(self) -> float:
        return (self.captioned + self.failed) / self.seconds if self.seconds > 0 else 0.0


class CaptionBatch:
    """The batch function: a batch of items in, a batch of JSON lines out.

    One instance per Ray actor (or per Spark Python worker): it opens the bundle once. A batch is
    a dict of equally long columns ``key`` (str), ``kind`` ("path", "bytes" or "error"), ``text``
    (the path, or the listing's error) and ``data`` (the encoded image for "bytes"); the answer
    has the columns ``line`` (the JSON row) and ``ok`` (bool). Every image is loaded with
    ``clipcap.runtime.images.load_image`` on its own, so a bad one becomes its error row and the
    rest of the batch is still captioned, in one encoder run and one decode."""

    def __init__(
        self, bundle: str, options: dict[str, Any], *, threads: int | None = None, provider: str = "cpu"
    ) -> None:
        from clipcap.runtime import Captioner

        self.captioner = Captioner(bundle, provider=provider, threads=threads)
        self.options = DecodingOptions.from_dict(options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from clipcap.runtime import ImageError, load_image
        from clipcap.scale.output import result_row

        keys = [str(k) for k in batch["key"]]
        rows: list[dict[str, Any] | None] = [None] * len(keys)
        images, where = [], []
        for i, (key, kind, text) in enumerate(zip(keys, batch["kind"], batch["text"], strict=True)):
            if kind == "error":  # an item the listing already failed: reported in its place
                rows[i] = result_row(key, error=str(text))
                continue
            source = bytes(batch["data"][i]) if kind == "bytes" else str(text)
            try:
                images.append(load_image(source))
                where.append(i)
            except ImageError as e:
                rows[i] = result_row(key, error=str(e))
        if images:
            captions = self.captioner.caption(images, self.options, batch_size=len(images))
            for i, c in zip(where, captions, strict=True):
                rows[i] = result_row(keys[i], c)
        return {
            "line": np.array([json.dumps(r) for r in rows], dtype=object),
            "ok": np.array(["error" not in r for r in rows], dtype=bool),
        }


def _row_of(item) -> dict[str, Any]:
    """An Item as a dataset row: ``kind`` says which of ``text`` (a path, or the listing's error)
    and ``data`` (the bytes) holds it. No nulls: Arrow's nulls reach a numpy batch as None in one
    Ray release and as the string "nan" in another."""
    source = item.source
    if item.error or source is None:
        return {"key": item.key, "kind": "error", "text": item.error or f"{item.key}: no source", "data": b""}
    if isinstance(source, (bytes, bytearray)):
        return {"key": item.key, "kind": "bytes", "text": "", "data": bytes(source)}
    return {"key": item.key, "kind": "path", "text": str(source), "data": b""}


def _check_options(bundle: str, options_overrides: dict[str, Any], provider: str) -> dict[str, Any]:
    """Resolve the decoding options here, against the bundle's defaults, so a bad option or a
    missing bundle fails in the driver at once rather than as an actor crash on every node."""
    from clipcap.runtime import Captioner

    captioner = Captioner(bundle, provider=provider, fallback_to_cpu=True, threads=1)
    return captioner.options(**dict(options_overrides)).to_dict()


def _start_ray(ray, address: str | None, num_cpus: int) -> bool:
    """Join ``address``, or start a local Ray; True when this call started it (and so stops it)."""
    if ray.is_initialized():
        return False  # a caller (a test, a notebook) already connected: use that cluster
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, log_to_driver=False)
    return True


def iter_ray_rows(
    items: Iterable,
    bundle: str,
    options_overrides: dict[str, Any] | None = None,
    *,
    address: str | None = None,
    workers: int = 2,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    batch_size: int = 16,
    threads: int | None = None,
    provider: str = "cpu",
    progress: bool = False,
) -> Iterator[dict[str, Any]]:
    """The job as a generator of output rows (dicts), in the items' order. See caption_with_ray."""
    if workers < 1 or cpus_per_worker <= 0 or gpus_per_worker < 0 or batch_size < 1:
        raise OptionsError(
            f"--workers ({workers}) and --batch-size ({batch_size}) must be >= 1, --cpus-per-worker "
            f"({cpus_per_worker}) > 0 and --gpus-per-worker ({gpus_per_worker}) >= 0"
        )
    if threads is not None and threads < 1:
        raise OptionsError(f"--threads must be >= 1, got {threads}")
    ray = require("ray", "ray")
    require("ray.data", "ray", "ray[data]")
    options = _check_options(bundle, options_overrides or {}, provider)
    if provider == "cuda" and gpus_per_worker == 0:
        gpus_per_worker = 1.0  # an actor that runs CUDA must hold a GPU, or Ray packs them all on one
    # The items are listed here, in the driver, and handed to Ray as one in-memory dataset
    # (from_items): the listing (folders, globs, manifests, tar shards) and its per-item errors
    # stay sources.py's, identical to the single-machine job, and the keys keep their order. A path
    # row is ~100 bytes, so a million of them fit; tar members travel as bytes through Ray's object
    # store, which spills to disk. read_images would lose the per-item errors (a bad file fails its
    # whole read task) and read_webdataset the keys sources.py gives; neither is needed here.
    rows = [_row_of(item) for item in items]
    if not rows:
        return
    started = _start_ray(ray, address, max(os.cpu_count() or 1, math.ceil(workers * cpus_per_worker)))
    try:
        context = ray.data.DataContext.get_current()
        # The single-machine job writes in input order; so does this one (a slower actor holds back
        # the rows after its batch, never reorders them).
        context.execution_options.preserve_order = True
        context.enable_progress_bars = progress
        dataset = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / batch_size)))
        captioned = dataset.map_batches(
            CaptionBatch,
            fn_constructor_args=(bundle, options),
            fn_constructor_kwargs={
                "threads": threads or max(1, int(cpus_per_worker)),
                "provider": provider,
            },
            batch_size=batch_size,
            batch_format="numpy",
            # A fixed pool: one Captioner per actor, opened once. (``concurrency=`` said the same
            # until Ray 2.51 deprecated it for ``compute``.)
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=cpus_per_worker,
            num_gpus=gpus_per_worker or None,
        )
        for row in captioned.iter_rows():
            yield json.loads(row["line"])
    finally:
        if started:
            ray.shutdown()


def caption_with_ray(
    items: Iterable,
    bundle: str,
    options_overrides: dict[str, Any] | None = None,
    *,
    out: str | None = None,
    address: str | None = None,
    workers: int = 2,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    batch_size: int = 16,
    threads: int | None = None,
    provider: str = "cpu",
    progress: bool = False,
) -> RaySummary:
    """Caption ``items`` (``clipcap.scale.sources.Item``s) on Ray and write one JSON row per item.

    Args:
        items: what ``iter_items`` yields (key + path or bytes, or a listing error).
        bundle: the bundle's path (the same on every node) or ``hf:`` name.
        options_overrides: ``Captioner.options`` keywords (``stop_strings`` included); checked
            here against the bundle's defaults before Ray starts.
        out: a JSONL file to write (truncated first); None prints the rows on stdout.
        address: a running cluster (``ray start --head`` printed it; ``auto`` finds a local one);
            None starts a local Ray for this job and stops it after.
        workers: actors, each holding one Captioner; ``cpus_per_worker`` / ``gpus_per_worker``
            are what each reserves (``provider="cuda"`` reserves one GPU unless told otherwise).
        batch_size: images per batch (one encoder run and one decode per batch).
        threads: ONNX Runtime intra-op threads per actor (default: its CPUs, at least one).
        progress: Ray Data's progress bars on stderr.

    Returns: the counts and the time (``RaySummary``). Every item is one row, in order.
    """
    start = time.monotonic()
    first: float | None = None
    captioned = failed = 0
    stream = open(out, "w", encoding="utf-8") if out else sys.stdout  # noqa: SIM115 - closed below
    try:
        for row in iter_ray_rows(
            items,
            bundle,
            options_overrides,
            address=address,
            workers=workers,
            cpus_per_worker=cpus_per_worker,
            gpus_per_worker=gpus_per_worker,
            batch_size=batch_size,
            threads=threads,
            provider=provider,
            progress=progress,
        ):
            first = first or time.monotonic()
            stream.write(json.dumps(row) + "\n")
            if "error" in row:
                failed += 1
            else:
                captioned += 1
        stream.flush()
    finally:
        if out:
            stream.close()
    end = time.monotonic()
    return RaySummary(captioned, failed, end - start, (first or end) - start)


def add_ray_arguments(group: argparse._ActionsContainer) -> None:
    """--ray, --ray-address, --workers, --cpus-per-worker, --gpus-per-worker (read with ray_settings)."""
    group.add_argument(
        "--ray",
        action="store_true",
        help="caption on Ray (the [ray] extra): a Ray Data job with one captioner per actor; without "
        "--ray-address it starts a local Ray for the job (see docs/scaling.md)",
    )
    group.add_argument(
        "--ray-address",
        metavar="ADDR",
        default=None,
        help="join a running Ray cluster (what `ray start --head` printed, e.g. 10.0.0.1:6379, or "
        "'auto'); the bundle must be at the same path on every node (default: a local Ray)",
    )
    group.add_argument(
        "--workers",
        type=int,
        default=2,
        metavar="N",
        help="Ray actors, each with its own captioner (default: %(default)s)",
    )
    group.add_argument(
        "--cpus-per-worker",
        type=float,
        default=1.0,
        metavar="N",
        help="CPUs each actor reserves; --threads defaults to it (default: %(default)s)",
    )
    group.add_argument(
        "--gpus-per-worker",
        type=float,
        default=0.0,
        metavar="N",
        help="GPUs each actor reserves (fractions share one); --provider cuda reserves 1 when this "
        "is 0 (default: %(default)s)",
    )


def ray_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The Ray flags' values as caption_with_ray keywords."""
    return {
        "address": args.ray_address,
        "workers": args.workers,
        "cpus_per_worker": args.cpus_per_worker,
        "gpus_per_worker": args.gpus_per_worker,
    }
