"""`clipcap export`: a checkpoint to a verified ONNX bundle for clipcap.runtime."""

from __future__ import annotations

from pathlib import Path

from clipcap.cli import flags
from clipcap.errors import ConfigError

HELP = "export a checkpoint to a verified ONNX bundle for clipcap.runtime"
DESCRIPTION = (
    "Trace the CLIP image encoder, the mapper and GPT-2 (with its KV cache) to ONNX, check every "
    "graph and greedy captions against PyTorch, and write the bundle directory: the graphs, "
    "tokenizer.json and the clipcap.json manifest. Nothing is written unless it all passes."
)
EPILOG = """
Offline: every checkpoint holds GPT-2's weights and the GPT-2 tokenizer ships with this
package, so only CLIP may need a download; a local file avoids it:
  clipcap export coco_weights.pt -o coco-bundle \\
      --clip ViT-B-32-quickgelu --clip-weights vit-b-32.pt

The originals: coco_weights.pt / conceptual_weights.pt use CLIP ViT-B/32 (openai); the
Transformer checkpoint transformer_weights.pt uses RN50x4 (openai) with --normalize-prefix;
the seed uses hf:openai/clip-vit-base-patch32.
"""


def add_arguments(parser) -> None:
    flags.add_out_flag(parser, required=True, metavar="DIR", help="the bundle directory to write")
    flags.add_clip_flags(
        parser, required=False, title="CLIP (default: the one the checkpoint's width implies)"
    )
    flags.add_checkpoint_flags(parser)
    out = parser.add_argument_group("output")
    out.add_argument(
        "--tokenizer",
        metavar="FILE_OR_DIR",
        help="tokenizer (default: tokenizer.json beside the checkpoint, as `clipcap train` writes it, "
        "else the packaged GPT-2 one)",
    )
    out.add_argument(
        "--precision",
        choices=("fp32", "fp16", "int8", "int4"),
        default="fp32",
        help="fp32 (exact), fp16 (for CUDA), int8 (dynamic MatMul quantization, for CPU), "
        "int4 (weight-only MatMulNBits, for CPU)",
    )
    out.add_argument("--opset", type=int, default=18, metavar="N", help="ONNX opset")
    out.add_argument("--no-verify", dest="verify", action="store_false", help="skip checking against PyTorch")
    out.add_argument("--force", action="store_true", help="replace an existing bundle")


def run(args) -> int:
    from clipcap.export.bundle import check_destination, export_bundle

    check_destination(args.out, args.force)  # before the seconds of loading a checkpoint
    model = flags.load_model(args)

    if args.clip is None and model.config.clip is None:
        raise ConfigError(
            f"the CLIP this checkpoint was trained on is unknown (its mapper takes "
            f"{model.config.mapper.clip_dim}-d embeddings): pass --clip MODEL[:TAG] or --clip hf:ID_OR_DIR"
        )
    encoder = flags.clip_encoder(args, model.config.clip)
    manifest = export_bundle(
        model,
        encoder,
        args.out,
        precision=args.precision,
        opset=args.opset,
        verify=args.verify,
        force=args.force,
        tokenizer=args.tokenizer or tokenizer_beside(args.checkpoint),
    )
    total = sum(f["bytes"] for f in manifest["files"].values())
    state = "verified" if manifest["verification"]["passed"] else "NOT verified (--no-verify)"
    print(f"{args.out}: {manifest['precision']} bundle, {total / 2**20:.1f} MiB, {state}")
    return 0


def tokenizer_beside(checkpoint: str) -> Path | None:
    """`clipcap train` writes the captions' tokenizer.json beside the model: the export's default."""
    path = Path(checkpoint)
    found = (path if path.is_dir() else path.parent) / "tokenizer.json"
    return found if found.is_file() else None
