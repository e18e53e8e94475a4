"""`clipcap eval`: caption an embedding set with a bundle or a checkpoint, and score it.

Captioning with a bundle needs no PyTorch (ONNX Runtime only); a checkpoint captions with the
PyTorch reference decoder, and an fp32 bundle's captions equal it token for token. The metrics
are clipcap.eval.metrics' (pycocoevalcap's scorers; see there for which need Java).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipcap.data.embeddings import EmbeddingSet, load_embeddings
from clipcap.errors import OptionsError, require
from clipcap.eval.metrics import (  # noqa: F401 - re-exported: the scoring API lives in clipcap.eval.metrics
    METRICS,
    Scores,
    exact_match,
    normalize_caption,
    score_captions,
)
from clipcap.manifest import MANIFEST_NAME
from clipcap.options import DecodingOptions

log = logging.getLogger(__name__)


# --- Captioning an embedding set ---------------------------------------------------------------------


@dataclass
class Captioning:
    """A loaded captioner, ready: its decoding options are chosen and checked, nothing has run yet."""

    kind: str  # "bundle" or "checkpoint"
    caption: Callable[[np.ndarray], list[str]]  # CLIP embeddings [N, D] -> N captions
    options: DecodingOptions
    clip_dim: int
    clip: tuple[str, str] | None  # (backend, model) of the CLIP the model was trained on, when known


def bundle_captioning(
    bundle_dir: str | Path,
    overrides: Mapping[str, Any] | None = None,
    *,
    provider: str = "cpu",
    batch_size: int = 64,
) -> Captioning:
    """A bundle's captioner (ONNX Runtime): the bundle's decoding defaults, then ``overrides``."""
    from clipcap.runtime import Captioner

    _check_batch_size(batch_size)
    captioner = Captioner(bundle_dir, provider=provider)
    options = captioner.options(**dict(overrides or {}))

    def caption(embeds: np.ndarray) -> list[str]:
        return [c.text for c in captioner.caption_embeddings(embeds, options, batch_size=batch_size)]

    clip = captioner.bundle.manifest.get("clip") or {}
    known = (clip["backend"], clip["model"]) if clip.get("backend") and clip.get("model") else None
    return Captioning("bundle", caption, options, captioner.clip_dim, known)


def checkpoint_captioning(
    checkpoint: Any,
    overrides: Mapping[str, Any] | None = None,
    *,
    device: str = "auto",
    batch_size: int = 64,
    tokenizer: Any = None,
) -> Captioning:
    """A checkpoint's captioner (PyTorch, clipcap.models.generate): its defaults, then ``overrides``.

    ``checkpoint``: a path load_checkpoint reads, or a loaded ClipCapModel (moved to ``device``; put
    in eval mode while it captions, then back). ``tokenizer``: a Tokenizer, a path, or None for
    the ``tokenizer.json`` beside the checkpoint when there is one, else the packaged GPT-2 one.
    """
    torch = _torch()
    from clipcap.models.checkpoints import load_checkpoint
    from clipcap.models.generate import generate
    from clipcap.models.model import ClipCapModel

    _check_batch_size(batch_size)
    from clipcap.models.device import torch_device

    target = torch_device(device)
    model = checkpoint if isinstance(checkpoint, ClipCapModel) else load_checkpoint(checkpoint)
    tok = _checkpoint_tokenizer(checkpoint, tokenizer, model.config.gpt2.vocab_size)
    try:
        options = model.config.generation.replace(**dict(overrides or {}))
    except TypeError as e:
        raise OptionsError(f"unknown decoding option: {e}") from None
    options.check_context(model.prefix_length, model.config.gpt2.n_positions)
    model.to(target)

    def caption(embeds: np.ndarray) -> list[str]:
        was_training = model.training
        model.eval()
        try:
            texts = []
            for start in range(0, len(embeds), batch_size):
                batch = np.ascontiguousarray(embeds[start : start + batch_size], dtype=np.float32)
                for g in generate(model, torch.from_numpy(batch).to(target), options):
                    texts.append(tok.decode(g.tokens, skip_special_tokens=True))
            return texts
        finally:
            model.train(was_training)

    clip = model.config.clip
    known = (clip.backend, clip.model) if clip is not None else None
    return Captioning("checkpoint", caption, options, model.config.mapper.clip_dim, known)


def caption_with_bundle(
    bundle_dir: str | Path,
    embeds: np.ndarray,
    options_overrides: Mapping[str, Any] | None = None,
    *,
    provider: str = "cpu",
    batch_size: int = 64,
) -> list[str]:
    """Caption CLIP embeddings [N, D] with an exported bundle (clipcap.runtime.Captioner)."""
    captioning = bundle_captioning(bundle_dir, options_overrides, provider=provider, batch_size=batch_size)
    return captioning.caption(_checked_embeds(embeds, captioning.clip_dim))


def caption_with_checkpoint(
    checkpoint: Any,
    embeds: np.ndarray,
    overrides: Mapping[str, Any] | None = None,
    *,
    device: str = "auto",
    batch_size: int = 64,
    tokenizer: Any = None,
) -> list[str]:
    """Caption CLIP embeddings [N, D] with a checkpoint (PyTorch reference decoder); the runtime's text."""
    captioning = checkpoint_captioning(
        checkpoint, overrides, device=device, batch_size=batch_size, tokenizer=tokenizer
    )
    return captioning.caption(_checked_embeds(embeds, captioning.clip_dim))


