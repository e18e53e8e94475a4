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

Torch-free: the standard library only.
"""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

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
MAX_PROBLEMS = 5  # messages kept for the summary; the counts cover every skipped row
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")  # Conceptual Captions downloads, in lookup order
FOLDER_CAPTION_FILES = ("captions.jsonl", "captions.csv")  # looked for when the source is a directory
CSV_COLUMNS = ("image", "caption", "split", "image_id")

# Why a row was skipped.
MALFORMED = "malformed"
MISSING_FIELD = "missing field"
EMPTY_CAPTION = "empty caption"


@dataclass(frozen=True)
class Example:
    """One image and its reference captions."""

    image: Path
    captions: tuple[str, ...]
    image_id: str
    split: str = "train"


@dataclass
class ReadResult:
    """What a reader found: the usable examples, and the rows it skipped (reason -> count)."""

    examples: list[Example]
    skipped: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # the first few skip messages
    format: str = ""  # the format read: "coco-karpathy", "coco-clipcap", "conceptual", "folder-jsonl", ...

    def skip(self, reason: str, message: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(message)

    @property
    def skipped_count(self) -> int:
        return sum(self.skipped.values())


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


# --------------------------------------------------------------------------------------------------
# COCO


def read_coco(path: str | Path, image_root: str | Path | None = None) -> ReadResult:
    """COCO captions from Karpathy's ``dataset_coco.json`` or ClipCap's ``train_caption.json``.

    ``image_root`` (default: the JSON file's folder) holds ``train2014/`` and ``val2014/``.

    Karpathy's file (``{"images": [...]}``): one example per image, at
    ``image_root / filepath / filename``, id ``cocoid``, captions the sentences' ``raw`` text, split
    as given except that **"restval" becomes "train"**: the usual practice with the Karpathy split
    (ClipCap's and most captioning papers' 113k training images are train + restval; val and test
    keep 5000 images each). An empty sentence is dropped and counted; an image left without one is
    skipped.

    ClipCap's file (a list of ``{"image_id": 522418, "caption": "..."}``): rows grouped by image
    into one example each, in order of first appearance, all split "train". The image is
    ``train2014/COCO_train2014_{id:012d}.jpg`` or, when only that one exists,
    ``val2014/COCO_val2014_{id:012d}.jpg`` (the file mixes both: ClipCap trained on Karpathy's
    train + restval); when neither exists the train2014 path is kept and `clipcap embed` counts it
    missing.
    """
    path = Path(path).expanduser()
    data = _read_json(path)
    root = Path(image_root).expanduser() if image_root is not None else path.parent
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        return _read_karpathy(data["images"], root)
    if isinstance(data, list):
        return _read_clipcap_coco(data, root)
    raise DataError(
        f"{path}: not a COCO captions file this reads: expected Karpathy's dataset_coco.json "
        '({"images": [...]}) or ClipCap\'s train_caption.json (a list of {"image_id", "caption"})'
    )


def _read_karpathy(images: list[Any], root: Path) -> ReadResult:
    result = ReadResult([], format="coco-karpathy")
    for i, entry in enumerate(images):
        where = f"images[{i}]"
        if not isinstance(entry, dict):
            result.skip(MALFORMED, f"{where}: not an object")
            continue
        filename = entry.get("filename")
        sentences = entry.get("sentences")
        if not isinstance(filename, str) or not filename or not isinstance(sentences, list):
            result.skip(MISSING_FIELD, f"{where}: needs a 'filename' and a 'sentences' list")
            continue
        captions = []
        for sentence in sentences:
            text = _sentence_text(sentence)
            if text:
                captions.append(text)
            else:
                result.skip(EMPTY_CAPTION, f"{where} ({filename}): an empty or malformed sentence")
        if not captions:
            result.skip(EMPTY_CAPTION, f"{where} ({filename}): no caption left")
            continue
        filepath = entry.get("filepath")
        image = root / filepath / filename if isinstance(filepath, str) else root / filename
        image_id = entry.get("cocoid", entry.get("imgid", Path(filename).stem))
        split = str(entry.get("split", "train"))
        result.examples.append(
            Example(image, tuple(captions), str(image_id), "train" if split == "restval" else split)
        )
    return result


def _sentence_text(sentence: Any) -> str:
    if not isinstance(sentence, dict):
        return ""
    raw = sentence.get("raw")
    if isinstance(raw, str):
        return raw.strip()
    tokens = sentence.get("tokens")
    if isinstance(tokens, list) and all(isinstance(t, str) for t in tokens):
        return " ".join(tokens).strip()
    return ""


def _read_clipcap_coco(rows: list[Any], root: Path) -> ReadResult:
    result = ReadResult([], format="coco-clipcap")
    captions: dict[int, list[str]] = {}  # insertion order: first appearance
    for i, row in enumerate(rows):
        where = f"[{i}]"
        if not isinstance(row, dict):
            result.skip(MALFORMED, f"{where}: not an object")
            continue
        image_id, caption = row.get("image_id"), row.get("caption")
        if image_id is None or caption is None:
            result.skip(MISSING_FIELD, f"{where}: needs 'image_id' and 'caption'")
            continue
        try:
            number = int(image_id)
        except (TypeError, ValueError):
            result.skip(MALFORMED, f"{where}: image_id {image_id!r} is not a COCO image number")
            continue
        if not isinstance(caption, str) or not caption.strip():
            result.skip(EMPTY_CAPTION, f"{where} (image {number}): an empty caption")
            continue
        captions.setdefault(number, []).append(caption.strip())
    for number, texts in captions.items():
        result.examples.append(Example(_coco_image(root, number), tuple(texts), str(number), "train"))
    return result


def _coco_image(root: Path, number: int) -> Path:
    train = root / "train2014" / f"COCO_train2014_{number:012d}.jpg"
    if train.is_file():
        return train
    val = root / "val2014" / f"COCO_val2014_{number:012d}.jpg"
    return val if val.is_file() else train


# --------------------------------------------------------------------------------------------------
# Conceptual Captions


def read_conceptual(
    path: str | Path, image_dir: str | Path | None = None, *, split: str = "train"
) -> ReadResult:
    """Conceptual Captions from Google's TSV: each line ``caption<TAB>url``, no header.

    Row i (0-based, counting every line, so that the numbering matches the download's) is the image
    ``image_dir / f"{i:08d}.jpg"``, or the same stem with .jpeg, .png or .webp when only such a file
    exists. An optional third column names the image file relative to ``image_dir`` instead.
    ``image_dir`` defaults to the TSV's folder; the image id is the row index; every example gets
    ``split``. The URL is not used: images are never downloaded here.
    """
    path = Path(path).expanduser()
    folder = Path(image_dir).expanduser() if image_dir is not None else path.parent
    result = ReadResult([], format="conceptual")
    for i, line in enumerate(_lines(path)):
        if not line.strip():
            continue
        columns = line.split("\t")
        where = f"{path.name} line {i + 1}"
        if len(columns) < 2 or len(columns) > 3:
            result.skip(
                MALFORMED, f"{where}: expected caption<TAB>url[<TAB>file], got {len(columns)} columns"
            )
            continue
        caption = columns[0].strip()
        if not caption:
            result.skip(EMPTY_CAPTION, f"{where}: an empty caption")
            continue
        name = columns[2].strip() if len(columns) == 3 else ""
        image = folder / name if name else _numbered_image(folder, i)
        result.examples.append(Example(image, (caption,), str(i), split))
    return result


def _numbered_image(folder: Path, index: int) -> Path:
    stem = f"{index:08d}"
    for extension in IMAGE_EXTENSIONS:
        candidate = folder / (stem + extension)
        if candidate.is_file():
            return candidate
    return folder / (stem + IMAGE_EXTENSIONS[0])


# --------------------------------------------------------------------------------------------------
# A folder with a captions file


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


# --------------------------------------------------------------------------------------------------
# Files


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


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: no such dataset file; check the path")
    if not path.is_file():
        raise DataError(f"{path}: not a file; pass the dataset's captions file")


def _read_json(path: Path) -> Any:
    _check_file(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot be read ({e})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e}); for JSON lines name the file .jsonl") from None


def _lines(path: Path) -> Iterator[str]:
    """The file's lines, read as they are needed (a Conceptual Captions TSV has millions)."""
    # Lines end at "\n" only: a stray "\r" inside a caption must not shift the row numbering.
    with _open_text(path, newline="\n") as f:
        try:
            for line in f:
                yield line.rstrip("\r\n")
        except OSError as e:
            raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None


@contextlib.contextmanager
def _open_text(path: Path, newline: str) -> Iterator[TextIO]:
    # Undecodable bytes become U+FFFD: a stray byte costs one character of one caption, not the file.
    _check_file(path)
    try:
        f = open(path, encoding="utf-8-sig", errors="replace", newline=newline)  # noqa: SIM115 - with f below
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
    with f:
        yield f
