"""Train a ClipCap model on an embedding set (`clipcap train`), as the paper did, plus what it lacked.

The recipe is the original's (rmokady/CLIP_prefix_caption, train.py): AdamW, lr 2e-5 with 5,000
linear warm-up steps then linear decay to 0, batch 40, 10 epochs, prefix 10; "mlp" = MLP mapper with
GPT-2 fine-tuned, "transformer" = transformer mapper with GPT-2 frozen (and kept in eval mode).
What differs, on purpose:

- captions end with EOS, so a model learns to stop (the sources never taught it);
- padding is masked with ignore_index -100 labels, not by ignoring token id 0 (GPT-2's "!");
- the loss is the token mean over each step's whole batch, whatever the micro-batches and the
  number of processes (torchrun / DDP), so those do not change the result beyond float rounding;
- checkpoints hold everything needed to resume exactly: a resumed run ends with bitwise the same
  weights as an uninterrupted one (data order seeded per epoch, RNG states saved, no pickle).

Shapes: B batch, P prefix length, T caption tokens, V vocabulary, D CLIP width.
"""

from __future__ import annotations

import logging
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from clipcap import __version__
from clipcap.data.embeddings import EmbeddingSet
from clipcap.errors import OptionsError
from clipcap.models.model import ClipCapModel
from clipcap.train.data import (
    IGNORE_INDEX,
    Batch,
    epoch_order,
)
from clipcap.train.env import Environment
from clipcap.train.options import VARIANTS, TrainOptions
from clipcap.train.setup import _RunSetup, build_model
from clipcap.train.state import (
    STATE_FORMAT,
    STATE_VERSION,
    checkpoint_name,
    optimizer_tensors,
    rng_states,
    write_checkpoint,
    write_final,
    write_history,
)

log = logging.getLogger(__name__)

__all__ = ["VARIANTS", "TrainOptions", "TrainResult", "build_model", "caption_loss", "train"]


@dataclass
class TrainResult:
    model: ClipCapModel  # the trained model, in eval mode, on the training device
    step: int  # optimizer steps done
    history: list[dict[str, Any]]  # {step, epoch, train_loss, val_loss, lr} at each evaluation
    train_loss: float | None  # mean training loss since the previous evaluation, at the end
    val_loss: float | None  # None without a validation split
    out: Path


