"""What training reads: the data splits, the tokenizer, the captions as token tensors, and the GPT-2
to start from.

Shapes: N images, M examples (one per (image, caption) pair), L the caption length cap,
B batch, T the longest caption in a batch, D CLIP width.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from clipcap.config import GPT2Config
from clipcap.data.embeddings import EmbeddingSet, load_embeddings
from clipcap.errors import ClipCapError, OptionsError
from clipcap.models.gpt2 import GPT2LMHead
from clipcap.tokenizer import TOKENIZER_FILE, load_tokenizer
from clipcap.train.options import TrainOptions

IGNORE_INDEX = -100  # labels of padding: cross_entropy skips them (never a real token id)


@dataclass
class Batch:
    clip: torch.Tensor  # [B, D] float32
    tokens: torch.Tensor  # [B, T] int64, right-padded (the pad id is irrelevant: masked)
    attention_mask: torch.Tensor  # [B, P+T] int64: 1 for the prefix and real tokens, 0 for padding
    labels: torch.Tensor  # [B, T] int64: the tokens, IGNORE_INDEX at padding


@dataclass
class CaptionData:
    """Training examples, one per (image, caption) pair; every caption ends with EOS unless cut."""

    embeds: torch.Tensor  # [N, D] float32, one row per image
    image: torch.Tensor  # [M] int64: each example's row in embeds
    tokens: torch.Tensor  # [M, L] int32 (half of int64's memory): caption tokens + EOS, right-padded with EOS
    lengths: torch.Tensor  # [M] int64: real tokens per example, EOS included
    truncated: int = 0  # captions longer than L, cut (without EOS: they do not end there)

    def __len__(self) -> int:
        return len(self.image)

    @property
    def max_tokens(self) -> int:
        return self.tokens.size(1)

    def batch(self, index: torch.Tensor, prefix_length: int, device: torch.device) -> Batch:
        """The examples ``index`` [B], padded to their longest caption."""
        lengths = self.lengths[index]  # [B]
        T = int(lengths.max())
        tokens = self.tokens[index, :T].long()  # [B, T]
        real = torch.arange(T)[None, :] < lengths[:, None]  # [B, T]
        prefix = torch.ones(len(index), prefix_length, dtype=torch.long)
        return Batch(
            clip=self.embeds[self.image[index]].to(device),
            tokens=tokens.to(device),
            attention_mask=torch.cat((prefix, real.long()), dim=1).to(device),
            labels=tokens.masked_fill(~real, IGNORE_INDEX).to(device),
        )

    def fingerprint(self) -> str:
        """A hash of the examples, so a resumed run can tell it is given the same data."""
        h = hashlib.sha256()
        for t in (self.embeds, self.image, self.tokens, self.lengths):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()


def caption_data(
    data: EmbeddingSet, tokenizer: Tokenizer, eos_id: int, max_tokens: int | None, limit: int
) -> CaptionData:
    """Tokenize every caption of ``data`` and append EOS; the cap is ``max_tokens`` or the longest
    caption, never above ``limit`` (GPT-2's positions left after the prefix)."""
    pairs = [(i, c.strip()) for i, r in enumerate(data.records) for c in r["captions"] if c.strip()]
    # No special tokens from the tokenizer's post-processor: EOS is added here, and only EOS.
    encoded = tokenizer.encode_batch([c for _, c in pairs], add_special_tokens=False) if pairs else []
    seqs = [[*e.ids, eos_id] for e in encoded]
    L = min(max_tokens or max((len(s) for s in seqs), default=1), limit)
    tokens = np.full((len(seqs), L), eos_id, dtype=np.int32)
    lengths = np.empty(len(seqs), dtype=np.int64)
    for row, s in enumerate(seqs):
        s = s[:L]
        tokens[row, : len(s)] = s
        lengths[row] = len(s)
    return CaptionData(
        embeds=torch.from_numpy(np.ascontiguousarray(data.embeds, dtype=np.float32)),
        image=torch.tensor([i for i, _ in pairs], dtype=torch.long),
        tokens=torch.from_numpy(tokens),
        lengths=torch.from_numpy(lengths),
        truncated=sum(len(s) > L for s in seqs),
    )


def derived_seed(*keys: int) -> int:
    """A 63-bit seed from several integers; SeedSequence mixes them, so neighbours are unrelated."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0]) >> 1


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The example order of one epoch [n]: a permutation from a generator seeded with (seed, epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(derived_seed(seed, epoch)))


def resolve_tokenizer(tokenizer: Any, checkpoint: Path | None) -> Tokenizer:
    """A Tokenizer as given, or loaded: default the checkpoint's tokenizer.json, else GPT-2's."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    if tokenizer is None and checkpoint is not None and (checkpoint / TOKENIZER_FILE).is_file():
        return load_tokenizer(checkpoint / TOKENIZER_FILE)
    return load_tokenizer(tokenizer)


def train_val_splits(data: Any, o: TrainOptions) -> tuple[EmbeddingSet, EmbeddingSet | None]:
    """The training rows (never empty) and the validation rows (None when absent)."""
    if not isinstance(data, EmbeddingSet):
        data = load_embeddings(data)
    train_set = data.split(o.train_split)
    if len(train_set) == 0:
        have = ", ".join(f"{k} ({v})" for k, v in sorted(data.splits.items())) or "none"
        raise OptionsError(
            f"the embedding set has no {o.train_split!r} rows to train on (its splits: {have}); "
            "choose one with train_split (--train-split)"
        )
    val_set = data.split(o.val_split) if o.val_split else None
    return train_set, val_set if val_set is not None and len(val_set) else None


# --- GPT-2 sources ------------------------------------------------------------------------------

_LEGACY = (".attn.bias", ".attn.masked_bias")  # old transformers' causal-mask buffers: no weights


def load_gpt2(source: Any) -> tuple[GPT2LMHead, str]:
    """GPT-2 to start from, and a description of where it came from.

    ``source``: a GPT2LMHead (or transformers GPT2LMHeadModel) instance; a local Hugging Face GPT-2
    directory (config.json + model.safetensors or pytorch_model.bin); a ClipCap checkpoint of any
    format (its GPT-2); or a Hugging Face hub name such as "gpt2" (needs the network or its cache).
    """
    if isinstance(source, GPT2LMHead):
        return source, f"{type(source).__name__} instance"
    if isinstance(source, torch.nn.Module) and hasattr(source, "config"):
        return _from_transformers(source), f"{type(source).__name__} instance"
    if not isinstance(source, (str, Path)):
        raise OptionsError(f"gpt2 must be a name, a path or a GPT-2 model, got {type(source).__name__}")
    path = Path(source).expanduser()
    if path.exists():
        if path.is_dir() and _is_hf_gpt2_dir(path):
            return _from_hf_dir(path), str(path)
        from clipcap.models.checkpoints import load_checkpoint

        try:
            return load_checkpoint(path).gpt, str(path)
        except ClipCapError as e:
            raise OptionsError(
                f"gpt2 {path}: neither a Hugging Face GPT-2 directory (config.json + model.safetensors "
                f"or pytorch_model.bin) nor a readable ClipCap checkpoint ({e})"
            ) from None
    if path.suffix in (".pt", ".pth", ".bin", ".safetensors") or str(source).startswith((".", "/", "~")):
        raise OptionsError(f"gpt2 {source}: no such file or directory")
    return _from_hub(str(source)), str(source)


def _is_hf_gpt2_dir(path: Path) -> bool:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "mapper" not in config and "n_embd" in config


def _gpt2_config(c: dict[str, Any], where: str) -> GPT2Config:
    activation = c.get("activation_function", "gelu_new")
    inner = c.get("n_inner")
    if activation != "gelu_new" or inner not in (None, 4 * c.get("n_embd", 0)):
        raise OptionsError(
            f"{where}: activation_function={activation!r}, n_inner={inner!r}; this GPT-2 implementation "
            "is GPT-2's own (gelu_new, n_inner = 4 x n_embd)"
        )
    try:
        return GPT2Config(
            vocab_size=int(c["vocab_size"]),
            n_positions=int(c.get("n_positions", c.get("n_ctx", 1024))),
            n_embd=int(c["n_embd"]),
            n_layer=int(c["n_layer"]),
            n_head=int(c["n_head"]),
            layer_norm_epsilon=float(c.get("layer_norm_epsilon", 1e-5)),
        )
    except KeyError as e:
        raise OptionsError(f"{where}: GPT-2 config without {e.args[0]!r}") from None


def _from_hf_dir(path: Path) -> GPT2LMHead:
    config = _gpt2_config(json.loads((path / "config.json").read_text()), str(path / "config.json"))
    if (path / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state_dict = load_file(str(path / "model.safetensors"))
    elif (path / "model.safetensors.index.json").is_file():
        from safetensors.torch import load_file

        shards = set(json.loads((path / "model.safetensors.index.json").read_text())["weight_map"].values())
        state_dict = {k: v for shard in sorted(shards) for k, v in load_file(str(path / shard)).items()}
    elif (path / "pytorch_model.bin").is_file():
        state_dict = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise OptionsError(
            f"{path}: a Hugging Face GPT-2 directory needs model.safetensors or pytorch_model.bin"
        )
    return _gpt2_from_state_dict(config, state_dict, str(path))


def _from_transformers(model: torch.nn.Module) -> GPT2LMHead:
    return _gpt2_from_state_dict(
        _gpt2_config(model.config.to_dict(), type(model).__name__), model.state_dict(), type(model).__name__
    )


def _from_hub(name: str) -> GPT2LMHead:
    try:
        from transformers import GPT2LMHeadModel

        model = GPT2LMHeadModel.from_pretrained(name)
    except Exception as e:  # offline, unknown name: the hub client raises many kinds
        raise OptionsError(
            f"gpt2 {name!r}: not a local path, and loading it from the Hugging Face hub failed "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Offline? Pass a local "
            "GPT-2 directory (config.json + model.safetensors) or a ClipCap checkpoint"
        ) from None
    return _from_transformers(model)


def _gpt2_from_state_dict(config: GPT2Config, state_dict: dict[str, torch.Tensor], where: str) -> GPT2LMHead:
    # GPT2LMHeadModel saves "transformer.*" (+ lm_head, tied); GPT2Model (the hub's "gpt2" files) bare names.
    sd = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key.endswith(_LEGACY):
            continue
        sd[key if key.startswith(("transformer.", "lm_head.")) else "transformer." + key] = value
    model = GPT2LMHead(config)
    expected = set(model.state_dict())
    wte = sd.get("transformer.wte.weight")
    head = sd.setdefault("lm_head.weight", wte)
    if wte is not None and head is not None and (head.shape != wte.shape or not torch.equal(head, wte)):
        raise OptionsError(f"{where}: lm_head.weight differs from transformer.wte.weight; GPT-2 ties them")
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise OptionsError(f"{where}: not GPT-2 weights (missing {missing[:3]}, unexpected {unexpected[:3]})")
    try:
        model.load_state_dict({k: v.float() for k, v in sd.items()})
    except RuntimeError as e:
        raise OptionsError(f"{where}: GPT-2 weights do not fit its config.json: {e}") from None
    return model
