"""`clipcap embed`: the CLIP image embeddings of a captioned image set, resumable."""

from __future__ import annotations

import sys

from clipcap.cli import flags
from clipcap.errors import ConfigError

HELP = "compute the CLIP image embeddings of a captioned image set, for training and evaluation"
DESCRIPTION = (
    "Embed every image of a COCO, Conceptual Captions or plain-folder dataset with CLIP, "
    "preprocessed exactly as the ONNX runtime does, and write the embedding set to --out: "
    "embeddings.safetensors, captions.jsonl and meta.json (no pickle), plus skipped.jsonl "
    "listing the images that were missing or unreadable (skipped and counted, never fatal). "
    "The work is saved in shards as it goes: after an interruption, the same command resumes. "
    "CLIP weights can be a local file (--clip-weights) or directory (--clip hf:DIR), so it "
    "works offline."
)
EPILOG = """
Examples, with the original ClipCap's CLIP (ViT-B/32, OpenAI's weights):
  # COCO, Karpathy's split (restval counts as train); coco/ holds train2014/ and val2014/
  clipcap embed dataset_coco.json --images coco --out coco-embeds --clip ViT-B-32:openai
  # Conceptual Captions: Google's TSV, images downloaded as cc3m/00000000.jpg, 00000001.jpg, ...
  clipcap embed Train_GCC-training.tsv --images cc3m --out cc3m-embeds \\
      --clip ViT-B-32:openai --device cuda --batch-size 256
  # offline: OpenAI's ViT-B-32.pt as a local file
  clipcap embed dataset_coco.json --images coco --out coco-embeds \\
      --clip ViT-B-32-quickgelu --clip-weights ViT-B-32.pt
  # a quick look first: the first 100 examples
  clipcap embed dataset_coco.json --images coco --out try --clip ViT-B-32:openai --limit 100

Formats (--data-format auto goes by the extension):
  coco        Karpathy's dataset_coco.json, or ClipCap's train_caption.json (COCO ids,
              found under train2014/ or val2014/)
  conceptual  caption<TAB>url lines, no header; row i (from 0) is the image {i:08d}.jpg
              (or .jpeg/.png/.webp); an optional third column names the file instead
  folder      captions.jsonl: {"image": "a.jpg", "caption": "..."} or "captions": [...],
              optional "split" and "image_id"; or a CSV with image,caption[,split,image_id]
              columns. Paths are relative to the captions file (or --images).

Interrupted? Run the same command again: finished shards are kept. --force starts over.
"""

DATA_FORMATS = ("auto", "coco", "conceptual", "folder")


def add_arguments(parser) -> None:
    parser.add_argument(
        "data",
        metavar="DATA",
        help="the dataset file: COCO .json, Conceptual Captions .tsv, or a captions .jsonl / .csv "
        "(or a folder holding captions.jsonl or captions.csv)",
    )
    flags.add_out_flag(parser, required=True, metavar="DIR", help="the embedding-set directory to write")
    parser.add_argument(
        "--images",
        metavar="DIR",
        help="the image root (default: the dataset file's folder); COCO: the folder holding train2014/ "
        "and val2014/",
    )
    parser.add_argument(
        "--data-format",
        choices=DATA_FORMATS,
        default="auto",
        help="dataset format (default: from the extension: .json coco, .tsv conceptual, .jsonl/.csv folder)",
    )
    flags.hidden_alias(parser, "--format", dest="data_format", choices=DATA_FORMATS)
    parser.add_argument(
        "--split", metavar="NAME", help="the split of every Conceptual Captions row (default: train)"
    )
    flags.add_clip_flags(parser, required=True, title="CLIP")
    running = parser.add_argument_group("running")
    running.add_argument(
        "--device",
        default="auto",
        metavar="DEVICE",
        help="auto (CUDA when PyTorch sees a GPU, else cpu), cpu, cuda, cuda:N",
    )
    running.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per batch")
    running.add_argument(
        "--workers", type=int, metavar="N", help="threads loading images (default: up to 8; 0: none)"
    )
    running.add_argument(
        "--shard-size", type=int, default=1024, metavar="N", help="images saved per resumable shard"
    )
    running.add_argument("--limit", type=int, metavar="N", help="only the first N examples, for a quick try")
    running.add_argument(
        "--force",
        action="store_true",
        help="start over: discard an interrupted run and replace a complete set",
    )


def run(args) -> int:
    flags.require_torch()
    from clipcap.data.datasets import read_dataset
    from clipcap.data.embed import check_destination, embed_dataset

    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit {args.limit}: give a number of examples >= 1")
    data = read_dataset(args.data, images=args.images, format=args.data_format, split=args.split)
    if data.skipped:
        print(
            f"clipcap embed: skipped {data.skipped_count} dataset rows ({counts(data.skipped)}), e.g.:\n  "
            + "\n  ".join(data.problems),
            file=sys.stderr,
        )
    examples = data.examples[: args.limit] if args.limit else data.examples
    if not examples:
        raise ConfigError(
            f"{args.data}: no usable rows (read as {data.format}); check the file and --data-format"
        )
    check_destination(args.out, device=args.device, force=args.force)  # before the slow CLIP load
    encoder = flags.clip_encoder(args)
    source = {
        "dataset": str(args.data),
        "format": data.format,
        "images": args.images,
        "split": args.split,
        "limit": args.limit,
        "rows_skipped": data.skipped,
    }
    try:
        summary = embed_dataset(
            examples,
            encoder,
            args.out,
            batch_size=args.batch_size,
            shard_size=args.shard_size,
            device=args.device,
            source=source,
            force=args.force,
            workers=args.workers,
        )
    except KeyboardInterrupt as e:
        print(f"clipcap embed: {e or 'interrupted; run the same command again to resume'}", file=sys.stderr)
        return 130
    resumed = f" ({summary.resumed} done by an earlier run)" if summary.resumed else ""
    print(f"embedded {summary.count} of {len(examples)} images{resumed} in {summary.seconds:.1f} s")
    if summary.skipped:
        print(
            f"skipped {summary.skipped_count}: {counts(summary.skipped)} (listed in {summary.skipped_file})"
        )
    print(f"wrote {summary.out_dir}/: embeddings.safetensors, captions.jsonl, meta.json")
    return 0


def counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in counts.items())
