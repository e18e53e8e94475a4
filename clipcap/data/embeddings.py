"""The embedding set: CLIP image embeddings of a captioned image set, as `clipcap embed` writes them.

A directory of three files, no pickle:

- ``embeddings.safetensors``: one float32 tensor ``image_embeds`` [N, D], un-normalised (as the
  CLIP encoder returns it; a model that wants them normalised does it itself);
- ``captions.jsonl``: N lines in the same order, one image each:
  ``{"image": path, "image_id": str, "captions": [str, ...], "split": "train" | "val" | "test" | ...}``;
- ``meta.json``: ``{"format": "clipcap-embeddings", "version": 1, "count": N, "dim": D,
  "clip": ClipSpec as a dict or null, "source": {...}, "skipped": {reason: count}}``.

Training, evaluation and the demo read it with :func:`load_embeddings`. numpy only (safetensors'
numpy API), so a runtime-side evaluation never needs torch.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipcap.config import ClipSpec, Preprocessing
from clipcap.errors import DataError, require
from clipcap.jsonfile import read_versioned_json

EMBEDDINGS_FORMAT = "clipcap-embeddings"
EMBEDDINGS_VERSION = 1
EMBEDS_FILE = "embeddings.safetensors"
CAPTIONS_FILE = "captions.jsonl"
META_FILE = "meta.json"
TENSOR_NAME = "image_embeds"


@dataclass
class EmbeddingSet:
    """CLIP embeddings [N, D] with, for each row, its image's record (image, image_id, captions, split)."""

    embeds: np.ndarray
    records: list[dict[str, Any]]
    clip: ClipSpec | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.embeds.ndim != 2 or len(self.embeds) != len(self.records):
            raise DataError(
                f"an embedding set needs embeddings [N, D] and N records; got {list(self.embeds.shape)} "
                f"and {len(self.records)} records"
            )

    def __len__(self) -> int:
        return len(self.records)

    @property
    def dim(self) -> int:
        return int(self.embeds.shape[1])

    @property
    def splits(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.records:
            counts[r["split"]] = counts.get(r["split"], 0) + 1
        return counts

    def split(self, *names: str) -> EmbeddingSet:
        """The rows whose split is one of ``names`` (an empty set when none is)."""
        rows = [i for i, r in enumerate(self.records) if r["split"] in names]
        return EmbeddingSet(self.embeds[rows], [self.records[i] for i in rows], self.clip, self.meta)

    def references(self) -> list[list[str]]:
        return [list(r["captions"]) for r in self.records]


def write_embeddings(
    directory: str | Path,
    embeds: np.ndarray,
    records: Sequence[dict[str, Any]],
    *,
    clip: ClipSpec | None = None,
    source: dict[str, Any] | None = None,
    skipped: dict[str, int] | None = None,
) -> Path:
    """Write an embedding set; the files appear complete or not at all (each is renamed into place)."""
    save = _safetensors_numpy().save
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    embeds = np.ascontiguousarray(embeds, dtype=np.float32)
    records = [_record(r, i) for i, r in enumerate(records)]
    EmbeddingSet(embeds, records)  # shape checks
    meta = {
        "format": EMBEDDINGS_FORMAT,
        "version": EMBEDDINGS_VERSION,
        "count": len(records),
        "dim": int(embeds.shape[1]),
        "clip": None if clip is None else dataclasses.asdict(clip),
        "source": source or {},
        "skipped": skipped or {},
    }
    # meta.json last: its presence marks a complete set.
    (directory / META_FILE).unlink(missing_ok=True)
    _write_bytes(directory / EMBEDS_FILE, save({TENSOR_NAME: embeds}))
    _write_text(directory / CAPTIONS_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    _write_text(directory / META_FILE, json.dumps(meta, indent=2) + "\n")
    return directory


def load_embeddings(directory: str | Path, split: str | Sequence[str] | None = None) -> EmbeddingSet:
    """Read an embedding set written by `clipcap embed` (or :func:`write_embeddings`).

    ``split``: keep only these splits ("train", or ("val", "test")); None keeps every row.
    """
    directory = Path(directory)
    hint = "make one with `clipcap embed`"
    if not directory.is_dir():
        raise DataError(f"{directory}: no such embedding directory; {hint}")
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise DataError(
            f"{directory}: not a complete embedding set ({META_FILE} is missing; an interrupted "
            f"`clipcap embed` resumes when run again); {hint}"
        )
    meta = read_versioned_json(
        meta_path,
        format=EMBEDDINGS_FORMAT,
        version=EMBEDDINGS_VERSION,
        what="embedding set",
        fix="run `clipcap embed` again",
        error=DataError,
    )
    try:
        tensors = _safetensors_numpy().load_file(str(directory / EMBEDS_FILE))
        embeds = tensors[TENSOR_NAME]
    except Exception as e:  # missing file, truncated header, wrong key: all the same to the user
        raise DataError(
            f"{directory / EMBEDS_FILE}: unreadable ({type(e).__name__}: {e}); run `clipcap embed` again"
        ) from None
    records = []
    try:
        with open(directory / CAPTIONS_FILE, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    records.append(json.loads(line))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{directory / CAPTIONS_FILE}: unreadable ({e}); run `clipcap embed` again") from None
    if len(records) != len(embeds) or meta.get("count") != len(records):
        raise DataError(
            f"{directory}: {len(embeds)} embeddings, {len(records)} caption records and a count of "
            f"{meta.get('count')} disagree; run `clipcap embed` again"
        )
    clip = _clip_spec(meta.get("clip"), meta_path)
    data = EmbeddingSet(embeds.astype(np.float32, copy=False), records, clip, meta)
    if split is not None:
        data = data.split(*([split] if isinstance(split, str) else split))
    return data


def _record(r: dict[str, Any], i: int) -> dict[str, Any]:
    captions = r.get("captions")
    if not isinstance(captions, (list, tuple)) or not all(isinstance(c, str) for c in captions):
        raise DataError(f"record {i}: 'captions' must be a list of strings, got {captions!r}")
    return {
        "image": str(r.get("image", "")),
        "image_id": str(r.get("image_id", i)),
        "captions": list(captions),
        "split": str(r.get("split", "train")),
    }


def _clip_spec(data: Any, path: Path) -> ClipSpec | None:
    if data is None:
        return None
    try:
        data = dict(data)
        data["preprocessing"] = Preprocessing(**data.get("preprocessing", {}))
        return ClipSpec(**data)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: malformed 'clip' entry ({e})") from None


def _write_text(path: Path, text: str) -> None:
    _write_bytes(path, text.encode("utf-8"))


def _write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _safetensors_numpy() -> Any:
    return require("safetensors.numpy", "export")
