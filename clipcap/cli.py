"""The ``clipcap`` command line.

Importing this module is torch-free: each subcommand imports what it needs when it runs, so
``clipcap --help`` and the runtime's commands work in the plain (runtime-only) install.
Errors the user can fix end as one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from clipcap import __version__
from clipcap.errors import ClipCapError

EPILOG = """\
Checkpoint formats (detected from the weights): the seed's (mapping.proj1/proj2), the
original MLP (clip_project.model.0/2), linear (clip_project.weight) and Transformer
(clip_project.linear + prefix_const) pickles, and this project's safetensors + config.json.

Run `clipcap COMMAND --help` for each command's options.
"""

CLIP_PRESETS = ("openai-vit-b-32", "openai-rn50x4", "hf-vit-b-32")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="clipcap: %(levelname)s: %(message)s")
    if not hasattr(args, "run"):
        parser.print_help()
        return 0
    try:
        return args.run(args)
    except ClipCapError as e:  # every error we raise on purpose names its input and the fix
        print(f"clipcap {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"clipcap {args.command}: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipcap",
        description="Export ClipCap image captioners to ONNX and caption with ONNX Runtime.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"clipcap-onnx {__version__}")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")

    info = _command(commands, "info", cmd_info, "show what a checkpoint holds: format, sizes, defaults")
    info.add_argument("checkpoint", help="a checkpoint file (.pt/.pth/.safetensors) or directory")
    info.add_argument("--json", action="store_true", help="print the full config as JSON")
    _add_checkpoint_settings(info)

    convert = _command(
        commands,
        "convert",
        cmd_convert,
        "convert any checkpoint to this project's format (safetensors + config.json)",
        description=(
            "Read a checkpoint of any supported format and write it as model.safetensors + "
            "config.json: no pickle, and the settings the weights cannot tell (prefix "
            "normalisation, CLIP, generation defaults) recorded with it."
        ),
    )
    convert.add_argument("checkpoint", help="a checkpoint file (.pt/.pth/.safetensors) or directory")
    convert.add_argument("--out", required=True, metavar="DIR", help="directory to write (made if missing)")
    _add_checkpoint_settings(convert)
    return parser


def _command(commands, name: str, run: Callable, help: str, description: str | None = None):
    p = commands.add_parser(name, help=help, description=description or help)
    p.set_defaults(run=run)
    return p


def _add_checkpoint_settings(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what the weights cannot tell (pickled formats)")
    g.add_argument(
        "--normalize-prefix",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="L2-normalise the CLIP embedding before the mapper (default: off, the original training "
        "default; the released transformer_weights.pt needs it on)",
    )
    g.add_argument(
        "--clip",
        choices=CLIP_PRESETS,
        default=None,
        help="the CLIP whose embeddings the checkpoint was trained on (default by width: "
        "openai-vit-b-32 for D=512, hf-vit-b-32 for the seed, openai-rn50x4 for D=640)",
    )
    g.add_argument("--gpt2-heads", type=int, metavar="N", help="GPT-2's heads, for non-standard widths only")
    g.add_argument("--mapper-heads", type=int, metavar="N", help="transformer mapper heads (default 8)")


def _load(args):
    from clipcap.checkpoints import load_checkpoint
    from clipcap.config import HF_VIT_B_32, OPENAI_RN50X4, OPENAI_VIT_B_32

    clip = {"openai-vit-b-32": OPENAI_VIT_B_32, "openai-rn50x4": OPENAI_RN50X4, "hf-vit-b-32": HF_VIT_B_32}
    return load_checkpoint(
        args.checkpoint,
        normalize_prefix=args.normalize_prefix,
        clip=clip.get(args.clip),
        n_head=args.gpt2_heads,
        mapper_heads=args.mapper_heads,
    )


def cmd_info(args) -> int:
    _require_torch()
    from clipcap.checkpoints import describe
    from clipcap.gpt2 import num_parameters

    model = _load(args)
    if args.json:
        print(model.config.to_json(), end="")
        return 0
    facts = describe(model.config)
    facts["parameters"] = f"{num_parameters(model) / 1e6:.1f} M"
    width = max(map(len, facts))
    for key, value in facts.items():
        print(f"{key:<{width}}  {'-' if value is None else value}")
    return 0


def cmd_convert(args) -> int:
    _require_torch()
    from clipcap.checkpoints import save_checkpoint

    model = _load(args)
    out = save_checkpoint(model, args.out)
    print(f"wrote {out}/model.safetensors and config.json ({model.config.source_format} -> clipcap-onnx)")
    return 0


def _require_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError as e:
        from clipcap.errors import missing_dependency

        raise missing_dependency("PyTorch", "export", e) from None


if __name__ == "__main__":
    sys.exit(main())
