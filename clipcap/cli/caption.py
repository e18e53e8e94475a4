"""`clipcap caption`: images (or CLIP embeddings) to captions with a bundle, on ONNX Runtime.

Images go through ``clipcap.scale.dataset``: streamed from the inputs, loaded by a thread pool,
decoded with continuous batching, written in input order as each is ready, resumable.
"""

from __future__ import annotations

import json
import sys
import time

from clipcap.cli import flags
from clipcap.errors import ConfigError

HELP = "caption images, folders, manifests or tar shards with an exported bundle (no PyTorch needed)"
DESCRIPTION = (
    "Caption images (or CLIP embeddings) with a bundle from `clipcap export`. Decoding defaults "
    "come from the bundle: each source's checkpoint generates as its source did. Inputs are "
    "streamed: image files, folders (recursively, in a stable order), globs, `-` for a list on "
    "stdin, JSONL/CSV manifests with a `path` column, and webdataset tar shards; every result is "
    "written in input order as soon as it is ready, so a dataset of any size runs in constant "
    "memory. An input that cannot be read gets an error row and the others are still captioned; "
    "the exit status is 1 when any input failed."
)
EPILOG = """
Examples:
  clipcap caption photo.jpg more/*.jpg --bundle coco-bundle
  clipcap caption photo.jpg --bundle coco-bundle --strategy beam --beam-size 5 --json
  clipcap caption photos/ -o captions.jsonl --bundle coco-bundle            # a folder, with progress
  clipcap caption photos/ -o captions.jsonl --bundle coco-bundle --resume   # after a crash or Ctrl-C
  clipcap caption shards/*.tar list.csv --bundle coco-bundle -o out.jsonl     # tar shards, a manifest
  clipcap caption photos/ -o out.jsonl --bundle coco-bundle --ray --workers 4  # on Ray
  find /data -name '*.jpg' | clipcap caption - --bundle coco-bundle --json
  clipcap caption --embeddings clip.npy --bundle coco-bundle     # precomputed [N, D]
  clipcap caption --embeddings coco-embeds --bundle coco-bundle  # an embedding set
"""


def add_arguments(parser) -> None:
    parser.add_argument(
        "images",
        nargs="*",
        metavar="INPUT",
        help="image files, folders, globs, - (paths on stdin), .jsonl/.csv manifests, .tar shards",
    )
    parser.add_argument("--bundle", required=True, metavar="DIR", help="the bundle directory")
    parser.add_argument(
        "--embeddings",
        metavar="FILE",
        help="caption CLIP embeddings instead of images: a .npy float array [N, D], or an embedding set "
        "from `clipcap embed` (its folder or its embeddings.safetensors)",
    )
    output = parser.add_argument_group("output")
    flags.add_out_flag(
        output,
        metavar="FILE.jsonl",
        help="write one JSON object per input to this file, flushed row by row, with a progress bar "
        "on stderr (default: stdout)",
    )
    output.add_argument("--json", action="store_true", help="stdout: one JSON object per input, per line")
    output.add_argument(
        "--resume",
        action="store_true",
        help="continue -o FILE: skip the inputs it already has (a row cut short by a kill is redone)",
    )
    output.add_argument("--overwrite", action="store_true", help="replace -o FILE if it has results")
    output.add_argument(
        "--quiet", action="store_true", help="no progress bar and no summary on stderr (errors still show)"
    )
    output.add_argument(
        "--path-column", default="path", metavar="NAME", help="the image column of .jsonl/.csv manifests"
    )
    flags.add_decoding_flags(parser, "the bundle's", stop=True)
    running = parser.add_argument_group("running")
    flags.add_runtime_flags(running)
    running.add_argument(
        "--batch-size", type=int, default=16, metavar="N", help="images per batch (decoder rows at once)"
    )
    running.add_argument(
        "--load-threads",
        type=int,
        default=2,
        metavar="N",
        help="threads reading, decoding and preprocessing images ahead of the graphs",
    )
    from clipcap.scale.ray_data import add_ray_arguments  # argparse only; ray loads with --ray

    add_ray_arguments(parser.add_argument_group("Ray (the [ray] extra; see docs/scaling.md)"))


def run(args) -> int:
    from clipcap.runtime import Captioner

    if bool(args.images) == bool(args.embeddings):
        raise ConfigError("give INPUT paths or --embeddings FILE (one of the two)")
    if args.batch_size < 1 or args.load_threads < 1:
        raise ConfigError("--batch-size and --load-threads must be >= 1")
    if (args.resume or args.overwrite) and not args.out:
        raise ConfigError("--resume and --overwrite continue or replace an -o/--out FILE: give one")
    if args.ray and args.embeddings:
        raise ConfigError("--ray captions images; caption --embeddings without it")
    out = _open_output(args)  # before the bundle: a file that would be overwritten fails at once
    try:
        if args.ray:
            return _caption_with_ray(args, out)
        captioner = Captioner(args.bundle, **flags.runtime_settings(args))
        # Bad options fail here, before any work.
        options = captioner.options(stop_strings=args.stop, **flags.decoding_overrides(args))
        if args.embeddings:
            return _caption_embeddings(args, captioner, options, out)
        return _caption_images(args, captioner, options, out)
    finally:
        if out is not None:
            out.close()


