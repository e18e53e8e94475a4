"""The bundle's names and its manifest, ``clipcap.json``: what export writes and runtimes read.

Torch-free. docs/bundle-format.md documents every field for people writing their own runtime.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipcap.errors import BundleError
from clipcap.jsonfile import read_versioned_json

BUNDLE_FORMAT = "clipcap-onnx-bundle"
BUNDLE_FORMAT_VERSION = 1
MANIFEST_NAME = "clipcap.json"
TOKENIZER_NAME = "tokenizer.json"
PRECISIONS = ("fp32", "fp16", "int8", "int4")
MAX_MANIFEST_BYTES = 16 << 20


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: its name, element type and shape (ints, or names of dynamic axes)."""

    name: str
    dtype: str  # "float32", "float16" or "int64"
    shape: tuple[int | str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    path = directory / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of a bundle directory, with its format checked (files are checked by the runtime)."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(
            f"{directory}: not a clipcap bundle ({MANIFEST_NAME} is missing); make one with `clipcap export`"
        )
    return read_versioned_json(
        path,
        format=BUNDLE_FORMAT,
        version=BUNDLE_FORMAT_VERSION,
        version_key="format_version",
        what="bundle manifest",
        fix="export the bundle again",
        error=BundleError,
        max_bytes=MAX_MANIFEST_BYTES,  # a manifest is ~10 kB; anything far larger is not one
    )
