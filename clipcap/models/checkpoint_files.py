"""Reading a checkpoint's files: this project's safetensors + config.json, the pickles of the
other formats (``torch.load(weights_only=True)``: a pickle that needs code to load is refused,
never run), and a stored config checked against the weights before any model is built."""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from clipcap import hub
from clipcap.config import (
    ClipCapConfig,
)
from clipcap.errors import CheckpointError, ClipCapError

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_METADATA_KEY = "clipcap_config"  # the config also travels inside the safetensors header


def read_checkpoint(path: Path) -> tuple[StateDict, ClipCapConfig | None]:
    """The raw state dict, and the stored config for this project's own format (else None)."""
    path = Path(hub.local_checkpoint(str(path)))
    if not path.exists():
        raise CheckpointError(path, "no such file or directory")
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(
                path, f"a directory checkpoint needs {WEIGHTS_NAME} and {CONFIG_NAME} (this project's format)"
            )
        state_dict, header_config = _read_safetensors(weights)
        config_file = path / CONFIG_NAME
        if config_file.is_file():
            return state_dict, _parse_config(config_file, _read_text(config_file))
        if header_config is None:
            raise CheckpointError(path, f"{CONFIG_NAME} is missing and {WEIGHTS_NAME} carries no config")
        return state_dict, header_config
    if path.suffix == ".safetensors":
        state_dict, header_config = _read_safetensors(path)
        beside = path.with_name(CONFIG_NAME)
        if header_config is None and beside.is_file():
            header_config = _parse_config(beside, _read_text(beside))
        if header_config is None:
            raise CheckpointError(
                path,
                "a safetensors checkpoint needs its config: in the file's metadata "
                f"or a {CONFIG_NAME} beside it",
            )
        return state_dict, header_config
    return _read_pickle(path), None


def _read_safetensors(path: Path) -> tuple[StateDict, ClipCapConfig | None]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state_dict = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(path, f"not a readable safetensors file (truncated or corrupt?): {e}") from None
    text = metadata.get(_METADATA_KEY)
    return state_dict, None if text is None else _parse_config(path, text)


def _read_text(path: Path) -> str:
    """A config.json's text; a binary or oversized file is refused, not decoded into a traceback."""
    if path.stat().st_size > 16 << 20:
        raise CheckpointError(path, f"{path.stat().st_size} bytes is too large for a {CONFIG_NAME}")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(path, f"not a text file: {CONFIG_NAME} must be UTF-8 JSON") from None


def _parse_config(path: Path, text: str) -> ClipCapConfig:
    try:
        return ClipCapConfig.from_json(text)
    except ClipCapError as e:
        raise CheckpointError(path, f"bad ClipCap config: {e}") from None


# Files people point `info` and `export` at by mistake, by their first bytes: said as what they are.
_OTHER_KINDS = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive"),
)
TAKES = (
    "a checkpoint is a .pt/.pth/.bin pickle, a .safetensors file, or a directory with "
    "model.safetensors + config.json (`clipcap info` also takes a bundle directory)"
)


def _other_kind(path: Path) -> str | None:
    """What a file is when its first bytes say it is not a PyTorch checkpoint (a zip or a pickle)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    for magic, kind in _OTHER_KINDS:
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    if head and head[:2] != b"PK" and head[:1] != b"\x80" and head.lstrip()[:1] in (b"{", b"["):
        return "a JSON file"
    return None


def _read_pickle(path: Path) -> StateDict:
    kind = _other_kind(path)
    if kind is not None:
        raise CheckpointError(path, f"{kind}, not a checkpoint: {TAKES}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Weights only load failed" in str(e):
            raise CheckpointError(
                path,
                "refused: this pickle needs code to load (it holds more than tensors), and running it "
                "could execute anything. Re-save it as a plain state dict "
                "(torch.save(model.state_dict(), ...)) where it was made.",
            ) from None
        raise CheckpointError(path, f"not a PyTorch checkpoint ({_describe_error(e)})") from None
    except Exception as e:  # garbage bytes make the unpickler raise anything
        if path.is_file() and path.stat().st_size == 0:
            raise CheckpointError(
                path, "the file is empty (0 bytes), not a checkpoint; it was not written completely"
            ) from None
        raise CheckpointError(
            path,
            "not a readable PyTorch checkpoint (truncated or corrupt, or another kind of file) "
            f"({_describe_error(e)})",
        ) from None
    return _unwrap(obj, path)


def _describe_error(e: BaseException) -> str:
    # torch.load's messages can be "" (an empty file) or a bare byte value ("101" for a text file).
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text and not text.isdigit() else type(e).__name__


def _check_against_weights(config: ClipCapConfig, state_dict: StateDict, path: Path) -> None:
    """The stored config's GPT-2 sizes against the weights' shapes, before the model is built from
    them: a config.json with vocab_size 10**9 must not allocate 512 GB to find out it is wrong."""
    g = config.gpt2
    expected = {
        "gpt.transformer.wte.weight": (g.vocab_size, g.n_embd),
        "gpt.transformer.wpe.weight": (g.n_positions, g.n_embd),
    }
    for key, shape in expected.items():
        if key in state_dict and tuple(state_dict[key].shape) != shape:
            raise CheckpointError(
                path,
                f"its config says {key} is {list(shape)} but the weights hold "
                f"{list(state_dict[key].shape)}: the config.json does not belong to these weights",
            )
    layers = _count(state_dict, r"gpt\.transformer\.h\.(\d+)\.ln_1\.weight")
    if layers and layers != g.n_layer:
        raise CheckpointError(
            path, f"its config says n_layer {g.n_layer} but the weights have {layers} layers"
        )


def _unwrap(obj: Any, path: Path) -> StateDict:
    # Training scripts often wrap the weights: {"state_dict": ...}, {"model": ...}; DDP adds "module.".
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(path, f"expected a state dict (a dict of tensors), found {type(obj).__name__}")
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(path, f"not a state dict: {not_tensors[:3]} are not tensors")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def _count(state_dict: Mapping[str, Any], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in state_dict if (m := rx.fullmatch(k))})
