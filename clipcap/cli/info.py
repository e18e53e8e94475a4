"""`clipcap info`: what a checkpoint holds."""

from __future__ import annotations

import json

from clipcap.cli import flags

HELP = "show what a checkpoint holds: format, sizes, defaults"


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print the full config as one JSON line")
    flags.add_checkpoint_flags(parser)


def run(args) -> int:
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