def _checked_embeds(embeds: np.ndarray, clip_dim: int, where: str = "the embeddings") -> np.ndarray:
    embeds = np.asarray(embeds)
    if embeds.ndim != 2 or embeds.shape[1] != clip_dim:
        raise OptionsError(
            f"{where} have shape {list(embeds.shape)} but the model takes [N, {clip_dim}] CLIP "
            "embeddings: embed the images with the CLIP the model was trained on"
        )
    return embeds


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise OptionsError(f"batch_size must be >= 1, got {batch_size}")


def _checkpoint_tokenizer(checkpoint: Any, tokenizer: Any, vocab_size: int) -> Any:
    from clipcap.tokenizer import TOKENIZER_FILE, load_tokenizer

    if tokenizer is None and isinstance(checkpoint, (str, Path)):
        path = Path(checkpoint)
        beside = (path if path.is_dir() else path.parent) / TOKENIZER_FILE
        tokenizer = beside if beside.is_file() else None
    tok = tokenizer if hasattr(tokenizer, "decode") else load_tokenizer(tokenizer)
    if tok.get_vocab_size() != vocab_size:
        raise OptionsError(
            f"the tokenizer has {tok.get_vocab_size()} tokens but GPT-2's vocabulary has {vocab_size}: "
            "pass the checkpoint's own tokenizer (--tokenizer)"
        )
    return tok


def _torch() -> Any:
    return require("torch", "export")


# --- Evaluation -------------------------------------------------------------------------------------


