"""Decoding options: one frozen dataclass, validated in one place.

Shared by the PyTorch reference (`clipcap.models.generate`) and the ONNX runtime, so both read the same
options the same way. No heavy imports.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from clipcap.errors import ConfigError

STRATEGIES = ("greedy", "top_k", "top_p", "beam")
# The CLI's spelling, accepted everywhere; "top_k" / "top_p" are the documented names.
STRATEGY_ALIASES = {"top-k": "top_k", "top-p": "top_p"}
# Which option each strategy reads: an override of another one's option is refused, not ignored.
STRATEGY_OPTIONS = {"top_k": "top_k", "top_p": "top_p", "beam_size": "beam"}

DEFAULT_TOP_K = 50  # transformers' default k, used when top_k is chosen without a k (top_k=0)
MAX_BEAM_SIZE = 64  # each beam is a KV-cache row: 64 already costs 64x a greedy caption's memory
MAX_NEW_TOKENS = 4096  # an absolute bound; the model's context (check_context) is usually smaller
MAX_TOKEN_ID = 2**31 - 1

GPT2_EOS = 50256  # "<|endoftext|>"
GPT2_PERIOD = 13  # "."


@dataclass(frozen=True)
class DecodingOptions:
    """How to turn a prefix into tokens.

    ``stop_token_ids`` end a sequence; the stop token is part of the returned tokens, and the text
    keeps it unless it is a special token (EOS is dropped, the originals' "." is kept).

    ``strategy`` is "greedy", "top_k", "top_p" or "beam" ("top-k" and "top-p" are accepted too and
    stored as "top_k" / "top_p"). Choosing a strategy without its parameter uses transformers'
    defaults: top_k=0 ("not set") becomes k = 50 with the top_k strategy; top_p stays 1.0 (sampling
    from the whole distribution) unless given; beam_size is 5.

    Bounds, checked here for every strategy: 1 <= beam_size <= 64 (MAX_BEAM_SIZE),
    1 <= max_new_tokens <= 4096 (and the model's context, see ``check_context``), temperature
    finite and > 0 (greedy ignores it for the choice of tokens, but it scales the reported score),
    length_penalty finite, seed >= 0 or None, integers as ints (not strings or bools).
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
        if isinstance(self.strategy, str):
            object.__setattr__(self, "strategy", STRATEGY_ALIASES.get(self.strategy, self.strategy))
        ids = self.stop_token_ids
        if isinstance(ids, (str, bytes)) or not isinstance(ids, (list, tuple)):
            raise ConfigError(f"stop_token_ids must be a list of token ids, got {ids!r}")
        if not all(_is_int(t) for t in ids):
            raise ConfigError(f"stop_token_ids must be integer token ids, got {list(ids)!r}")
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in ids))
        self._check_types()
        if self.strategy == "top_k" and self.top_k == 0:
            object.__setattr__(self, "top_k", DEFAULT_TOP_K)
        self._validate()

    def _check_types(self) -> None:
        """Types first, so the range checks below compare numbers (a manifest's "40" is refused)."""
        problems = []
        for name in ("max_new_tokens", "min_new_tokens", "top_k", "beam_size"):
            if not _is_int(getattr(self, name)):
                problems.append(f"{name} must be an integer, got {getattr(self, name)!r}")
        for name in ("temperature", "top_p", "length_penalty"):
            value = getattr(self, name)
            if not (_is_int(value) or isinstance(value, float)):
                problems.append(f"{name} must be a number, got {value!r}")
        if self.seed is not None and not _is_int(self.seed):
            problems.append(f"seed must be an integer or None, got {self.seed!r}")
        if not isinstance(self.strategy, str):
            problems.append(f"strategy must be a string, got {self.strategy!r}")
        if problems:
            raise ConfigError("invalid decoding options: " + "; ".join(problems))

    def _validate(self) -> None:
        problems = []
        if self.strategy not in STRATEGIES:
            problems.append(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            problems.append(f"max_new_tokens must be >= 1 and <= {MAX_NEW_TOKENS}, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            problems.append(
                f"min_new_tokens must be between 0 and max_new_tokens ({self.max_new_tokens}), "
                f"got {self.min_new_tokens}"
            )
        # Every strategy divides the logits by the temperature (greedy for its score), so a
        # temperature <= 0 or NaN would give NaN scores or silently reversed choices.
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            problems.append(f"temperature must be a finite number > 0, got {self.temperature}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0 (0: not set), got {self.top_k}")
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if not 1 <= self.beam_size <= MAX_BEAM_SIZE:
            problems.append(f"beam_size must be >= 1 and <= {MAX_BEAM_SIZE}, got {self.beam_size}")
        if not math.isfinite(self.length_penalty):
            problems.append(f"length_penalty must be a finite number, got {self.length_penalty}")
        if self.seed is not None and self.seed < 0:
            problems.append(f"seed must be >= 0 (or None for a random one), got {self.seed}")
        if any(not 0 <= t <= MAX_TOKEN_ID for t in self.stop_token_ids):
            problems.append(f"stop_token_ids must be token ids >= 0, got {list(self.stop_token_ids)}")
        if problems:
            raise ConfigError("invalid decoding options: " + "; ".join(problems))

    def replace(self, **changes: Any) -> DecodingOptions:
        """A copy with some options changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def override(self, **overrides: Any) -> DecodingOptions:
        """A copy with a caller's overrides (flags, keyword arguments), refusing the ones the
        resulting strategy does not read: ``top_k=5`` with greedy would be silently ignored."""
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"unknown decoding options: {', '.join(unknown)}")
        if overrides.get("top_k") == 0 and overrides.get("strategy", self.strategy) in ("top_k", "top-k"):
            # 0 means "not set" in a stored default (then k = 50); asked for explicitly it is a mistake.
            raise ConfigError("invalid decoding options: top_k must be >= 1 with the top_k strategy, got 0")
        chosen = self.replace(**overrides) if overrides else self
        for name, strategy in STRATEGY_OPTIONS.items():
            if name in overrides and overrides[name] is not None and chosen.strategy != strategy:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(
                    f"{name}={overrides[name]!r} ({flag}) is only used by the {strategy} strategy, "
                    f"and the strategy is {chosen.strategy}: add strategy={strategy!r} "
                    f"(--strategy {strategy.replace('_', '-')}) or drop {flag}"
                )
        return chosen

    def check_context(self, prefix_length: int, n_positions: int) -> None:
        """Refuse a length that would run past GPT-2's position table."""
        self._check_room(prefix_length, n_positions)

    def _check_room(self, prefix_length: int, n_positions: int) -> None:
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
        from clipcap.jsonfile import from_json_object

        return from_json_object(cls, data, "decoding options")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# How each source project generates (../shared/reference/clipcap-formats.md), so each checkpoint
# behaves as its source did unless the user says otherwise.
ORIGINAL_DEFAULTS = DecodingOptions(strategy="greedy", max_new_tokens=67, stop_token_ids=(GPT2_PERIOD,))
SEED_DEFAULTS = DecodingOptions(strategy="greedy", max_new_tokens=12, stop_token_ids=(GPT2_EOS,))
OWN_DEFAULTS = DecodingOptions(strategy="greedy", max_new_tokens=40, stop_token_ids=(GPT2_EOS,))

__all__ = [
    "GPT2_EOS",
    "GPT2_PERIOD",
    "MAX_BEAM_SIZE",
    "MAX_NEW_TOKENS",
    "ORIGINAL_DEFAULTS",
    "OWN_DEFAULTS",
    "SEED_DEFAULTS",
    "STRATEGIES",
    "STRATEGY_ALIASES",
    "DecodingOptions",
]
