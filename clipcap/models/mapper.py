"""ClipCap's mapping networks: a CLIP embedding [B, D] -> a GPT-2 prefix [B, P, E].

Module and parameter names are the originals' (rmokady/CLIP_prefix_caption), so their state
dicts load as they are under ``clip_project.``; see ../shared/reference/clipcap-formats.md.
"""

from __future__ import annotations

import torch
from torch import nn

from clipcap.config import MapperConfig


class MLPMapper(nn.Module):
    """Linear(D, hidden) -> tanh -> Linear(hidden, E*P); keys ``model.0`` and ``model.2``."""

    def __init__(self, clip_dim: int, hidden_dim: int, embed_dim: int, prefix_length: int) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Linear(clip_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, embed_dim * prefix_length)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # [B, E*P]


class MultiHeadAttention(nn.Module):
    """The original's self-attention: no bias on queries / keys-values, one kv projection."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.to_queries = nn.Linear(dim, dim, bias=False)
        self.to_keys_values = nn.Linear(dim, 2 * dim, bias=False)
        self.project = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        H = self.num_heads
        q = self.to_queries(x).reshape(B, N, H, C // H)  # [B, N, H, d]
        kv = self.to_keys_values(x).reshape(B, N, 2, H, C // H)  # [B, N, 2, H, d]
        k, v = kv[:, :, 0], kv[:, :, 1]
        # The original's einsum layout, kept so the numerics are the same.
        attention = torch.einsum("bnhd,bmhd->bnmh", q, k) * self.scale  # [B, N, N, H]
        attention = attention.softmax(dim=2)
        out = torch.einsum("bnmh,bmhd->bnhd", attention, v).reshape(B, N, C)
        return self.project(out)


class MlpTransformer(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class TransformerLayer(nn.Module):
    """Pre-norm: x += attn(norm1(x)); x += mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MlpTransformer(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_layers: int, mlp_ratio: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(dim, num_heads, mlp_ratio) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class TransformerMapper(nn.Module):
    """Linear to C x E, append a learned P x E constant, run the transformer, keep the last P rows."""

    def __init__(self, config: MapperConfig, embed_dim: int) -> None:
        super().__init__()
        self.clip_length = config.clip_length
        self.linear = nn.Linear(config.clip_dim, config.clip_length * embed_dim)
        self.prefix_const = nn.Parameter(torch.randn(config.prefix_length, embed_dim))
        self.transformer = Transformer(embed_dim, config.num_heads, config.num_layers, config.mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        x = self.linear(x).view(B, self.clip_length, -1)  # [B, C, E]
        const = self.prefix_const.unsqueeze(0).expand(B, *self.prefix_const.shape)  # [B, P, E]
        return self.transformer(torch.cat((x, const), dim=1))[:, self.clip_length :]  # [B, P, E]


def build_mapper(config: MapperConfig, embed_dim: int) -> nn.Module:
    if config.kind == "mlp":
        return MLPMapper(config.clip_dim, config.hidden_dim, embed_dim, config.prefix_length)
    if config.kind == "linear":
        return nn.Linear(config.clip_dim, embed_dim * config.prefix_length)
    return TransformerMapper(config, embed_dim)