def train(
    options: TrainOptions,
    data: EmbeddingSet | str | Path,
    *,
    gpt2: Any,
    out: str | Path,
    tokenizer: Tokenizer | str | Path | None = None,
    resume: str | Path | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> TrainResult:
    """Train a ClipCap model; the result is written to ``out`` (``clipcap export out`` takes it).

    Args:
        options: the recipe; TrainOptions() is the paper's MLP run.
        data: an embedding set (or its directory, from `clipcap embed`); options.train_split
            trains, options.val_split (when present) gives the validation loss.
        gpt2: GPT-2 to start from: a GPT2LMHead, a Hugging Face GPT-2 directory, a ClipCap
            checkpoint of any format (its GPT-2 weights), or a hub name such as "gpt2". Not read
            when resuming (the checkpoint has the weights).
        out: the output directory: checkpoint-NNNNNNN/ directories, history.jsonl and, at the
            end, the final model (model.safetensors, config.json, tokenizer.json, trainer.json).
        tokenizer: a Tokenizer, or a tokenizer file/directory; default the checkpoint's when
            resuming, else the packaged GPT-2 one. Its vocabulary must be GPT-2's.
        resume: None (start fresh; out must hold no checkpoints), "auto" (the newest checkpoint
            in out, or fresh when there is none) or a checkpoint directory.
        device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N"; under torchrun
            (WORLD_SIZE > 1) each process takes cuda:LOCAL_RANK.
        progress: a progress bar and a line per evaluation on stderr (from rank 0 only).

    Raises:
        OptionsError: bad options or inputs (named, with the fix), or a resume that does not match.
        MissingDependencyError: CUDA asked for but unavailable.
    """
    if not isinstance(options, TrainOptions):
        raise OptionsError(f"options must be a TrainOptions, got {type(options).__name__}")
    env = Environment.setup(device)
    try:
        return _Run(options, env, Path(out), progress).start(data, gpt2, tokenizer, resume).loop()
    finally:
        env.close()


def caption_loss(model: torch.nn.Module, batch: Batch, prefix_length: int) -> torch.Tensor:
    """Summed cross-entropy over the caption tokens of ``batch`` (EOS included; prefix and padding not)."""
    logits = model(batch.clip, batch.tokens, batch.attention_mask)  # [B, P+T, V]
    logits = logits[:, prefix_length - 1 : -1]  # [B, T, V]: position P-1+t predicts caption token t
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        batch.labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


class _Run(_RunSetup):
    """One training run: set up by start() (clipcap.train.setup), then loop() to the last step."""

    # --- training ---------------------------------------------------------------------------

    def loop(self) -> TrainResult:
        o, env = self.options, self.env
        bar = self._progress_bar()
        self._say(
            f"training {o.variant} ({'GPT-2 fine-tuned' if o.trains_gpt2 else 'GPT-2 frozen'}): "
            f"{len(self.train_data)} captions, {self.steps_per_epoch} steps/epoch, steps "
            f"{self.step}..{self.total_steps}, batch {o.batch_size}, on {env.device} x {env.world}"
        )
        self._train_mode()
        while self.step < self.total_steps:
            order = epoch_order(o.seed, self.epoch, len(self.train_data))
            for b in range(self.batch, self.steps_per_epoch):
                loss = self._train_step(order[b * o.batch_size : (b + 1) * o.batch_size])
                self.step += 1
                self.running += loss.double()
                self.running_steps += 1
                epoch_end = b + 1 == self.steps_per_epoch
                self.epoch, self.batch = (self.epoch + 1, 0) if epoch_end else (self.epoch, b + 1)
                last = self.step >= self.total_steps
                if epoch_end or last or (o.eval_every and self.step % o.eval_every == 0):
                    self._record()
                if epoch_end or last or (o.save_every and self.step % o.save_every == 0):
                    self._save()
                if bar is not None:
                    bar.update(1)
                    if self.step % 10 == 0 or last:
                        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{self.last_lr:.2e}")
                if last:
                    break
        if bar is not None:
            bar.close()
        return self._finish()

    def _train_step(self, index: torch.Tensor) -> torch.Tensor:
        """One optimizer step on the global batch ``index`` [batch_size]; returns its mean token loss."""
        o, env, P = self.options, self.env, self.options.prefix_length
        share = o.batch_size // env.world
        mine = index[env.rank * share : (env.rank + 1) * share]
        # The token mean over the whole step's batch: every rank knows every length, no communication.
        n_tokens = int(self.train_data.lengths[index].sum())
        micro = share // o.grad_accum
        step_loss = torch.zeros((), device=env.device)
        for k in range(o.grad_accum):
            batch = self.train_data.batch(mine[k * micro : (k + 1) * micro], P, env.device)
            sync = k == o.grad_accum - 1 or env.world == 1
            with nullcontext() if sync else self.net.no_sync(), self._autocast():
                loss = caption_loss(self.net, batch, P) / n_tokens
            # DDP averages the ranks' gradients: scaled by the world size, they add up to the step's mean.
            scaled = loss * env.world if env.world > 1 else loss
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            step_loss += loss.detach()
        self.last_lr = self.optimizer.param_groups[0]["lr"]
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return env.all_sum(step_loss)

    @torch.no_grad()
    def _validate(self) -> float | None:
        if self.val_data is None:
            return None
        o, env, P = self.options, self.env, self.options.prefix_length
        self.model.eval()
        n = len(self.val_data)
        per_rank = -(-n // env.world)
        mine = torch.arange(env.rank * per_rank, min(n, (env.rank + 1) * per_rank))
        sums = torch.zeros(2, dtype=torch.float64, device=env.device)  # [loss sum, tokens]
        for chunk in mine.split(max(1, o.batch_size // env.world // o.grad_accum)):
            batch = self.val_data.batch(chunk, P, env.device)
            with self._autocast():
                sums[0] += caption_loss(self.model, batch, P).double()
            sums[1] += (batch.labels != IGNORE_INDEX).sum()
        env.all_sum(sums)
        self._train_mode()
        return float(sums[0] / sums[1])

    def _record(self) -> None:
        val = self._validate()
        row = {
            "step": self.step,
            "epoch": round(self.step / self.steps_per_epoch, 4),
            "train_loss": float(self.running / self.running_steps) if self.running_steps else None,
            "val_loss": val,
            "lr": self.last_lr,
        }
        self.history.append(row)
        self.running.zero_()
        self.running_steps = 0
        if self.env.is_main:
            write_history(self.out, self.history)
        self._say(
            f"step {self.step} (epoch {row['epoch']:g}): train loss {_fmt(row['train_loss'])}, "
            f"val loss {_fmt(val)}, lr {self.last_lr:.2e}"
        )

    def _save(self) -> None:
        env = self.env
        rngs = env.gather(rng_states(env.device))  # every rank's, for an exact resume with dropout
        if not env.is_main:
            return
        tensors = optimizer_tensors(self.optimizer, self.names)
        for rank, states in enumerate(rngs):
            tensors.update({f"rng.{kind}.{rank}": state for kind, state in states.items()})
        keep = self.options.keep_checkpoints
        write_checkpoint(self.out, self.model, self.tokenizer, self._state(), tensors, keep)

    def _state(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "step": self.step,
            "epoch": self.epoch,
            "batch": self.batch,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "world_size": self.env.world,
            "options": self.options.to_dict(),
            "scheduler": self.scheduler.state_dict(),
            "param_groups": [
                {k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups
            ],
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "last_lr": self.last_lr,
            "running": {"loss_sum": float(self.running), "steps": self.running_steps},
            "history": self.history,
            "data": {"examples": len(self.train_data), "fingerprint": self.fingerprint},
            "gpt2": self.gpt2_source,
            "versions": {"clipcap-onnx": __version__, "torch": torch.__version__},
        }

    def _finish(self) -> TrainResult:
        model, env = self.model, self.env
        if not self.history or self.history[-1]["step"] != self.step:  # resumed at the very end
            self._record()
        last = self.history[-1]
        if env.is_main:
            summary = {
                "format": "clipcap-train-summary",
                "version": 1,
                "step": self.step,
                "epoch": last["epoch"],
                "train_loss": last["train_loss"],
                "val_loss": last["val_loss"],
                "checkpoint": checkpoint_name(self.step),
                "options": self.options.to_dict(),
                "data": {"examples": len(self.train_data), "fingerprint": self.fingerprint},
                "gpt2": self.gpt2_source,
                "versions": {"clipcap-onnx": __version__, "torch": torch.__version__},
            }
            write_final(self.out, model, self.tokenizer, summary)
            write_history(self.out, self.history)
        env.barrier()
        model.requires_grad_(True)
        return TrainResult(
            model.eval(), self.step, self.history, last["train_loss"], last["val_loss"], self.out
        )

    # --- small parts ------------------------------------------------------------------------

    def _train_mode(self) -> None:
        self.model.train()
        if not self.options.trains_gpt2:
            self.model.gpt.eval()  # frozen GPT-2 without dropout, as the original's ClipCaptionPrefix

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.env.device.type, dtype=self.amp_dtype)

    def _progress_bar(self):
        if not self.show:
            return None
        from tqdm.auto import tqdm

        # disable=None: no bar when stderr is not a terminal (a log file gets the per-evaluation lines).
        return tqdm(total=self.total_steps, initial=self.step, unit="step", desc="train", disable=None)

    def _say(self, message: str) -> None:
        if self.show:
            from tqdm.auto import tqdm

            tqdm.write(message, file=sys.stderr)


def _fmt(loss: float | None) -> str:
    return "-" if loss is None else f"{loss:.4f}"
