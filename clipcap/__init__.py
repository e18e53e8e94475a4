"""clipcap-onnx: export ClipCap image captioners to ONNX and caption with ONNX Runtime.

``import clipcap`` is torch-free. The PyTorch parts (models, checkpoint loading, CLIP encoders,
reference generation) are imported on first use, so a runtime-only install works.
"""

from __future__ import annotations

import importlib
from typing import Any

from clipcap.config import ClipCapConfig, ClipSpec, GPT2Config, MapperConfig, Preprocessing
from clipcap.errors import CheckpointError, ClipCapError, ConfigError, MissingDependencyError
from clipcap.options import DecodingOptions

__version__ = "0.1.0"

# name -> module, imported on first access (they need torch).
_LAZY = {
    "ClipCapModel": "clipcap.models.model",
    "load_checkpoint": "clipcap.models.checkpoints",
    "save_checkpoint": "clipcap.models.checkpoints",
    "detect_format": "clipcap.models.checkpoints",
    "generate": "clipcap.models.generate",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'clipcap' has no attribute {name!r}")


__all__ = [
    "CheckpointError",
    "ClipCapConfig",
    "ClipCapError",
    "ClipSpec",
    "ConfigError",
    "DecodingOptions",
    "GPT2Config",
    "MapperConfig",
    "MissingDependencyError",
    "Preprocessing",
    "__version__",
    *_LAZY,
]
