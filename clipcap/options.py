"""Decoding options: one frozen dataclass, validated in one place.

Shared by the PyTorch reference (`clipcap.models.generate`) and the ONNX runtime, so both read the same
options the same way. No heavy imports.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from clipcap.errors import ConfigError

STRATEGIES = ("greedy", "top_k", "top_p", "beam")

GPT2_EOS = 50256  # "<|endoftext|>"
GPT2_PERIOD = 13  # "."


@dataclass(frozen=True)
class DecodingOptions:
    """How to turn a prefix into tokens.

    ``stop_token_ids`` end a sequence; the stop token is part of the returned tokens, and the text
    keeps it unless it is a special token (EOS is dropped, the originals' "." is kept).
    """

    strategy: str = "greedy"
    max_new_tokens: int = 67
    min_new_tokens: int = 0  # stop tokens are suppressed until this many tokens exist
    temperature: float = 1.0  # divides the logits before sampling / beam log-probs
    top_k: int = 0  # top_k strategy: keep the k most likely tokens
    top_p: float = 1.0  # top_p strategy: keep the smallest set with probability >= p
    beam_size: int = 5
    length_penalty: float = 1.0  # beam ranking: sum(log p) / length ** length_penalty
    stop_token_ids: tuple[int, ...] = (GPT2_EOS,)
    seed: int | None = None  # sampling is reproducible given a seed

    def __post_init__(self) -> None:
        # Lists from JSON become tuples, so options stay hashable and comparable.
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        self._validate()

    def _validate(self) -> None:
        problems = []
        if self.strategy not in STRATEGIES:
            problems.append(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            problems.append(
                f"min_new_tokens must be between 0 and max_new_tokens ({self.max_new_tokens}), "
                f"got {self.min_new_tokens}"
            )
        sampling = self.strategy in ("top_k", "top_p")
        if self.temperature <= 0 and (sampling or self.strategy == "beam"):
            problems.append(f"temperature must be > 0 with {self.strategy}, got {self.temperature}")
        if self.strategy == "top_k" and self.top_k <= 0:
            problems.append(f"top_k must be >= 1 with the top_k strategy, got {self.top_k}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.beam_size < 1:
            problems.append(f"beam_size must be >= 1, got {self.beam_size}")
        if any(t < 0 for t in self.stop_token_ids):
            problems.append(f"stop_token_ids must be token ids >= 0, got {self.stop_token_ids}")
        if problems:
            raise ConfigError("invalid decoding options: " + "; ".join(problems))

    def replace(self, **changes: Any) -> DecodingOptions:
        """A copy with some options changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def check_context(self, prefix_length: int, n_positions: int) -> None:
        """Refuse a length that would run past GPT-2's position table."""
        room = n_positions - prefix_length
        if self.max_new_tokens > room:
            raise ConfigError(
                f"max_new_tokens={self.max_new_tokens} does not fit: the model has {n_positions} "
                f"positions and the prefix takes {prefix_length}, so at most {room} new tokens"
            )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stop_token_ids"] = list(self.stop_token_ids)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecodingOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown decoding options: {', '.join(unknown)}")
        return cls(**data)


# How each source project generates (../shared/reference/clipcap-formats.md), so each checkpoint
# behaves as its source did unless the user says otherwise.
ORIGINAL_DEFAULTS = DecodingOptions(strategy="greedy", max_new_tokens=67, stop_token_ids=(GPT2_PERIOD,))
SEED_DEFAULTS = DecodingOptions(strategy="greedy", max_new_tokens=12, stop_token_ids=(GPT2_EOS,))
OWN_DEFAULTS = DecodingOptions(strategy="greedy", max_new_tokens=40, stop_token_ids=(GPT2_EOS,))

__all__ = [
    "GPT2_EOS",
    "GPT2_PERIOD",
    "ORIGINAL_DEFAULTS",
    "OWN_DEFAULTS",
    "SEED_DEFAULTS",
    "STRATEGIES",
    "DecodingOptions",
]
