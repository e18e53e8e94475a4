"""A plain folder: a JSONL or CSV captions file beside the images. Torch-free."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from clipcap.data.dataset_base import (
    EMPTY_CAPTION,
    MALFORMED,
    MISSING_FIELD,
    Example,
    ReadResult,
    _lines,
    _open_text,
)
from clipcap.errors import DataError

CSV_COLUMNS = ("image", "caption", "split", "image_id")


def read_folder(path: str | Path, image_root: str | Path | None = None) -> ReadResult:
    """A captions file (JSONL or CSV) naming images by path.

    JSONL: one object a line, ``{"image": "dogs/1.jpg", "caption": "a dog"}`` or with
    ``"captions": ["a dog", "a brown dog"]``, and optionally ``"split"`` (default "train") and
    ``"image_id"`` (default: the image path as written). CSV: a header with ``image`` and
    ``caption`` columns, optionally ``split`` and ``image_id``.

    Rows naming the same image are merged into one example, captions in file order; its id and
    split are the first row's. Paths are relative to ``image_root``, by default the captions
    file's folder (an absolute path stays as it is).
    """
    path = Path(path).expanduser()
    root = Path(image_root).expanduser() if image_root is not None else path.parent
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        result = ReadResult([], format="folder-jsonl")
        rows = _jsonl_rows(path, result)
    elif suffix == ".csv":
        result = ReadResult([], format="folder-csv")
        rows = _csv_rows(path)
    else:
        raise DataError(f"{path}: a folder dataset's captions file is .jsonl or .csv")

    merged: dict[Path, tuple[str, str, list[str]]] = {}  # image -> (image_id, split, captions)
    for where, row in rows:
        image = row.get("image")
        if not isinstance(image, str) or not image.strip():
            result.skip(MISSING_FIELD, f"{where}: no 'image' path")
            continue
        captions = _row_captions(row)
        if captions is None:
            result.skip(
                MISSING_FIELD, f"{where}: needs 'caption' (a string) or 'captions' (a list of strings)"
            )
            continue
        if not captions:
            result.skip(EMPTY_CAPTION, f"{where}: an empty caption")
            continue
        image = image.strip()
        key = root / image
        if key in merged:
            merged[key][2].extend(captions)
            continue
        image_id, split = row.get("image_id"), row.get("split")
        merged[key] = (
            image if image_id is None or image_id == "" else str(image_id),
            str(split) if split else "train",
            captions,
        )
    result.examples = [
        Example(image, tuple(captions), image_id, split)
        for image, (image_id, split, captions) in merged.items()
    ]
    return result


def _row_captions(row: dict[str, Any]) -> list[str] | None:
    """The row's non-empty captions; None when it has no caption field of the right type."""
    if "captions" in row and row["captions"] is not None:
        values = row["captions"]
        if not isinstance(values, list) or not all(isinstance(c, str) for c in values):
            return None
    elif isinstance(row.get("caption"), str):
        values = [row["caption"]]
    else:
        return None
    return [c.strip() for c in values if c.strip()]


def _jsonl_rows(path: Path, result: ReadResult) -> Iterator[tuple[str, dict[str, Any]]]:
    for i, line in enumerate(_lines(path)):
        if not line.strip():
            continue
        where = f"{path.name} line {i + 1}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            result.skip(MALFORMED, f"{where}: not JSON ({e.msg})")
            continue
        if not isinstance(row, dict):
            result.skip(MALFORMED, f"{where}: not a JSON object")
            continue
        yield where, row


def _csv_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with _open_text(path, newline="") as f:  # newline="": the csv module handles quoted line breaks
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        if "image" not in columns or "caption" not in columns:
            raise DataError(
                f"{path}: a captions CSV needs a header with 'image' and 'caption' columns "
                f"(optional: split, image_id); its header is {', '.join(columns) or 'empty'}"
            )
        try:
            for row in reader:
                # A short row gives None for its missing columns, which reads as a missing field.
                yield f"{path.name} line {reader.line_num}", {k: row.get(k) for k in CSV_COLUMNS}
        except csv.Error as e:  # a quoting error leaves the reader lost: the rest cannot be trusted
            raise DataError(f"{path} line {reader.line_num}: cannot be parsed as CSV ({e})") from None
