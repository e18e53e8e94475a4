"""`clipcap info`: what a checkpoint (PyTorch) or a bundle (torch-free, read off its manifest) holds."""

from __future__ import annotations

import json

from clipcap.cli import flags
from clipcap.errors import ConfigError

HELP = "show what a checkpoint or a bundle holds: format, sizes, defaults"


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print it all as one JSON line on stdout")
    flags.add_checkpoint_flags(parser, f"{flags.CHECKPOINT}, or a bundle directory (no PyTorch needed)")


def run(args) -> int:
    from clipcap.runtime.summary import is_bundle

    if is_bundle(args.checkpoint):
        return bundle_info(args)
    model = flags.load_model(args)
    if args.json:
        print(json.dumps(json.loads(model.config.to_json())))
        return 0
    from clipcap.models.checkpoints import describe
    from clipcap.models.gpt2 import num_parameters

    facts = describe(model.config)
    facts["parameters"] = f"{num_parameters(model) / 1e6:.1f} M"
    width = max(map(len, facts))
    for key, value in facts.items():
        print(f"{key:<{width}}  {'-' if value is None else value}")
    return 0


def bundle_info(args) -> int:
    from clipcap.runtime.summary import bundle_summary, format_summary

    given = flags.checkpoint_settings_given(args)
    if given:
        raise ConfigError(
            f"{args.checkpoint} is a bundle, which records its own settings: {', '.join(given)} "
            "apply to checkpoints"
        )
    summary = bundle_summary(args.checkpoint)
    print(json.dumps(summary) if args.json else format_summary(summary))
    return 0
