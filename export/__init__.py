"""clipcap.export: trace ClipCap's graphs to ONNX, verify them against PyTorch, write a bundle.

``export_bundle(model, encoder, out)`` is the entry point (``clipcap export`` on the command
line). Importing this package is light; the exporter loads torch and onnx on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"export_bundle": "clipcap.export.bundle", "ExportError": "clipcap.export.onnx_export"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'clipcap.export' has no attribute {name!r}")


__all__ = list(_LAZY)
