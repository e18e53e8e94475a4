"""`clipcap embed`'s resumable state in ``OUT/.partial/``: the plan (a fingerprint of the inputs), the
finished shards written atomically, their merge, and what ``--force`` discards.

Torch-free: numpy and safetensors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from clipcap.config import ClipSpec
from clipcap.data.datasets import Example
from clipcap.data.embeddings import CAPTIONS_FILE, EMBEDS_FILE, META_FILE, TENSOR_NAME
from clipcap.errors import OptionsError

PARTIAL_DIR = ".partial"
PLAN_FILE = "plan.json"
PLAN_FORMAT = "clipcap-embed-plan"
PLAN_VERSION = 1
SKIPPED_FILE = "skipped.jsonl"


def _plan(examples: list[Example], clip: ClipSpec, shard_size: int) -> dict[str, Any]:
    """What the shards depend on: a resumed run must have the same."""
    digest = hashlib.sha256()
    for e in examples:
        row = [str(e.image), e.image_id, e.split, list(e.captions)]
        digest.update(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n")
    plan = {
        "format": PLAN_FORMAT,
        "version": PLAN_VERSION,
        "count": len(examples),
        "examples_sha256": digest.hexdigest(),
        "clip": dataclasses.asdict(clip),
        "shard_size": shard_size,
    }
    return json.loads(json.dumps(plan))  # tuples become lists, as when read back


def _start_or_resume(partial: Path, plan: dict[str, Any]) -> None:
    plan_path = partial / PLAN_FILE
    if not plan_path.is_file():
        # No plan: nothing here can be trusted to belong to these inputs.
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        _write_text(plan_path, json.dumps(plan, indent=2) + "\n")
        return
    out_dir = partial.parent
    try:
        saved = json.loads(plan_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OptionsError(
            f"{plan_path}: unreadable ({e}); pass --force to discard the interrupted run and start over"
        ) from None
    if saved != plan:
        what = {
            "count": "the number of examples",
            "examples_sha256": "the images or captions",
            "clip": "the CLIP",
            "shard_size": "the shard size",
            "version": "the plan version",
        }
        differs = [v for k, v in what.items() if not isinstance(saved, dict) or saved.get(k) != plan[k]]
        raise OptionsError(
            f"{out_dir} holds an interrupted run for other inputs ({', '.join(differs) or 'the plan'} "
            f"{'differs' if len(differs) == 1 else 'differ'}); pass --force to discard it and start over, "
            "or another --out"
        )


def _shard_path(partial: Path, k: int, suffix: str) -> Path:
    return partial / f"shard-{k:06d}{suffix}"


def _write_shard(
    partial: Path,
    k: int,
    embeds: np.ndarray,
    records: list[dict[str, Any]],
    skipped: list[dict[str, Any]],
) -> None:
    from safetensors.numpy import save_file

    tensors = _shard_path(partial, k, ".safetensors")
    tmp = tensors.with_name(tensors.name + ".tmp")
    save_file({TENSOR_NAME: np.ascontiguousarray(embeds, dtype=np.float32)}, str(tmp))
    os.replace(tmp, tensors)
    # The .json last: its presence marks the shard done.
    entries = {"records": records, "skipped": skipped}
    _write_text(_shard_path(partial, k, ".json"), json.dumps(entries, ensure_ascii=False) + "\n")


def _read_shard_entries(partial: Path, k: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    path = _shard_path(partial, k, ".json")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        return list(entries["records"]), list(entries["skipped"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise _damaged(path, e) from None


def _merge_shards(
    partial: Path, n_shards: int, dim: int
) -> tuple[np.ndarray, list[dict[str, Any]], list[dict[str, Any]]]:
    from safetensors.numpy import load_file

    embeds: list[np.ndarray] = []
    records: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for k in range(n_shards):
        shard_records, shard_skipped = _read_shard_entries(partial, k)
        path = _shard_path(partial, k, ".safetensors")
        try:
            shard_embeds = load_file(str(path))[TENSOR_NAME]
        except Exception as e:  # missing, truncated, wrong key: all the same to the user
            raise _damaged(path, e) from None
        if len(shard_embeds) != len(shard_records):
            raise _damaged(path, f"{len(shard_embeds)} embeddings for {len(shard_records)} records")
        embeds.append(shard_embeds)
        records.extend(shard_records)
        skipped.extend(shard_skipped)
    kept = [e for e in embeds if len(e)]
    return (np.concatenate(kept) if kept else np.zeros((0, dim), np.float32)), records, skipped


def _damaged(path: Path, problem: object) -> OptionsError:
    return OptionsError(
        f"{path}: a damaged shard of an interrupted run ({problem}); pass --force to start over"
    )


def _discard(out_dir: Path) -> None:
    """Remove what `clipcap embed` writes in ``out_dir``, and nothing else."""
    if (out_dir / PARTIAL_DIR).exists():
        shutil.rmtree(out_dir / PARTIAL_DIR)
    # meta.json first: without it the directory no longer reads as a complete set.
    for name in (META_FILE, EMBEDS_FILE, CAPTIONS_FILE, SKIPPED_FILE):
        (out_dir / name).unlink(missing_ok=True)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
