"""ClipCap: a CLIP embedding -> mapping network -> prefix -> GPT-2.

State-dict keys are the originals': ``clip_project.*`` for the mapper, ``gpt.*`` for GPT-2.
The model knows nothing about decoding (see clipcap.models.generate).
"""

from __future__ import annotations

import torch
from torch import nn

from clipcap.config import ClipCapConfig
from clipcap.models.gpt2 import GPT2LMHead, KVCache
from clipcap.models.mapper import build_mapper


class ClipCapModel(nn.Module):
    """``dropout``: GPT-2's, for training (see GPT2LMHead); no effect in eval mode."""

    def __init__(self, config: ClipCapConfig, dropout: float = 0.0) -> None:
        super().__init__()
        self.config = config
        self.gpt = GPT2LMHead(config.gpt2, dropout)
        self.clip_project = build_mapper(config.mapper, config.gpt2.n_embd)

    @property
    def prefix_length(self) -> int:
        return self.config.mapper.prefix_length

    def prefix(self, clip_embeds: torch.Tensor) -> torch.Tensor:
        """[B, D] CLIP embeddings -> [B, P, E] prefix embeddings."""
        if clip_embeds.dim() != 2 or clip_embeds.size(1) != self.config.mapper.clip_dim:
            raise ValueError(
                f"expected CLIP embeddings of shape [batch, {self.config.mapper.clip_dim}], "
                f"got {list(clip_embeds.shape)}"
            )
        if self.config.normalize_prefix:
            # As the original: no epsilon, the embedding is never zero in practice.
            clip_embeds = clip_embeds / clip_embeds.norm(2, dim=-1, keepdim=True)
        out = self.clip_project(clip_embeds)
        return out.view(clip_embeds.size(0), self.prefix_length, self.config.gpt2.n_embd)

    def forward(
        self,
        clip_embeds: torch.Tensor,  # [B, D]
        tokens: torch.Tensor,  # [B, T] caption tokens
        attention_mask: torch.Tensor | None = None,  # [B, P+T]
    ) -> torch.Tensor:
        """Training-time logits [B, P+T, V] for prefix + caption (teacher forcing)."""
        embeds = torch.cat((self.prefix(clip_embeds), self.gpt.embed_tokens(tokens)), dim=1)
        logits, _ = self.gpt(embeds, attention_mask, all_logits=True)
        return logits

    def step(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
    ) -> tuple[torch.Tensor, KVCache]:
        """One decoder call: last-position logits [B, V] and the extended cache."""
        return self.gpt(inputs_embeds, attention_mask, past_key_values)
