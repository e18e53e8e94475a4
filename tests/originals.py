"""Independent re-creations of the source projects' models, on Hugging Face's GPT2LMHeadModel.

Written from the descriptions in ../shared/reference/clipcap-formats.md with the originals'
module names, but computed differently from clipcap.models.mapper where it can be (explicit per-head
loops), so the tests compare two implementations rather than one with itself. They produce state
dicts with exactly the key names users' checkpoints have.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel


def hf_gpt2(
    n_embd: int, n_layer: int, n_head: int, vocab: int = 50257, n_positions: int = 128
) -> GPT2LMHeadModel:
    config = GPT2Config(
        vocab_size=vocab, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head
    )
    config._attn_implementation = "eager"
    return GPT2LMHeadModel(config).eval()


class OriginalMLP(nn.Module):
    def __init__(self, sizes: tuple[int, int, int]) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Linear(sizes[0], sizes[1]), nn.Tanh(), nn.Linear(sizes[1], sizes[2]))

    def forward(self, x):
        return self.model(x)


class OriginalAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_queries = nn.Linear(dim, dim, bias=False)
        self.to_keys_values = nn.Linear(dim, 2 * dim, bias=False)
        self.project = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        d = C // self.heads
        q = self.to_queries(x)
        kv = self.to_keys_values(x).reshape(B, N, 2, self.heads, d)
        outs = []
        for h in range(self.heads):  # one head at a time: a different computation order on purpose
            qh = q[:, :, h * d : (h + 1) * d]
            kh, vh = kv[:, :, 0, h], kv[:, :, 1, h]
            att = (qh @ kh.transpose(1, 2)) * d**-0.5
            outs.append(att.softmax(dim=-1) @ vh)
        return self.project(torch.cat(outs, dim=-1))


class OriginalMlpTransformer(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(nn.functional.relu(self.fc1(x)))


class OriginalLayer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = OriginalAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = OriginalMlpTransformer(dim, dim * 2)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class OriginalTransformerBody(nn.Module):
    def __init__(self, dim: int, heads: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(OriginalLayer(dim, heads) for _ in range(layers))


class OriginalTransformerMapper(nn.Module):
    def __init__(self, clip_dim: int, dim: int, prefix_length: int, clip_length: int, layers: int) -> None:
        super().__init__()
        self.clip_length = clip_length
        self.transformer = OriginalTransformerBody(dim, 8, layers)
        self.linear = nn.Linear(clip_dim, clip_length * dim)
        self.prefix_const = nn.Parameter(torch.randn(prefix_length, dim))

    def forward(self, x):
        x = self.linear(x).view(x.shape[0], self.clip_length, -1)
        x = torch.cat((x, self.prefix_const.expand(x.shape[0], -1, -1)), dim=1)
        for layer in self.transformer.layers:
            x = layer(x)
        return x[:, self.clip_length :]


class OriginalClipCap(nn.Module):
    """``ClipCaptionModel`` / ``ClipCaptionPrefix`` / the seed's ``ClipCapModel``.

    kind: "original-mlp", "original-linear", "original-transformer" or "seed".
    """

    def __init__(
        self,
        kind: str,
        gpt: GPT2LMHeadModel,
        clip_dim: int,
        prefix_length: int,
        clip_length: int = 0,
        layers: int = 0,
        normalize_prefix: bool = False,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.prefix_length = prefix_length
        self.normalize_prefix = normalize_prefix
        self.gpt = gpt
        E = gpt.config.n_embd
        if kind == "seed":
            self.mapping = nn.Module()
            self.mapping.proj1 = nn.Linear(clip_dim, E * prefix_length // 2)
            self.mapping.proj2 = nn.Linear(E * prefix_length // 2, E * prefix_length)
        elif kind == "original-mlp":
            self.clip_project = OriginalMLP((clip_dim, E * prefix_length // 2, E * prefix_length))
        elif kind == "original-linear":
            self.clip_project = nn.Linear(clip_dim, E * prefix_length)
        else:
            self.clip_project = OriginalTransformerMapper(clip_dim, E, prefix_length, clip_length, layers)

    def prefix(self, clip):
        if self.normalize_prefix:
            clip = clip / clip.norm(2, -1, keepdim=True)
        if self.kind == "seed":
            out = self.mapping.proj2(torch.tanh(self.mapping.proj1(clip)))
        else:
            out = self.clip_project(clip)
        return out.view(clip.shape[0], self.prefix_length, -1)

    def forward(self, clip, tokens):
        embeds = torch.cat((self.prefix(clip), self.gpt.transformer.wte(tokens)), dim=1)
        return self.gpt(inputs_embeds=embeds).logits


def add_legacy_buffers(state_dict: dict, n_layer: int, n_positions: int) -> dict:
    """What transformers 4.11 (the official checkpoints) saved beside GPT-2's weights."""
    out = dict(state_dict)
    mask = torch.tril(torch.ones(n_positions, n_positions, dtype=torch.uint8)).view(
        1, 1, n_positions, n_positions
    )
    for i in range(n_layer):
        out[f"gpt.transformer.h.{i}.attn.bias"] = mask
        out[f"gpt.transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    return out


def spread_(module: nn.Module, std: float = 0.3, seed: int = 0) -> nn.Module:
    """Re-draw every weight with a larger spread, so logits are far apart and argmax is stable."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight", "norm1.weight", "norm2.weight")):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))
    return module