def _open_output(args):
    if not args.out:
        return None
    from clipcap.scale.output import JsonlOutput

    return JsonlOutput(args.out, resume=args.resume, overwrite=args.overwrite)


def _caption_images(args, captioner, options, out) -> int:
    from clipcap.scale.dataset import caption_dataset
    from clipcap.scale.sources import iter_items

    skip = out.done if out is not None else set()
    items = iter_items(args.images, path_column=args.path_column)
    results = caption_dataset(
        captioner,
        items,
        options,
        skip=skip,
        workers=args.load_threads,
        max_batch_rows=args.batch_size,
    )
    try:
        return _write_rows(args, out, (result.row() for result in results), skipped=len(skip))
    finally:
        results.close()  # the decode loop and the loaders stop even when the writing failed


def _caption_with_ray(args, out) -> int:
    """The same job as a Ray Data pipeline; rows come back in order, so -o and --resume work alike."""
    from clipcap.scale.ray_data import iter_ray_rows, ray_settings
    from clipcap.scale.sources import iter_items

    skip = out.done if out is not None else set()
    items = (i for i in iter_items(args.images, path_column=args.path_column) if i.key not in skip)
    rows = iter_ray_rows(
        items,
        args.bundle,
        {"stop_strings": args.stop, **flags.decoding_overrides(args)},
        batch_size=args.batch_size,
        threads=args.threads,
        provider=args.provider or "cpu",
        **ray_settings(args),
    )
    return _write_rows(args, out, rows, skipped=len(skip))


def _write_rows(args, out, rows, *, skipped: int) -> int:
    """Every row to -o FILE or stdout as it comes, with the progress bar; 1 if any row failed."""
    progress = _Progress(args, skipped=skipped, partial=out is not None and out.dropped_partial)
    try:
        for row in rows:
            _emit(args, out, row)
            progress.update("error" not in row)
    finally:
        progress.close()
    return 1 if progress.failed else 0


def _caption_embeddings(args, captioner, options, out) -> int:
    from clipcap.runtime.arrays import read_embeddings  # bounded: the header is checked first
    from clipcap.scale.output import result_row

    embeddings = read_embeddings(args.embeddings)
    names = [f"{args.embeddings}[{i}]" for i in range(len(embeddings))]
    done = out.done if out is not None else set()
    todo = [i for i, name in enumerate(names) if name not in done]
    progress = _Progress(args, skipped=len(names) - len(todo), partial=False)
    try:
        for start in range(0, len(todo), args.batch_size):
            chunk = todo[start : start + args.batch_size]
            for i, c in zip(chunk, captioner.caption_embeddings(embeddings[chunk], options), strict=True):
                _emit(args, out, result_row(names[i], c))
                progress.update(True)
    finally:
        progress.close()
    return 0


def _emit(args, out, row: dict) -> None:
    if out is not None:
        out.write(row)
        if "error" in row:
            print(f"clipcap caption: error: {row['error']}", file=sys.stderr, flush=True)
    elif args.json:
        print(json.dumps(row), flush=True)
    elif "error" in row:
        print(f"clipcap caption: error: {row['error']}", file=sys.stderr, flush=True)
    else:
        print(f"{row['input']}\t{row['caption']}", flush=True)


class _Progress:
    """A tqdm bar on stderr (only when writing to a file, stderr is a terminal and not --quiet)
    and the summary line at the end (with -o, unless --quiet)."""

    def __init__(self, args, *, skipped: int, partial: bool) -> None:
        self.captioned = self.failed = 0
        self.skipped = skipped
        self.start = time.monotonic()
        self.summary = bool(args.out) and not args.quiet
        self.bar = None
        if self.summary and partial:
            print(f"clipcap caption: {args.out}: its last row was cut short; redoing it", file=sys.stderr)
        if self.summary and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(unit="img", desc="captioning", dynamic_ncols=True, file=sys.stderr)

    def update(self, ok: bool) -> None:
        if ok:
            self.captioned += 1
        else:
            self.failed += 1
        if self.bar is not None:
            self.bar.update(1)
            if not ok:
                self.bar.set_postfix(failed=self.failed, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.summary:
            seconds = time.monotonic() - self.start
            rate = self.captioned / seconds if seconds > 0 else 0.0
            print(
                f"clipcap caption: {self.captioned} captioned, {self.failed} failed, {self.skipped} "
                f"skipped (already in the output) in {seconds:.1f} s ({rate:.1f} images/s)",
                file=sys.stderr,
            )
