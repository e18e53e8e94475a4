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
    if path.stat().st_size > MAX_MANIFEST_BYTES:  # a manifest is ~10 kB; this is not one
        raise BundleError(
            f"{path}: {path.stat().st_size} bytes is too large for a manifest; export the bundle again"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise BundleError(f"{path}: unreadable manifest ({e}); export the bundle again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: not a {BUNDLE_FORMAT} manifest")
    if manifest.get("format_version") != BUNDLE_FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format version {manifest.get('format_version')} is not supported by this "
            f"clipcap-onnx (it reads version {BUNDLE_FORMAT_VERSION}); export the bundle again"
        )
    return manifest
