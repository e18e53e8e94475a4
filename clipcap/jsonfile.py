"""The project's versioned JSON files (bundle manifest, embedding-set meta, trainer state), read one
way: present, parseable, an object, the right ``format``, a version this code reads. Torch-free.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from clipcap.errors import ClipCapError, OptionsError


def read_versioned_json(
    path: Path,
    *,
    format: str,
    version: int,
    version_key: str = "version",
    what: str,
    fix: str,
    error: type[ClipCapError],
    max_bytes: int = 64 << 20,
) -> dict[str, Any]:
    """``path`` parsed, or ``error`` naming the file, what is wrong and ``fix``.

    ``what`` names the file for people ("bundle manifest"); ``fix`` is how to get a good one
    ("export the bundle again"). A file over ``max_bytes`` is refused before it is read.
    """
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise error(f"{path}: {size} bytes is too large for a {what}; {fix}")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise error(f"{path}: unreadable {what} ({e}); {fix}") from None
    if not isinstance(data, dict) or data.get("format") != format:
        raise error(f"{path}: not a {format} file; {fix}")
    if data.get(version_key) != version:
        raise error(
            f"{path}: {what} format version {data.get(version_key)!r} is not supported "
            f"(this clipcap-onnx reads version {version}); {fix}"
        )
    return data


def from_json_object(cls: type, data: Any, what: str, error: type[ClipCapError] = OptionsError) -> Any:
    """A dataclass from a JSON object: an unknown key is refused by name, not silently dropped,
    and a missing or mistyped one is one ``error``. ``what`` names the keys ("decoding options")."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise error(f"{what} must be a JSON object, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise error(f"unknown {what}: {', '.join(map(str, unknown))}")
    try:
        return cls(**data)
    except TypeError as e:
        raise error(f"{what}: {e}") from None
