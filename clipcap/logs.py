"""Quieting log messages of the libraries we call that are expected and tell the user nothing.

Torch-free; used by the export (onnxscript's optimizer, ONNX Runtime's quantizer), the CLIP loader
(open_clip's random-init notice) and the benchmark.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def drop_root_records(*prefixes: str) -> Iterator[None]:
    """Drop records logged on the root logger whose message starts with one of ``prefixes``
    (open_clip and ONNX Runtime's quantizer log there with ``logging.warning``)."""

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(prefixes)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


@contextlib.contextmanager
def quiet_logger(name: str) -> Iterator[None]:
    """Only errors from logger ``name`` (and its children) while inside."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
