"""The ``clipcap`` command line: the registry of commands and ``main``.

Each command is a module of this package (``COMMANDS`` lists them, in --help's order) with:
``HELP`` (one line for ``clipcap --help``), optionally ``DESCRIPTION`` and ``EPILOG``,
``add_arguments(parser)`` and ``run(args) -> int``; ``available()``, where present, says whether
the command can be offered at all. Flag groups more than one command takes are in ``flags.py``.

Importing this package, and building the parser, is torch-free: a command imports what it needs
inside ``run``, so ``clipcap --help`` and the runtime's commands work in the plain (runtime-only)
install. Exit status: 0 done; 1 some input failed (the others were still done); 2 a usage error
or any ClipCapError, as one line on stderr (``clipcap CMD: error: ...``), never a traceback;
130 interrupted; 141 (128 + SIGPIPE) when stdout was closed early (``clipcap caption ... | head -1``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from clipcap import __version__
from clipcap.cli.flags import HelpFormatter, fill
from clipcap.errors import ClipCapError

COMMANDS = (
    "info",
    "convert",
    "export",
    "caption",
    "serve",
    "push",
    "embed",
    "train",
    "eval",
    "demo",
    "bench",
)

EPILOG = """\
Checkpoint formats (detected from the weights): the seed's (mapping.proj1/proj2), the
original MLP (clip_project.model.0/2), linear (clip_project.weight) and Transformer
(clip_project.linear + prefix_const) pickles, and this project's safetensors + config.json.

Run `clipcap COMMAND --help` for each command's options.
"""

BROKEN_PIPE = 141  # what a shell reports for a process that SIGPIPE ended


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="clipcap: %(levelname)s: %(message)s")
    if not hasattr(args, "_run"):
        parser.print_help()
        return 0
    try:
        code = args._run(args)
        sys.stdout.flush()  # inside the try: a reader that went away fails here, not at exit
        return code
    except BrokenPipeError:
        # As Python's docs advise (library/signal, "Note on SIGPIPE"): point stdout at devnull so
        # the interpreter's final flush does not fail again, and exit quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return BROKEN_PIPE
    except ClipCapError as e:  # every error we raise on purpose names its input and the fix
        print(f"clipcap {args._command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"clipcap {args._command}: interrupted", file=sys.stderr)
        return 130


def command_modules() -> dict:
    """The command name -> its module, for every command in COMMANDS that is available here."""
    modules = {}
    for name in COMMANDS:
        module = importlib.import_module(f"clipcap.cli.{name}")
        if getattr(module, "available", lambda: True)():
            modules[name] = module
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipcap",
        description="Export ClipCap image captioners to ONNX and caption with ONNX Runtime.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"clipcap-onnx {__version__}")
    commands = parser.add_subparsers(title="commands", dest="_command", metavar="COMMAND")
    for name, module in command_modules().items():
        add_command(commands, name, module)
    return parser


def add_command(commands, name: str, module, **defaults) -> argparse.ArgumentParser:
    """One command's parser, from its module's HELP, DESCRIPTION, EPILOG and add_arguments."""
    description = getattr(module, "DESCRIPTION", None) or module.HELP
    parser = commands.add_parser(
        name,
        help=module.HELP,
        description=fill(description),
        epilog=getattr(module, "EPILOG", None),
        formatter_class=HelpFormatter,
    )
    module.add_arguments(parser)
    parser.set_defaults(_run=module.run, **defaults)
    return parser


if __name__ == "__main__":
    sys.exit(main())
