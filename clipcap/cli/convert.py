"""`clipcap convert`: any checkpoint to this project's format (safetensors + config.json)."""

from __future__ import annotations

from clipcap.cli import flags

HELP = "convert any checkpoint to this project's format (safetensors + config.json)"
DESCRIPTION = (
    "Read a checkpoint of any supported format and write it as model.safetensors + "
    "config.json: no pickle, and the settings the weights cannot tell (prefix "
    "normalisation, CLIP, generation defaults) recorded with it."
)


def add_arguments(parser) -> None:
    flags.add_out_flag(parser, required=True, metavar="DIR", help="directory to write (made if missing)")
    flags.add_checkpoint_flags(parser)


def run(args) -> int:
    model = flags.load_model(args)
    from clipcap.models.checkpoints import save_checkpoint

    out = save_checkpoint(model, args.out)
    print(f"wrote {out}/model.safetensors and config.json ({model.config.source_format} -> clipcap-onnx)")
    return 0
