"""Captioned image sets as a list of :class:`Example`: COCO, Conceptual Captions, or a plain folder.

Each reader turns one dataset file into examples (an image path, its captions, an id and a split)
and never raises for a bad row: a malformed line, a missing field or an empty caption is skipped
and counted in :attr:`ReadResult.skipped`, with the first few messages kept in
:attr:`ReadResult.problems`, so that one bad row of a million does not stop `clipcap embed`. Only a
dataset *file* that is missing, unreadable or of the wrong shape is a :class:`DataError`.

Images are not opened here (that is `clipcap embed`'s job, which counts missing and corrupt ones),
so reading is fast; a path may name a file that does not exist.

Formats (see :func:`read_dataset`):

- ``coco``: Karpathy's split file ``dataset_coco.json``, or the ClipCap repository's
  ``train_caption.json`` (detected from the JSON's shape);
- ``conceptual``: Google's Conceptual Captions TSV (``caption<TAB>url``, no header);
- ``folder``: a captions file beside the images, JSONL or CSV.

The readers live in one module per source (``coco``, ``conceptual``, ``folder``) on what they share
(``dataset_base``); this module chooses among them and re-exports their names.

Torch-free: the standard library only.
"""

from __future__ import annotations

from pathlib import Path

from clipcap.data.coco import read_coco
from clipcap.data.conceptual import IMAGE_EXTENSIONS, read_conceptual  # noqa: F401 - re-exported
from clipcap.data.dataset_base import (  # noqa: F401 - re-exported
    EMPTY_CAPTION,
    MALFORMED,
    MAX_PROBLEMS,
    MISSING_FIELD,
    Example,
    ReadResult,
)
from clipcap.data.folder import CSV_COLUMNS, read_folder  # noqa: F401 - re-exported
from clipcap.errors import DataError, OptionsError

__all__ = [
    "FORMATS",
    "Example",
    "ReadResult",
    "read_coco",
    "read_conceptual",
    "read_dataset",
    "read_folder",
]

FORMATS = ("auto", "coco", "conceptual", "folder")
FOLDER_CAPTION_FILES = ("captions.jsonl", "captions.csv")  # looked for when the source is a directory


def read_dataset(
    source: str | Path,
    images: str | Path | None = None,
    format: str = "auto",
    *,
    split: str | None = None,
) -> ReadResult:
    """Read a captioned image set.

    Args:
        source: the dataset file: a COCO ``.json``, a Conceptual Captions ``.tsv``, or a folder's
            ``.jsonl`` / ``.csv`` captions file; or a directory holding ``captions.jsonl`` or
            ``captions.csv``.
        images: the image root (default: the dataset file's folder). COCO: the folder holding
            ``train2014/`` and ``val2014/``; Conceptual Captions: the folder of downloaded images;
            folder: what the captions file's paths are relative to.
        format: "coco", "conceptual", "folder", or "auto" (from the extension: .json -> coco,
            .tsv -> conceptual, .jsonl / .csv -> folder).
        split: the split of every Conceptual Captions row (default "train"); the other formats name
            each image's split themselves, so it is an error with them.

    Raises:
        DataError: a missing or unreadable dataset file, an unknown extension, or a
            file whose overall shape is not the format's.
    """
    if format not in FORMATS:
        raise OptionsError(f"dataset format {format!r}: choose one of {', '.join(FORMATS)}")
    path = Path(source).expanduser()
    if path.is_dir():
        path = _captions_file_in(path)
    if format == "auto":
        format = _format_from_extension(path)
    if split is not None and format != "conceptual":
        raise OptionsError(
            f"--split {split}: only a Conceptual Captions TSV takes one split for all its rows; "
            f"a {format} dataset names each image's split itself"
        )
    if format == "coco":
        return read_coco(path, images)
    if format == "conceptual":
        return read_conceptual(path, images, split=split or "train")
    return read_folder(path, images)


def _format_from_extension(path: Path) -> str:
    suffix = path.suffix.lower()
    formats = {".json": "coco", ".tsv": "conceptual", ".jsonl": "folder", ".csv": "folder"}
    if suffix not in formats:
        raise DataError(
            f"{path}: cannot tell the dataset format from the extension {suffix or '(none)'}; "
            "pass --format coco, conceptual or folder"
        )
    return formats[suffix]


def _captions_file_in(directory: Path) -> Path:
    for name in FOLDER_CAPTION_FILES:
        if (directory / name).is_file():
            return directory / name
    raise DataError(
        f"{directory}: a directory without {' or '.join(FOLDER_CAPTION_FILES)}; pass the dataset file itself"
    )
