"""`clipcap eval`: caption an embedding set and score it (BLEU, METEOR, ROUGE-L, CIDEr-D, SPICE)."""

from __future__ import annotations

import argparse
import json

from clipcap.cli import flags
from clipcap.errors import ConfigError

HELP = "caption an embedding set and score it: BLEU, METEOR, ROUGE-L, CIDEr-D, SPICE"
DESCRIPTION = (
    "Caption the images of an embedding set (from `clipcap embed`) with a bundle (ONNX Runtime) "
    "or a checkpoint (PyTorch) and score the captions against the set's reference captions with "
    "pycocoevalcap, as the COCO caption benchmark does: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D "
    "(what coco-caption and papers call CIDEr) and SPICE, plus exact match. METEOR and SPICE "
    "need Java; so does coco-caption's tokenizer, and without Java a pure-Python imitation "
    "tokenises instead (close scores, not identical; the output says which). SPICE also needs "
    "the Stanford CoreNLP models, which are never downloaded here: without them it is skipped, "
    "with the reason. Prints the scores x100, as papers print them."
)
EPILOG = """
Examples:
  clipcap eval --bundle coco-bundle --data coco-embeds            # Karpathy's test split
  clipcap eval --bundle coco-bundle --data coco-embeds --strategy beam --beam-size 5 \\
      --predictions preds.jsonl -o scores.json
  clipcap eval --checkpoint runs/coco --data coco-embeds --device cuda --limit 500
  clipcap eval --bundle coco-bundle --data coco-embeds --json     # the scores as a JSON line
"""


class JsonOrOldOut(argparse.Action):
    """``--json``: the scores as one JSON line on stdout. ``--json FILE``, its old meaning, is --out FILE."""

    def __call__(self, parser, namespace, value, option_string=None):
        if value is None:
            namespace.json = True
        else:
            namespace.out = value


def add_arguments(parser) -> None:
    source = parser.add_argument_group("what to evaluate (one of the two)")
    source.add_argument("--bundle", metavar="DIR", help="a bundle from `clipcap export` (ONNX Runtime)")
    source.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="a checkpoint (PyTorch, the reference decoder); a pickled original that needs settings "
        "(--normalize-prefix, ...) is best converted first with `clipcap convert`",
    )
    data = parser.add_argument_group("the data")
    data.add_argument("--data", metavar="EMBED_DIR", help="an embedding set from `clipcap embed`")
    data.add_argument("--split", default="test", metavar="NAME", help="the split to caption; all: every row")
    data.add_argument("--limit", type=int, metavar="N", help="only the split's first N images")
    flags.add_decoding_flags(parser, "the bundle's or checkpoint's")
    running = parser.add_argument_group("running")
    flags.add_runtime_flags(
        running, provider="where ONNX Runtime runs, for --bundle", fallback=False, threads=None
    )
    running.add_argument(
        "--device",
        metavar="DEVICE",
        help="PyTorch's, for --checkpoint: auto (default: CUDA when available), cpu, cuda",
    )
    running.add_argument(
        "--tokenizer",
        metavar="FILE_OR_DIR",
        help="for --checkpoint (default: tokenizer.json beside the checkpoint, else GPT-2's)",
    )
    running.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per batch")
    out = parser.add_argument_group("scoring and output")
    out.add_argument(
        "--no-java", action="store_true", help="never run Java: no METEOR or SPICE, the Python tokenizer"
    )
    flags.add_out_flag(out, metavar="FILE.json", help="write the scores, source, data and decoding options")
    out.add_argument(
        "--predictions", metavar="FILE.jsonl", help="write each image's caption and references, one per line"
    )
    out.add_argument(
        "--json",
        nargs="?",
        action=JsonOrOldOut,
        default=False,
        metavar="FILE",
        help="print the scores, source, data and decoding options as one JSON line on stdout, "
        "instead of the table (--json FILE, the old spelling of -o FILE, still works)",
    )


def run(args) -> int:
    check(args)
    from clipcap.eval.evaluate import evaluate

    result = evaluate(
        args.bundle or args.checkpoint,
        args.data,
        kind="bundle" if args.bundle else "checkpoint",
        split=args.split,
        limit=args.limit,
        overrides=flags.decoding_overrides(args),
        provider=flags.runtime_settings(args)["provider"],
        device=args.device or "auto",
        tokenizer=args.tokenizer,
        batch_size=args.batch_size,
        java=False if args.no_java else None,
    )
    outputs = ((args.predictions, result.save_predictions), (args.out, result.save_scores))
    wrote = [save(path, write) for path, write in outputs if path]
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    o = result.options
    decoding = o.strategy + (
        f" (beam {o.beam_size}, length penalty {o.length_penalty})" if o.strategy == "beam" else ""
    )
    print(
        f"{result.data}, split {result.split}: {result.scores.n} images captioned by the {result.kind} "
        f"{result.source} ({decoding}, up to {o.max_new_tokens} new tokens)"
    )
    print(result.scores.table())
    for path in wrote:
        print(f"wrote {path}")
    return 0


def check(args) -> None:
    """The flags' combinations, refused before any work."""
    if bool(args.bundle) == bool(args.checkpoint):
        raise ConfigError("give --bundle DIR or --checkpoint PATH (one of the two)")
    if not args.data:
        raise ConfigError("give --data EMBED_DIR: an embedding set from `clipcap embed`")
    if args.bundle and (args.device or args.tokenizer):
        raise ConfigError("--device and --tokenizer are for --checkpoint; a bundle runs on --provider")
    if args.checkpoint:
        if args.provider:
            raise ConfigError("--provider is for --bundle; a checkpoint runs on --device")
        flags.require_torch("train")


def save(path, write):
    try:
        return write(path)
    except OSError as e:
        raise ConfigError(f"{path}: cannot write ({e.strerror or e})") from None
