"""`clipcap serve`: the HTTP captioning service. Its flags and run are clipcap.serve.command's.

That module's add_arguments imports only argparse, so `clipcap --help` stays light; its run imports
the [serve] extra. Until it exists, the command is not offered (``available``).
"""

from __future__ import annotations

import importlib

HELP = "serve captions over HTTP with continuous batching (ONNX Runtime; needs the [serve] extra)"
MODULE = "clipcap.serve.command"


def _command():
    try:
        return importlib.import_module(MODULE)
    except ModuleNotFoundError as e:
        if e.name != MODULE:
            raise
        return None


def available() -> bool:
    return _command() is not None


def __getattr__(name: str):
    # DESCRIPTION and EPILOG, when the serve module declares them.
    if name in ("DESCRIPTION", "EPILOG"):
        return getattr(_command(), name, None)
    raise AttributeError(name)


def add_arguments(parser) -> None:
    _command().add_arguments(parser)


def run(args) -> int:
    return _command().run(args)
