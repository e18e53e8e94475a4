"""Training options: one frozen dataclass, validated in one place, defaulting to the paper's recipe.

Torch-free, so ``clipcap train --help`` builds its flags (and shows these defaults) without torch.
Each field's ``metadata["help"]`` is its documentation and its command-line help.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from clipcap.errors import OptionsError
from clipcap.jsonfile import from_json_object

VARIANTS = ("mlp", "transformer")

# Options that may change when a run is resumed: they say how long to train, how often to look at
# it, and how to fit it in memory, not what is computed (grad_accum and amp do change the float
# rounding, and grad_accum the dropout masks: a run resumed with others is no longer bitwise equal
# to an uninterrupted one, but it is the same training).
RESUMABLE_CHANGES = frozenset(
    {"epochs", "max_steps", "save_every", "keep_checkpoints", "eval_every", "grad_accum", "amp", "val_split"}
)


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainOptions:
    """How to train a ClipCap model (arXiv 2111.09734); the defaults are the paper's.

    ``variant``: "mlp" = an MLP mapper with GPT-2 fine-tuned (every parameter trained);
    "transformer" = a transformer mapper with GPT-2 frozen (only the mapper trained).
    """

    variant: str = _opt(
        "mlp", "mlp: MLP mapper + GPT-2 fine-tuned; transformer: transformer mapper, GPT-2 frozen"
    )
    prefix_length: int = _opt(10, "prefix length P: GPT-2 embeddings the mapper makes")
    clip_length: int = _opt(10, "transformer mapper: CLIP positions C the embedding is projected to")
    mapper_layers: int = _opt(8, "transformer mapper: layers")
    mapper_heads: int = _opt(8, "transformer mapper: attention heads")
    lr: float = _opt(2e-5, "AdamW learning rate (peak, after the warm-up)")
    warmup_steps: int = _opt(5000, "linear warm-up steps, then linear decay to 0 at the last step")
    batch_size: int = _opt(
        40, "(image, caption) examples per optimizer step, whatever grad_accum and the number of processes"
    )
    epochs: int = _opt(10, "passes over the training captions")
    # The original used transformers.AdamW(params, lr): its defaults were weight_decay 0, eps 1e-6
    # (torch.optim.AdamW's are 0.01 and 1e-8).
    weight_decay: float = _opt(0.0, "AdamW weight decay (as the original's transformers.AdamW)")
    adam_eps: float = _opt(1e-6, "AdamW epsilon (as the original's transformers.AdamW)")
    grad_accum: int = _opt(
        1, "split each step's batch into this many micro-batches (same step, less memory); must divide it"
    )
    normalize_prefix: bool | None = _opt(
        None, "L2-normalise CLIP embeddings before the mapper (default: off for mlp, on for transformer)"
    )
    dropout: float = _opt(0.1, "GPT-2 dropout while training (embeddings, attention, residuals); mlp only")
    max_tokens: int | None = _opt(
        None,
        "caption length cap in tokens, EOS included; longer captions are cut (and get no EOS) "
        "(default: the longest training caption, within GPT-2's context)",
    )
    seed: int = _opt(0, "seeds the mapper's initialisation, the data order and dropout")
    amp: bool | None = _opt(
        None, "mixed precision: bf16 autocast (fp16 + loss scaling without bf16) (default: on for CUDA)"
    )
    save_every: int = _opt(10000, "write a checkpoint every N steps (also at each epoch end); 0 = epoch ends")
    keep_checkpoints: int = _opt(2, "keep the newest N checkpoints")
    eval_every: int = _opt(0, "validation loss every N steps (also at each epoch end); 0 = epoch ends")
    max_steps: int | None = _opt(
        None, "total optimizer steps, the schedule's length (default: epochs x steps per epoch)"
    )
    train_split: str = _opt("train", "the embedding set's split to train on")
    val_split: str | None = _opt("val", "the split for the validation loss (skipped when absent)")

    def __post_init__(self) -> None:
        problems = []
        if self.variant not in VARIANTS:
            problems.append(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        for name in ("prefix_length", "clip_length", "mapper_layers", "mapper_heads", "batch_size", "epochs"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                problems.append(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("warmup_steps", "save_every", "eval_every", "seed"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                problems.append(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
        if not _is_int(self.keep_checkpoints) or self.keep_checkpoints < 1:
            problems.append(f"keep_checkpoints must be an integer >= 1, got {self.keep_checkpoints!r}")
        for name in ("max_tokens", "max_steps"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                problems.append(f"{name} must be an integer >= 1 or None, got {value!r}")
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if not self.weight_decay >= 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not self.adam_eps > 0:
            problems.append(f"adam_eps must be > 0, got {self.adam_eps}")
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if not _is_int(self.grad_accum) or self.grad_accum < 1:
            problems.append(f"grad_accum must be an integer >= 1, got {self.grad_accum!r}")
        elif _is_int(self.batch_size) and self.batch_size % self.grad_accum:
            problems.append(
                f"batch_size={self.batch_size} is not divisible by grad_accum={self.grad_accum}: "
                "each step's batch is split into grad_accum equal micro-batches"
            )
        for name in ("normalize_prefix", "amp"):
            if getattr(self, name) not in (None, True, False):
                problems.append(f"{name} must be true, false or None, got {getattr(self, name)!r}")
        if not isinstance(self.train_split, str) or not self.train_split:
            problems.append(f"train_split must be a split name, got {self.train_split!r}")
        if self.val_split is not None and not isinstance(self.val_split, str):
            problems.append(f"val_split must be a split name or None, got {self.val_split!r}")
        if problems:
            raise OptionsError("invalid training options: " + "; ".join(problems))

    @property
    def trains_gpt2(self) -> bool:
        return self.variant == "mlp"

    def replace(self, **changes: Any) -> TrainOptions:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainOptions:
        return from_json_object(cls, data, "training options")

    def differences(self, other: TrainOptions, *, ignore: frozenset[str] = frozenset()) -> list[str]:
        """``name: self's -> other's`` for each field that differs (those in ``ignore`` aside)."""
        return [
            f"{f.name}: {getattr(self, f.name)!r} -> {getattr(other, f.name)!r}"
            for f in dataclasses.fields(self)
            if f.name not in ignore and getattr(self, f.name) != getattr(other, f.name)
        ]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def option_help() -> dict[str, str]:
    """Each option's help text, by field name (for the command line)."""
    return {f.name: f.metadata["help"] for f in dataclasses.fields(TrainOptions)}
