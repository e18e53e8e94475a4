"""Setting up a training run, new or resumed: the model (built on a GPT-2 or read from a checkpoint),
the tokenised splits, the step plan, the optimizer and schedule, and a checkpoint's state restored.

The training itself is :mod:`clipcap.train.loop`'s; its ``_Run`` is this module's ``_RunSetup`` plus
the loop.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Self

import torch

from clipcap.config import ClipCapConfig, MapperConfig
from clipcap.errors import OptionsError
from clipcap.models.gpt2 import GPT2LMHead
from clipcap.models.model import ClipCapModel
from clipcap.options import OWN_DEFAULTS
from clipcap.tokenizer import EOS_TOKEN
from clipcap.train.data import caption_data, derived_seed, load_gpt2, resolve_tokenizer, train_val_splits
from clipcap.train.env import Environment, amp_dtype
from clipcap.train.options import RESUMABLE_CHANGES, TrainOptions
from clipcap.train.state import (
    read_checkpoint_state,
    resolve_resume,
    restore_optimizer,
    set_rng_states,
    write_history,
)

# The run's one logger, as before this module was split from clipcap.train.loop.
log = logging.getLogger("clipcap.train.loop")


def build_model(
    options: TrainOptions, gpt: GPT2LMHead, clip_dim: int, clip: Any, eos_id: int
) -> ClipCapModel:
    """A new ClipCap model: GPT-2's weights, a freshly initialised mapper (seeded by options.seed)."""
    g, P = gpt.config, options.prefix_length
    if g.n_positions <= P:
        raise OptionsError(f"prefix_length={P} leaves no room in GPT-2's {g.n_positions} positions")
    if options.variant == "mlp":  # hidden E*P//2, as the original
        mapper = MapperConfig("mlp", clip_dim, P, hidden_dim=g.n_embd * P // 2)
    else:
        if g.n_embd % options.mapper_heads:
            raise OptionsError(
                f"mapper_heads={options.mapper_heads} does not divide GPT-2's width {g.n_embd}"
            )
        mapper = MapperConfig(
            "transformer",
            clip_dim,
            P,
            clip_length=options.clip_length,
            num_layers=options.mapper_layers,
            num_heads=options.mapper_heads,
        )
    generation = OWN_DEFAULTS.replace(
        stop_token_ids=(eos_id,), max_new_tokens=min(OWN_DEFAULTS.max_new_tokens, g.n_positions - P)
    )
    config = ClipCapConfig(
        gpt2=g, mapper=mapper, normalize_prefix=_normalize(options), clip=clip, generation=generation
    )
    torch.manual_seed(options.seed)
    model = ClipCapModel(config, dropout=options.dropout if options.trains_gpt2 else 0.0)
    model.gpt.load_state_dict(gpt.state_dict())
    return model


def _normalize(options: TrainOptions) -> bool:
    # The original's choice per variant: the released transformer weights were trained normalised.
    return options.variant == "transformer" if options.normalize_prefix is None else options.normalize_prefix


def _model_from_checkpoint(path: Path, o: TrainOptions) -> ClipCapModel:
    from clipcap.models.checkpoints import load_checkpoint

    loaded = load_checkpoint(path)
    model = ClipCapModel(loaded.config, dropout=o.dropout if o.trains_gpt2 else 0.0)
    model.load_state_dict(loaded.state_dict())
    return model


class _RunSetup:
    """One training run's state, set up by start() (the loop is clipcap.train.loop's _Run)."""

    def __init__(self, options: TrainOptions, env: Environment, out: Path, progress: bool) -> None:
        self.options, self.env, self.out = options, env, out
        self.show = progress and env.is_main
        self.step, self.epoch, self.batch = 0, 0, 0  # steps done; the position in the data
        self.history: list[dict[str, Any]] = []
        # Summed step losses since the last record, on the device (no sync per step).
        self.running = torch.zeros((), dtype=torch.float64, device=env.device)
        self.running_steps = 0
        self.last_lr = 0.0

    # --- setting up -------------------------------------------------------------------------

    def start(self, data: Any, gpt2: Any, tokenizer: Any, resume: str | Path | None) -> Self:
        env = self.env
        checkpoint = resolve_resume(self.out, resume)
        self.tokenizer = resolve_tokenizer(tokenizer, checkpoint)
        eos = self.tokenizer.token_to_id(EOS_TOKEN)
        if eos is None:
            raise OptionsError(f"the tokenizer has no {EOS_TOKEN} token: captions must end with it")
        train_set, val_set = train_val_splits(data, self.options)
        saved, tensors = self._load_model(checkpoint, gpt2, train_set, eos)
        self._check_model_fits(train_set)
        self._tokenise(train_set, val_set, eos)
        self._plan_steps()
        self._setup_optimizer()
        if checkpoint is not None:
            self._restore(checkpoint, saved, tensors)
        elif env.world > 1:
            # Each rank its own dropout stream (the initialisation above was the same everywhere).
            torch.manual_seed(derived_seed(self.options.seed, env.rank))
        self.out.mkdir(parents=True, exist_ok=True)
        if checkpoint is not None and env.is_main:
            write_history(self.out, self.history)  # rows after the checkpoint are no longer true
        if env.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [env.device.index] if env.device.type == "cuda" else None
            self.net: torch.nn.Module = DistributedDataParallel(self.model, device_ids=ids)
        else:
            self.net = self.model
        return self

    def _load_model(
        self, checkpoint: Path | None, gpt2: Any, train_set: Any, eos: int
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """The checkpoint's model, or a new one on the given GPT-2; returns the checkpoint's state."""
        if checkpoint is not None:
            saved, tensors = read_checkpoint_state(checkpoint)
            self.model = _model_from_checkpoint(checkpoint, self.options)
            self.gpt2_source = saved.get("gpt2", "")
            return saved, tensors
        if gpt2 is None:
            raise OptionsError(
                f"{self.out} holds no checkpoint to resume and no GPT-2 was given to start from: "
                "pass gpt2 (--gpt2 NAME_OR_DIR_OR_CHECKPOINT)"
            )
        gpt, self.gpt2_source = load_gpt2(gpt2)
        self.model = build_model(self.options, gpt, train_set.dim, train_set.clip, eos)
        return {}, {}

    def _check_model_fits(self, train_set: Any) -> None:
        config = self.model.config
        if self.tokenizer.get_vocab_size() != config.gpt2.vocab_size:
            raise OptionsError(
                f"the tokenizer has {self.tokenizer.get_vocab_size()} tokens but GPT-2's vocabulary has "
                f"{config.gpt2.vocab_size}: pass GPT-2's own tokenizer"
            )
        if train_set.dim != config.mapper.clip_dim:
            raise OptionsError(
                f"the embeddings are {train_set.dim}-d but the model's mapper takes "
                f"{config.mapper.clip_dim}-d ones"
            )

    def _tokenise(self, train_set: Any, val_set: Any, eos: int) -> None:
        """The splits' captions as token batches; the options' max_tokens resolved."""
        o, config = self.options, self.model.config
        limit = config.gpt2.n_positions - o.prefix_length
        if o.max_tokens is not None and o.max_tokens > limit:
            raise OptionsError(
                f"max_tokens={o.max_tokens} does not fit: GPT-2 has {config.gpt2.n_positions} positions and "
                f"the prefix takes {o.prefix_length}, so at most {limit}"
            )
        self.train_data = caption_data(train_set, self.tokenizer, eos, o.max_tokens, limit)
        if len(self.train_data) == 0:
            raise OptionsError(f"the {o.train_split!r} split has no captions to train on")
        L = self.train_data.max_tokens
        self.val_data = caption_data(val_set, self.tokenizer, eos, L, limit) if val_set else None
        if self.val_data is not None and len(self.val_data) == 0:
            self.val_data = None
        # The effective options: what None resolved to is recorded, and compared when resuming.
        self.options = o = o.replace(normalize_prefix=_normalize(o), max_tokens=L)
        self.fingerprint = self.train_data.fingerprint()

    def _plan_steps(self) -> None:
        o, env = self.options, self.env
        share = env.world * o.grad_accum
        if o.batch_size % share:
            raise OptionsError(
                f"batch_size={o.batch_size} is not divisible by {env.world} processes x grad_accum="
                f"{o.grad_accum}: each step's batch is split evenly between them"
            )
        self.steps_per_epoch = len(self.train_data) // o.batch_size  # the last partial batch is dropped
        if self.steps_per_epoch == 0:
            raise OptionsError(
                f"the {o.train_split!r} split has {len(self.train_data)} captions, fewer than "
                f"batch_size={o.batch_size}: lower batch_size"
            )
        self.total_steps = o.max_steps or o.epochs * self.steps_per_epoch

    def _setup_optimizer(self) -> None:
        from transformers import get_linear_schedule_with_warmup

        o, model = self.options, self.model
        model.to(self.env.device)
        if not o.trains_gpt2:
            model.gpt.requires_grad_(False)  # only the mapper is trained; GPT-2 also stays in eval mode
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = {id(p): n for n, p in named}
        self.optimizer = torch.optim.AdamW(
            [p for _, p in named], lr=o.lr, weight_decay=o.weight_decay, eps=o.adam_eps
        )
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, o.warmup_steps, self.total_steps)
        self.amp_dtype = amp_dtype(o.amp, self.env.device)
        # fp16 needs loss scaling against underflow; bf16 has float32's range and does not.
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

    def _restore(self, checkpoint: Path, saved: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        o, env = self.options, self.env
        before = TrainOptions.from_dict(saved["options"])
        changed = before.differences(o, ignore=RESUMABLE_CHANGES)
        if changed:
            raise OptionsError(
                f"cannot resume {checkpoint}: options differ from the checkpoint's ({'; '.join(changed)}); "
                f"only {', '.join(sorted(RESUMABLE_CHANGES))} may change"
            )
        if saved["data"]["fingerprint"] != self.fingerprint:
            raise OptionsError(
                f"cannot resume {checkpoint}: the training data differs from the checkpoint's "
                f"({saved['data']['examples']} examples then, {len(self.train_data)} now; or other captions, "
                "embeddings or tokenizer)"
            )
        restore_optimizer(self.optimizer, self.names, tensors, checkpoint)
        self.scheduler.load_state_dict(saved["scheduler"])
        # The schedule may have been extended (epochs, max_steps): the next lr from the new one.
        for group, base, fn in zip(
            self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas, strict=True
        ):
            group["lr"] = base * fn(self.scheduler.last_epoch)
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        if self.scaler is not None and saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        if saved["world_size"] == env.world and f"rng.cpu.{env.rank}" in tensors:
            prefix = f"rng.{{}}.{env.rank}"
            set_rng_states(
                {k: tensors[prefix.format(k)] for k in ("cpu", "cuda") if prefix.format(k) in tensors},
                env.device,
            )
        else:
            log.warning(
                "%s was written by %d processes, resumed by %d: dropout masks start a new stream",
                checkpoint,
                saved["world_size"],
                env.world,
            )
            torch.manual_seed(derived_seed(o.seed, saved["step"], env.rank))
        self.step, self.epoch, self.batch = saved["step"], saved["epoch"], saved["batch"]
        self.history = saved["history"]
        self.running.fill_(saved["running"]["loss_sum"])
        self.running_steps = saved["running"]["steps"]
        self.last_lr = saved.get("last_lr", 0.0)
