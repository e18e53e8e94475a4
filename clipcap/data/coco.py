"""COCO captions: Karpathy's split file ``dataset_coco.json`` or the ClipCap repository's
``train_caption.json`` (told apart by the JSON's shape). Torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipcap.data.dataset_base import (
    EMPTY_CAPTION,
    MALFORMED,
    MISSING_FIELD,
    Example,
    ReadResult,
    _read_json,
)
from clipcap.errors import DataError


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
