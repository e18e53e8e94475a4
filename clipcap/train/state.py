"""Training checkpoints: the model in this project's format plus the trainer's state; no pickle.

::

    OUT/checkpoint-0001234/
        model.safetensors, config.json   save_checkpoint(model): loads and exports as it is
        tokenizer.json                   the captions' tokenizer
        trainer.safetensors              AdamW state by parameter name (optimizer.NAME.exp_avg,
                                         .exp_avg_sq, .step) and each rank's RNG states as uint8
                                         (rng.cpu.RANK, rng.cuda.RANK)
        trainer.json                     step, epoch, batch within the epoch, the options, the
                                         scheduler, optimizer hyper-parameters, loss scaler,
                                         loss history, data fingerprint, versions

A checkpoint is written under a temporary name and renamed, so a directory named
``checkpoint-*`` is always complete; only the newest ``keep`` are kept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from clipcap.errors import DataError, OptionsError
from clipcap.jsonfile import read_versioned_json
from clipcap.models.checkpoints import save_checkpoint
from clipcap.models.model import ClipCapModel

STATE_FORMAT = "clipcap-train-state"
STATE_VERSION = 1
STATE_JSON = "trainer.json"
STATE_TENSORS = "trainer.safetensors"
TOKENIZER_JSON = "tokenizer.json"
HISTORY = "history.jsonl"
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:07d}"


def list_checkpoints(out: Path) -> list[tuple[int, Path]]:
    """The complete checkpoints in ``out``, oldest first."""
    if not out.is_dir():
        return []
    found = []
    for p in out.iterdir():
        m = _CHECKPOINT.fullmatch(p.name)
        if m and p.is_dir() and (p / STATE_JSON).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def resolve_resume(out: Path, resume: str | Path | None) -> Path | None:
    """The checkpoint to resume from: None (start fresh), "auto" (the newest in out, if any) or a path."""
    if resume is None:
        if list_checkpoints(out):
            raise OptionsError(
                f"{out} already holds training checkpoints: resume them (resume='auto', --resume auto) "
                "or train into another directory"
            )
        return None
    if str(resume) == "auto":
        found = list_checkpoints(out)
        return found[-1][1] if found else None
    path = Path(resume)
    if not (path / STATE_JSON).is_file():
        raise OptionsError(
            f"resume {path}: not a training checkpoint (a checkpoint-NNNNNNN directory with {STATE_JSON}); "
            "pass one, or 'auto' for the newest in the output directory"
        )
    try:
        step = int(json.loads((path / STATE_JSON).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"resume {path}: unreadable {STATE_JSON} ({type(e).__name__}: {e})") from None
    newer = [p.name for s, p in list_checkpoints(out) if s > step]
    if newer:
        # They would outlive the new run's checkpoints and be what 'auto' resumes next time.
        raise OptionsError(
            f"resume {path}: {out} holds later checkpoints ({', '.join(newer)}) that this run would not "
            "replace; resume into another directory, or remove them"
        )
    return path


def write_checkpoint(
    out: Path,
    model: ClipCapModel,
    tokenizer: Tokenizer,
    state: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    keep: int,
) -> Path:
    """Write ``checkpoint-{state['step']}`` atomically, then prune all but the newest ``keep``."""
    from safetensors.torch import save_file

    name = checkpoint_name(state["step"])
    final, tmp = out / name, out / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(model, tmp)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / STATE_TENSORS))
    (tmp / STATE_JSON).write_text(json.dumps(_jsonable(state), indent=1) + "\n")
    tokenizer.save(str(tmp / TOKENIZER_JSON))
    if final.exists():  # the same step written again (a run resumed from an older checkpoint)
        shutil.rmtree(final)
    os.rename(tmp, final)
    for _, old in list_checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint_state(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """trainer.json and trainer.safetensors of a checkpoint directory."""
    from safetensors.torch import load_file

    fix = "resume from another checkpoint, or start again without --resume"
    state = read_versioned_json(
        path / STATE_JSON,
        format=STATE_FORMAT,
        version=STATE_VERSION,
        what="training state",
        fix=fix,
        error=DataError,
    )
    try:
        tensors = load_file(str(path / STATE_TENSORS))
    except (OSError, ValueError) as e:
        raise DataError(
            f"{path / STATE_TENSORS}: unreadable training state ({type(e).__name__}: {e}); {fix}"
        ) from None
    return state, tensors


def write_final(out: Path, model: ClipCapModel, tokenizer: Tokenizer, summary: dict[str, Any]) -> None:
    """The trained model at ``out`` itself: model.safetensors, config.json, tokenizer.json, trainer.json."""
    tmp = out / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(model, tmp)
    tokenizer.save(str(tmp / TOKENIZER_JSON))
    (tmp / STATE_JSON).write_text(json.dumps(_jsonable(summary), indent=1) + "\n")
    for f in tmp.iterdir():
        os.replace(f, out / f.name)
    tmp.rmdir()


def write_history(out: Path, history: list[dict[str, Any]]) -> None:
    tmp = out / (HISTORY + ".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in history))
    os.replace(tmp, out / HISTORY)


# --- the optimizer and the random number generators ------------------------------------------


def optimizer_tensors(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict[str, torch.Tensor]:
    """AdamW's per-parameter state keyed ``optimizer.NAME.exp_avg`` etc. (names: id(param) -> name)."""
    return {
        f"optimizer.{names[id(p)]}.{key}": value
        for group in optimizer.param_groups
        for p in group["params"]
        for key, value in optimizer.state.get(p, {}).items()
    }


def restore_optimizer(
    optimizer: torch.optim.Optimizer, names: dict[int, str], tensors: dict[str, torch.Tensor], where: Path
) -> None:
    saved = {k for k in tensors if k.startswith("optimizer.")}
    for group in optimizer.param_groups:
        for p in group["params"]:
            prefix = f"optimizer.{names[id(p)]}."
            state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            if not state:
                raise DataError(f"{where}: no optimizer state for {names[id(p)]}")
            saved -= {prefix + k for k in state}
            # step stays on the CPU, where AdamW keeps it; the moments go where the parameter is.
            optimizer.state[p] = {k: v if k == "step" else v.to(p.device) for k, v in state.items()}
    if saved:
        raise DataError(
            f"{where}: optimizer state for parameters this model does not train: {sorted(saved)[:3]}"
        )


def rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_states(states: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(states["cpu"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    return x
