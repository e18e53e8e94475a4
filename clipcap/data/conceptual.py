"""Google's Conceptual Captions TSV (``caption<TAB>url``, no header), its images downloaded and
numbered by row. Torch-free.
"""

from __future__ import annotations

from pathlib import Path

from clipcap.data.dataset_base import (
    EMPTY_CAPTION,
    MALFORMED,
    Example,
    ReadResult,
    _lines,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")  # Conceptual Captions downloads, in lookup order


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