@dataclass
class EvalResult:
    """Scores and, per image, its caption and references; with what made them."""

    scores: Scores
    predictions: list[dict[str, Any]]  # {"image_id", "image", "caption", "references"}, in data order
    options: DecodingOptions
    source: str
    kind: str  # "bundle" or "checkpoint"
    data: str
    split: str

    def to_dict(self) -> dict[str, Any]:
        """The scores and their provenance (not the predictions: see save_predictions)."""
        return {
            "scores": self.scores.to_dict(),
            "source": {"kind": self.kind, "path": self.source},
            "data": {"path": self.data, "split": self.split, "images": self.scores.n},
            "decoding": self.options.to_dict(),
        }

    def save_scores(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    def save_predictions(self, path: str | Path) -> Path:
        """One JSON object a line: image_id, image, caption, references."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in self.predictions)
        path.write_text(text, encoding="utf-8")
        return path


def evaluate(
    source: Any,
    data_dir: str | Path,
    *,
    kind: str | None = None,
    split: str | Sequence[str] = "test",
    limit: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    provider: str = "cpu",
    device: str = "auto",
    tokenizer: Any = None,
    batch_size: int = 64,
    java: bool | None = None,
    metrics: Iterable[str] | None = None,
    progress: bool | None = None,
) -> EvalResult:
    """Caption an embedding set's split with a bundle or a checkpoint and score it against its captions.

    Args:
        source: a bundle directory (it holds clipcap.json), a checkpoint path, or a ClipCapModel.
        kind: "bundle" or "checkpoint"; None tells them apart by the bundle's manifest.
        split: a split name, several, or "all" for every row.
        limit: caption only the first ``limit`` rows of the split.
        overrides: decoding options over the source's defaults (strategy, beam_size, ...).
        provider: ONNX Runtime's, for a bundle. device, tokenizer: PyTorch's, for a checkpoint.
        java, metrics: as for :func:`score_captions`.
        progress: a bar over the captions on stderr; None (default) shows it on a terminal only.
    """
    data = select_rows(load_embeddings(data_dir), split, limit, data_dir)
    kind = kind or _source_kind(source)
    if kind == "bundle":
        captioning = bundle_captioning(source, overrides, provider=provider, batch_size=batch_size)
    elif kind == "checkpoint":
        captioning = checkpoint_captioning(
            source, overrides, device=device, batch_size=batch_size, tokenizer=tokenizer
        )
    else:
        raise OptionsError(f"kind must be 'bundle' or 'checkpoint', got {kind!r}")
    _checked_embeds(data.embeds, captioning.clip_dim, f"the embeddings in {data_dir}")
    if data.clip is not None and _other_clip((data.clip.backend, data.clip.model), captioning.clip):
        log.warning(
            "%s was embedded with CLIP %s but the %s was trained on %s: expect poor captions",
            data_dir,
            data.clip.model,
            kind,
            captioning.clip[1],  # type: ignore[index]
        )
    captions = _caption_with_progress(captioning, data.embeds, batch_size, progress)
    references = data.references()
    scores = score_captions(captions, references, java=java, metrics=metrics)
    predictions = [
        {"image_id": r["image_id"], "image": r["image"], "caption": c, "references": refs}
        for r, c, refs in zip(data.records, captions, references, strict=True)
    ]
    split_name = split if isinstance(split, str) else ",".join(split)
    return EvalResult(scores, predictions, captioning.options, str(source), kind, str(data_dir), split_name)


def _caption_with_progress(
    captioning: Captioning, embeds: np.ndarray, batch_size: int, progress: bool | None
) -> list[str]:
    """Caption in blocks of ``batch_size`` rows, with a tqdm bar over the rows (a long split takes
    minutes, and a silent terminal looks like a hang)."""
    if progress is False:
        return captioning.caption(embeds)
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm comes with the train extra; without it, no bar unless one was asked for
        if progress:
            raise
        return captioning.caption(embeds)
    captions: list[str] = []
    # disable=None: tqdm shows the bar on a terminal only, not in a redirected log.
    with tqdm(
        total=len(embeds), unit="caption", desc="captioning", disable=None if progress is None else False
    ) as bar:
        for start in range(0, len(embeds), batch_size):
            block = captioning.caption(embeds[start : start + batch_size])
            captions += block
            bar.update(len(block))
    return captions


def select_rows(
    data: EmbeddingSet, split: str | Sequence[str], limit: int | None, where: str | Path = "the embedding set"
) -> EmbeddingSet:
    """The rows of ``split`` ("all": every row), the first ``limit`` of them; each must have references."""
    names = [split] if isinstance(split, str) else list(split)
    chosen = data if "all" in names else data.split(*names)
    if len(chosen) == 0:
        have = ", ".join(f"{name} ({count})" for name, count in sorted(data.splits.items())) or "none"
        raise OptionsError(
            f"{where}: no rows in split {'/'.join(names)}; its splits are: {have} (or 'all' for every row)"
        )
    if limit is not None:
        if limit < 1:
            raise OptionsError(f"limit must be >= 1, got {limit}")
        chosen = EmbeddingSet(chosen.embeds[:limit], chosen.records[:limit], chosen.clip, chosen.meta)
    bare = [r["image"] or r["image_id"] for r in chosen.records if not r["captions"]]
    if bare:
        raise OptionsError(
            f"{where}: {len(bare)} of the chosen images have no reference captions (first: {bare[0]}); "
            "scoring needs at least one per image"
        )
    return chosen


def _other_clip(embedded: tuple[str, str], trained: tuple[str, str] | None) -> bool:
    """Surely a different CLIP? Names compare only within a backend, and -quickgelu is the same weights."""
    if trained is None or embedded[0] != trained[0]:
        return False
    name = [m.lower().removesuffix("-quickgelu") for m in (embedded[1], trained[1])]
    return name[0] != name[1]


def _source_kind(source: Any) -> str:
    if isinstance(source, (str, Path)) and (Path(source) / MANIFEST_NAME).is_file():
        return "bundle"
    return "checkpoint"
