"""The demo's own small base models, since CLIP and GPT-2 weights cannot be downloaded here.

ClipCap starts from a pre-trained CLIP and a pre-trained GPT-2. The offline demo makes small ones
of the same architectures on its synthetic caption corpus (clipcap.demo.synthetic), with the libraries
the real ones come from:

- CLIP: open_clip's CLIP class (a small ResNet image tower, open_clip's text transformer and BPE
  tokenizer), trained contrastively with open_clip's ClipLoss on image / canonical-caption pairs. A
  frozen random tower does not suffice: its pooled output keeps almost nothing of where shapes are
  or how many there are (a probe on it gets position right at chance level).
- GPT-2: this project's GPT-2 (clipcap.models.gpt2) trained as a language model on the training
  pictures' captions (each picture's three captions one document, see pretrain_gpt2), with a
  word-level `tokenizers` tokenizer (the corpus has ~40 words; GPT-2's 50,257-token head would cost
  most of the demo's time budget for nothing). Saved as a Hugging Face GPT-2 directory
  (config.json + model.safetensors + tokenizer.json), the same thing `clipcap train --gpt2 DIR`
  takes for a real GPT-2, so the frozen-GPT-2 variant has a language model to steer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from clipcap.config import GPT2Config
from clipcap.models.gpt2 import GPT2LMHead

EOS = "<|endoftext|>"
UNK = "<unk>"
DEMO_CLIP_NAME = "clipcap-demo-clip"

Progress = Callable[[int, float], None]  # (step, loss)


def demo_clip_config(image_size: int, embed_dim: int = 64, width: int = 16) -> dict[str, Any]:
    """An open_clip model config: a small ModifiedResNet image tower (as RN50, one block per stage)
    and a small text tower over open_clip's own BPE vocabulary."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "layers": [1, 1, 1, 1], "width": width, "head_width": 32},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }


def pretrain_clip(
    pixels: torch.Tensor,  # [N, 3, H, W], preprocessed as the CLIP spec says
    captions: Sequence[str],
    config: dict[str, Any],
    *,
    steps: int,
    batch_size: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    progress: Progress | None = None,
) -> torch.nn.Module:
    """Contrastive pre-training of an open_clip CLIP on (image, caption) pairs; returns it in eval mode."""
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.CLIP(**config)
    tokens = open_clip.tokenizer.SimpleTokenizer(context_length=config["text_cfg"]["context_length"])(
        list(captions)
    )
    loss_fn = open_clip.ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        batch = torch.randint(len(pixels), (batch_size,), generator=generator)
        image_features, text_features, logit_scale = model(pixels[batch], tokens[batch])[:3]
        loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if progress:
            progress(step, loss.item())
    return model.eval()


def save_clip(model: torch.nn.Module, config: dict[str, Any], directory: str | Path) -> tuple[Path, Path]:
    """Write (open_clip model config JSON, safetensors weights) for `open_clip_encoder` / `--clip-config`."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / f"{DEMO_CLIP_NAME}.json"
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    weights = directory / f"{DEMO_CLIP_NAME}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return config_path, weights


def build_word_tokenizer(corpus: Sequence[str]) -> Any:
    """A word-level tokenizer over the corpus's words; id 0 is GPT-2's end-of-text token."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    words = sorted({w for text in corpus for w in text.split()})
    vocab = {EOS: 0, UNK: 1, **{w: i + 2 for i, w in enumerate(words)}}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token=UNK))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.add_special_tokens([EOS, UNK])
    return tokenizer


def pretrain_gpt2(
    tokenizer: Any,
    documents: Sequence[Sequence[str]],
    config: GPT2Config,
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    progress: Progress | None = None,
) -> GPT2LMHead:
    """Train a GPT-2 language model on documents, each a few texts as GPT-2 sees them: EOS a EOS b EOS.

    A document is one picture's captions, so the model learns both the language and to say again
    what its context said: that is what lets a frozen GPT-2 be steered by a prefix. Longer
    documents than one caption also train the positions a prefix pushes the caption to.
    """
    torch.manual_seed(seed)
    ids, mask = _documents(tokenizer, documents)
    labels = ids.masked_fill(mask == 0, -100)[:, 1:]  # padding carries no loss
    if ids.size(1) > config.n_positions:
        raise ValueError(f"documents of {ids.size(1)} tokens do not fit in {config.n_positions} positions")

    model = GPT2LMHead(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * s / steps)))
    )
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        batch = torch.randint(len(ids), (batch_size,), generator=generator)
        x = model.embed_tokens(ids[batch, :-1])
        logits, _ = model(x, mask[batch, :-1], all_logits=True)  # [B, T, V]
        loss = F.cross_entropy(logits.flatten(0, 1), labels[batch].flatten(), ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if progress:
            progress(step, loss.item())
    return model.eval()


def _documents(tokenizer: Any, documents: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token ids [N, T] of EOS t1 EOS t2 ... EOS, and the mask of real tokens."""
    eos = tokenizer.token_to_id(EOS)
    rows = []
    for texts in documents:
        row = [eos]
        for enc in tokenizer.encode_batch(list(texts)):
            row += [*enc.ids, eos]
        rows.append(row)
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), eos, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def save_hf_gpt2(model: GPT2LMHead, tokenizer: Any, directory: str | Path) -> Path:
    """Write a Hugging Face GPT-2 directory: config.json, model.safetensors (tied head stored once,
    as `save_pretrained` does) and tokenizer.json. transformers' GPT2LMHeadModel loads it as it is."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    c = model.config
    eos = tokenizer.token_to_id(EOS)
    hf_config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": c.vocab_size,
        "n_positions": c.n_positions,
        "n_ctx": c.n_positions,
        "n_embd": c.n_embd,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "layer_norm_epsilon": c.layer_norm_epsilon,
        "activation_function": "gelu_new",
        "bos_token_id": eos,
        "eos_token_id": eos,
    }
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory


def heldout_perplexity(model: GPT2LMHead, tokenizer: Any, documents: Sequence[Sequence[str]]) -> float:
    """Per-token perplexity of held-out documents (as pretrain_gpt2 reads them), for the demo's report."""
    ids, mask = _documents(tokenizer, documents)
    with torch.no_grad():
        logits, _ = model(model.embed_tokens(ids[:, :-1]), mask[:, :-1], all_logits=True)
        labels = ids.masked_fill(mask == 0, -100)[:, 1:]
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    return float(np.exp(loss.item()))
