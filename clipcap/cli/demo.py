"""`clipcap demo`: the whole chain offline, on small models trained here."""

from __future__ import annotations

from clipcap.cli import flags

HELP = "the whole chain offline: train small ClipCap models, export, caption, score, time"
DESCRIPTION = (
    "Synthesise a captioned image set of coloured shapes, pre-train a small CLIP (open_clip) and a "
    "small GPT-2 on it (no weights can be downloaded), then run the real commands' code: embed, "
    "train both ClipCap variants, export verified fp32 bundles, caption the held-out images with "
    "the ONNX runtime and score them. Writes OUT/report.json, OUT/contact-sheet.png and the "
    "bundles. About 5 minutes on 2 CPU cores; --quick about 90 s."
)
EPILOG = """
What it shows: OUT/report.json (per variant: exact-match accuracy, BLEU-4, CIDEr, runtime and
PyTorch latency, bundle size), OUT/contact-sheet.png (held-out images and their captions, wrong
ones in red), OUT/bundle-mlp and OUT/bundle-transformer, which `clipcap caption` takes:
  clipcap caption demo-out/data/images/04200.png --bundle demo-out/bundle-mlp
"""


def add_arguments(parser) -> None:
    flags.add_out_flag(parser, default="demo-out", metavar="DIR", help="output directory")
    parser.add_argument("--quick", action="store_true", help="fewer images and steps (~90 s, lower accuracy)")
    parser.add_argument(
        "--variant",
        choices=("mlp", "transformer", "both"),
        default="both",
        help="mlp: MLP mapper + GPT-2 fine-tuned; transformer: transformer mapper, GPT-2 frozen",
    )
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seeds the data and every model")


def run(args) -> int:
    flags.require_torch("train")
    from clipcap.demo.run import VARIANTS, run_demo

    variants = VARIANTS if args.variant == "both" else (args.variant,)
    run_demo(args.out, quick=args.quick, variants=variants, seed=args.seed)
    return 0
