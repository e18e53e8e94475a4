"""`clipcap caption`: images (or CLIP embeddings) to captions with a bundle, on ONNX Runtime."""

from __future__ import annotations

import json
import sys

from clipcap.cli import flags
from clipcap.errors import ConfigError

HELP = "caption images with an exported bundle (ONNX Runtime; no PyTorch needed)"
DESCRIPTION = (
    "Caption images (or CLIP embeddings) with a bundle from `clipcap export`. Decoding defaults "
    "come from the bundle: each source's checkpoint generates as its source did. Every input "
    "is answered in order; one that cannot be read gets an error line and the others are still "
    "captioned; the exit status is 1 when any input failed."
)
EPILOG = """
Examples:
  clipcap caption photo.jpg more/*.jpg --bundle coco-bundle
  clipcap caption photo.jpg --bundle coco-bundle --strategy beam --beam-size 5 --json
  clipcap caption --embeddings clip.npy --bundle coco-bundle     # precomputed [N, D]
  clipcap caption --embeddings coco-embeds --bundle coco-bundle  # an embedding set
"""


def add_arguments(parser) -> None:
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="image files (JPEG, PNG, WebP, ...)")
    parser.add_argument("--bundle", required=True, metavar="DIR", help="the bundle directory")
    parser.add_argument(
        "--embeddings",
        metavar="FILE",
        help="caption CLIP embeddings instead of images: a .npy float array [N, D], or an embedding set "
        "from `clipcap embed` (its folder or its embeddings.safetensors)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per input, per line, on stdout")
    flags.add_decoding_flags(parser, "the bundle's", stop=True)
    running = parser.add_argument_group("running")
    flags.add_runtime_flags(running)
    running.add_argument("--batch-size", type=int, default=16, metavar="N", help="images per batch")


def run(args) -> int:
    from clipcap.runtime import Captioner, ImageError

    if bool(args.images) == bool(args.embeddings):
        raise ConfigError("give IMAGE paths or --embeddings FILE (one of the two)")
    captioner = Captioner(args.bundle, **flags.runtime_settings(args))
    # Bad options fail here, before any work.
    options = captioner.options(stop_strings=args.stop, **flags.decoding_overrides(args))
    if args.embeddings:
        from clipcap.runtime.arrays import read_embeddings  # bounded: the header is checked first

        embeddings = read_embeddings(args.embeddings)
        names = [f"{args.embeddings}[{i}]" for i in range(len(embeddings))]
        results = captioner.caption_embeddings(embeddings, options, batch_size=args.batch_size)
    else:
        names = args.images
        results = captioner.caption(list(args.images), options, batch_size=args.batch_size, errors="return")
    failed = 0
    for name, result in zip(names, results, strict=True):
        if isinstance(result, ImageError):
            failed += 1
            if args.json:
                print(json.dumps({"input": name, "error": str(result)}), flush=True)
            else:
                print(f"clipcap caption: error: {result}", file=sys.stderr, flush=True)
        elif args.json:
            line = {"input": name, "caption": result.text, "tokens": result.tokens, "score": result.score}
            print(json.dumps(line))
        else:
            print(f"{name}\t{result.text}")
    return 1 if failed else 0
