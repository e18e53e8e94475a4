"""GPT-2 in one readable file, loading Hugging Face's GPT-2 weights under their own key names.

Why not `transformers.GPT2LMHeadModel` itself: its cache and mask code changes between the
transformers releases we support (4.57 and 5.x: DynamicCache, vmap-built masks, sdpa/eager
dispatch), while ClipCap needs one stable thing to trace and to check the ONNX graphs against.
This module computes the same function with the same parameters (Conv1D layout kept: weights
stored (in, out)), and tests/test_gpt2.py proves it equal to GPT2LMHeadModel on both releases.

Shapes: B batch, T new positions, P past positions, E width, H heads, D = E / H, V vocab.
The KV cache is a tuple per layer of (key, value), each [B, H, P, D].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from clipcap.config import GPT2Config

KVCache = tuple[tuple[torch.Tensor, torch.Tensor], ...]


class Conv1D(nn.Module):
    """A linear layer with its weight stored transposed, (in, out), as GPT-2 checkpoints hold it."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # MatMul + Add rather than Hugging Face's addmm (Gemm in ONNX): ONNX Runtime's int8 and
        # int4 quantizers work on MatMul nodes. Same function; float rounding may differ slightly.
        return x @ self.weight + self.bias


class Attention(nn.Module):
    def __init__(self, config: GPT2Config, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = Conv1D(config.n_embd, 3 * config.n_embd)
        self.c_proj = Conv1D(config.n_embd, config.n_embd)
        self.attn_dropout = dropout  # on the attention weights, inside scaled_dot_product_attention
        self.resid_dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,  # [B, T, E]
        bias: torch.Tensor,  # [B, 1, T, P+T] additive mask: 0 where attending, dtype min elsewhere
        past: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        B, T, E = x.shape
        q, k, v = self.c_attn(x).split(E, dim=2)
        q, k, v = (
            t.view(B, T, self.n_head, E // self.n_head).transpose(1, 2) for t in (q, k, v)
        )  # [B, H, T, D]
        if past is not None:
            k = torch.cat((past[0], k), dim=-2)  # [B, H, P+T, D]; -2, the axis onnxscript's fusion matches
            v = torch.cat((past[1], v), dim=-2)
        # dropout_p only while training: SDPA applies it whatever the module's mode.
        p = self.attn_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)  # [B, H, T, D]
        y = y.transpose(1, 2).reshape(B, T, E)
        return self.resid_dropout(self.c_proj(y)), (k, v)


class MLP(nn.Module):
    def __init__(self, config: GPT2Config, dropout: float = 0.0) -> None:
        super().__init__()
        self.c_fc = Conv1D(config.n_embd, 4 * config.n_embd)
        self.c_proj = Conv1D(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))  # GPT-2's "gelu_new"


class Block(nn.Module):
    def __init__(self, config: GPT2Config, dropout: float = 0.0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = Attention(config, dropout)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config, dropout)

    def forward(self, x, bias, past):
        a, present = self.attn(self.ln_1(x), bias, past)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, present


class Transformer(nn.Module):
    def __init__(self, config: GPT2Config, dropout: float = 0.0) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(dropout)
        self.h = nn.ModuleList(Block(config, dropout) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        nn.init.normal_(self.wte.weight, std=0.02)
        nn.init.normal_(self.wpe.weight, std=0.01)


class GPT2LMHead(nn.Module):
    """GPT-2 with its language-model head tied to the token embedding.

    Parameter names equal Hugging Face's ``GPT2LMHeadModel`` (``transformer.*``, ``lm_head.weight``).
    ``dropout`` is for training (Hugging Face's embd/attn/resid_pdrop, one value for all three); it
    acts only in training mode, so an eval-mode model, and every exported graph, is unchanged.
    """

    def __init__(self, config: GPT2Config, dropout: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.config = config
        self.transformer = Transformer(config, dropout)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, one tensor

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.transformer.wte(input_ids)  # [B, T] -> [B, T, E]

    def forward(
        self,
        inputs_embeds: torch.Tensor,  # [B, T, E]
        attention_mask: torch.Tensor | None = None,  # [B, P+T], 1 = real, 0 = padding
        past_key_values: KVCache | None = None,
        *,
        all_logits: bool = False,
    ) -> tuple[torch.Tensor, KVCache]:
        """Logits [B, V] of the last position (or [B, T, V] with all_logits) and the new cache."""
        B, T, _ = inputs_embeds.shape
        P = 0 if past_key_values is None else past_key_values[0][0].size(2)
        if attention_mask is None:
            attention_mask = torch.ones(B, P + T, dtype=torch.long, device=inputs_embeds.device)
        # Positions count real tokens only, so a left-padded row starts at 0 like an unpadded one.
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, P:]  # [B, T]
        bias = _attention_bias(attention_mask, T, inputs_embeds.dtype)

        x = self.transformer.drop(inputs_embeds + self.transformer.wpe(position_ids))
        presents = []
        for i, block in enumerate(self.transformer.h):
            x, present = block(x, bias, None if past_key_values is None else past_key_values[i])
            presents.append(present)
        x = self.transformer.ln_f(x)
        # The head only where it is needed: at inference, the last position.
        logits = self.lm_head(x) if all_logits else self.lm_head(x[:, -1, :])
        return logits, tuple(presents)


def _attention_bias(attention_mask: torch.Tensor, T: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, T, P+T] additive bias: causal within the new positions, padding masked everywhere."""
    total = attention_mask.size(1)
    q_pos = torch.arange(total - T, total, device=attention_mask.device)[:, None]  # [T, 1]
    k_pos = torch.arange(total, device=attention_mask.device)[None, :]  # [1, P+T]
    allowed = (k_pos <= q_pos)[None, None] & attention_mask.bool()[:, None, None, :]
    # The dtype's minimum, not -inf: a row of padding then stays finite (uniform) instead of NaN.
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )


def num_parameters(model: nn.Module) -> int:
    """Parameters counted once even when tied."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def gelu_new_reference(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's original tanh GELU, written out; used by tests to pin F.gelu(approximate='tanh')."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))
