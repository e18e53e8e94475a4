"""Load every ClipCap checkpoint users have, and save this project's own format.

Formats, detected from the state-dict keys (../shared/reference/clipcap-formats.md):

==================== =========================================== ==========================
format               mapper keys                                 file
==================== =========================================== ==========================
seed                 ``mapping.proj1/proj2``                     torch pickle (state dict)
original-mlp         ``clip_project.model.0/2``                  torch pickle
original-linear      ``clip_project.weight/bias``                torch pickle
original-transformer ``clip_project.linear``, ``prefix_const``   torch pickle
clipcap-onnx         the originals' names                        safetensors + JSON config
==================== =========================================== ==========================

Pickles are read with ``torch.load(weights_only=True)``: one that needs code to unpickle is
refused, never executed. GPT-2's size, the prefix length, the CLIP width and the mapper's shape
are read off the tensor shapes; what the weights cannot tell is a keyword argument.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from clipcap import hub
from clipcap.config import (
    HF_VIT_B_32,
    OPENAI_RN50X4,
    OPENAI_VIT_B_32,
    STANDARD_GPT2_HEADS,
    ClipCapConfig,
    ClipSpec,
    GPT2Config,
    MapperConfig,
)
from clipcap.errors import CheckpointError, ClipCapError
from clipcap.models.checkpoint_files import (
    _METADATA_KEY,
    CONFIG_NAME,
    WEIGHTS_NAME,
    StateDict,
    _check_against_weights,
    _count,
    read_checkpoint,
)
from clipcap.models.model import ClipCapModel
from clipcap.options import ORIGINAL_DEFAULTS, SEED_DEFAULTS, DecodingOptions

log = logging.getLogger(__name__)


# Buffers of transformers < 4.2x GPT-2 (the official checkpoints used 4.11): a causal mask and a
# constant, no learned information.
_LEGACY_BUFFER = re.compile(r"^gpt\.transformer\.h\.\d+\.attn\.(bias|masked_bias)$")


def load_checkpoint(
    path: str | Path,
    *,
    normalize_prefix: bool | None = None,
    clip: ClipSpec | None = None,
    n_head: int | None = None,
    mapper_heads: int | None = None,
    generation: DecodingOptions | None = None,
) -> ClipCapModel:
    """Load a ClipCap checkpoint of any supported format into a ``ClipCapModel`` (eval mode).

    The settings the weights cannot tell, for the pickled formats (this project's own format
    carries them in its config; given here, they override it):

    - ``normalize_prefix``: L2-normalise the CLIP embedding before the mapper. Default False, the
      original training script's default; the released ``transformer_weights.pt`` needs True.
    - ``clip``: the CLIP that produced the embeddings. Default by format and width: OpenAI
      ViT-B/32 (D=512) for the originals, RN50x4 for D=640, Hugging Face
      ``openai/clip-vit-base-patch32`` for the seed.
    - ``n_head``: GPT-2's heads, needed only for non-standard widths (768, 1024, 1280, 1600 known).
    - ``mapper_heads``: the transformer mapper's heads (the original: 8).
    - ``generation``: decoding defaults; default as the source project generated.

    ``path`` may name a file on the Hugging Face Hub: ``hf:OWNER/REPO/FILE[@REVISION]`` (or
    ``hf:OWNER/REPO[/FOLDER]`` for this project's own format), downloaded into the Hub's cache.
    """
    path = Path(hub.local_checkpoint(str(path)))
    state_dict, stored_config = read_checkpoint(path)
    fmt = "clipcap-onnx" if stored_config is not None else detect_format(state_dict, path)
    state_dict = canonical_state_dict(state_dict, fmt, path)
    if stored_config is not None:
        config = stored_config
        overrides = {
            k: v
            for k, v in dict(normalize_prefix=normalize_prefix, clip=clip, generation=generation).items()
            if v is not None
        }
        config = _checked(path, lambda: config.replace(**overrides))
        _check_against_weights(config, state_dict, path)
    else:
        config = infer_config(
            state_dict,
            fmt,
            path=path,
            normalize_prefix=normalize_prefix,
            clip=clip,
            n_head=n_head,
            mapper_heads=mapper_heads,
            generation=generation,
        )
    model = ClipCapModel(config)
    _load_weights(model, state_dict, path)
    return model.eval()


def save_checkpoint(model: ClipCapModel, directory: str | Path) -> Path:
    """Write ``model`` in this project's format: ``model.safetensors`` + ``config.json``.

    The tied LM head is stored once (as ``gpt.transformer.wte.weight``); the config is also kept in
    the safetensors header, so the weights file alone is a complete checkpoint.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k != "gpt.lm_head.weight"}
    text = model.config.replace(source_format="clipcap-onnx").to_json()
    save_file(tensors, str(directory / WEIGHTS_NAME), metadata={_METADATA_KEY: text})
    (directory / CONFIG_NAME).write_text(text)
    return directory


def detect_format(state_dict: Mapping[str, Any], path: str | Path = "<state dict>") -> str:
    """Which ClipCap format a state dict is in, from its mapper keys."""
    keys = set(state_dict)
    if "mapping.proj1.weight" in keys:
        fmt = "seed"
    elif "clip_project.model.0.weight" in keys:
        fmt = "original-mlp"
    elif "clip_project.linear.weight" in keys and "clip_project.prefix_const" in keys:
        fmt = "original-transformer"
    elif "clip_project.weight" in keys:
        fmt = "original-linear"
    else:
        sample = ", ".join(sorted(keys)[:5])
        raise CheckpointError(
            path,
            "not a ClipCap checkpoint: no mapping-network keys (mapping.proj1, clip_project.model.0, "
            f"clip_project.weight or clip_project.linear + prefix_const). Its keys begin: {sample}",
        )
    if "gpt.transformer.wte.weight" not in keys:
        raise CheckpointError(
            path, f"{fmt} checkpoint without GPT-2 weights (gpt.transformer.wte.weight missing)"
        )
    return fmt


def canonical_state_dict(state_dict: StateDict, fmt: str, path: str | Path = "<state dict>") -> StateDict:
    """The originals' key names, without legacy buffers; the tied LM head checked and dropped."""
    out = {}
    for key, value in state_dict.items():
        if _LEGACY_BUFFER.match(key):
            continue
        if fmt == "seed" and key.startswith("mapping."):
            # The seed's MLP is the original's with other names: proj1 = model.0, proj2 = model.2.
            key = key.replace("mapping.proj1.", "clip_project.model.0.").replace(
                "mapping.proj2.", "clip_project.model.2."
            )
        out[key] = value
    head = out.pop("gpt.lm_head.weight", None)
    wte = out.get("gpt.transformer.wte.weight")
    if head is not None and wte is not None and (head.shape != wte.shape or not torch.equal(head, wte)):
        # GPT-2 ties them; a checkpoint where they differ is not a model this project can export.
        raise CheckpointError(path, "gpt.lm_head.weight differs from gpt.transformer.wte.weight (untied)")
    return out


def infer_config(
    state_dict: StateDict,
    fmt: str,
    *,
    path: str | Path = "<state dict>",
    normalize_prefix: bool | None = None,
    clip: ClipSpec | None = None,
    n_head: int | None = None,
    mapper_heads: int | None = None,
    generation: DecodingOptions | None = None,
) -> ClipCapConfig:
    """A config from a canonical state dict's shapes plus the settings the weights cannot tell."""

    def shape(key: str) -> tuple[int, ...]:
        if key not in state_dict:
            raise CheckpointError(path, f"{fmt} checkpoint is missing {key}")
        return tuple(state_dict[key].shape)

    vocab, E = _dims(path, "gpt.transformer.wte.weight", shape("gpt.transformer.wte.weight"), 2)
    n_positions = shape("gpt.transformer.wpe.weight")[0]
    n_layer = _count(state_dict, r"gpt\.transformer\.h\.(\d+)\.ln_1\.weight")
    if n_head is None:
        if E not in STANDARD_GPT2_HEADS:
            raise CheckpointError(
                path,
                f"GPT-2 width {E} is not a standard size ({sorted(STANDARD_GPT2_HEADS)}), so its head count "
                "cannot be known: pass n_head (--gpt2-config NAME_OR_CONFIG_JSON on the command line)",
            )
        n_head = STANDARD_GPT2_HEADS[E]
    gpt2 = _checked(path, lambda: GPT2Config(vocab, n_positions, E, n_layer, n_head))

    if fmt in ("seed", "original-mlp"):
        hidden, D = _dims(path, "clip_project.model.0.weight", shape("clip_project.model.0.weight"), 2)
        out = shape("clip_project.model.2.weight")[0]
        mapper = _checked(path, lambda: MapperConfig("mlp", D, _prefix(path, out, E), hidden_dim=hidden))
    elif fmt == "original-linear":
        out, D = _dims(path, "clip_project.weight", shape("clip_project.weight"), 2)
        mapper = _checked(path, lambda: MapperConfig("linear", D, _prefix(path, out, E)))
    else:
        out, D = _dims(path, "clip_project.linear.weight", shape("clip_project.linear.weight"), 2)
        P = shape("clip_project.prefix_const")[0]
        layers = _count(state_dict, r"clip_project\.transformer\.layers\.(\d+)\.norm1\.weight")
        heads = 8 if mapper_heads is None else mapper_heads
        if E % heads:
            raise CheckpointError(path, f"mapper width {E} is not divisible by mapper_heads={heads}")
        mapper = _checked(
            path,
            lambda: MapperConfig(
                "transformer", D, P, clip_length=_prefix(path, out, E), num_layers=layers, num_heads=heads
            ),
        )

    if normalize_prefix is None:
        normalize_prefix = False
        if fmt == "original-transformer":
            log.warning(
                "%s: normalize_prefix not given; using False (the original training default). The released "
                "transformer_weights.pt (CLIP RN50x4) was trained on L2-normalised embeddings: "
                "pass True for it.",
                path,
            )
    if clip is None:
        # The sources' CLIPs, by width; another width has no known CLIP and gets none.
        known = {512: HF_VIT_B_32 if fmt == "seed" else OPENAI_VIT_B_32, 640: OPENAI_RN50X4}
        clip = known.get(mapper.clip_dim)
    if generation is None:
        generation = SEED_DEFAULTS if fmt == "seed" else ORIGINAL_DEFAULTS
        # A small model's context may not hold the source's length: the default shrinks to fit.
        room = gpt2.n_positions - mapper.prefix_length
        generation = generation.replace(max_new_tokens=max(1, min(generation.max_new_tokens, room)))
    return _checked(
        path,
        lambda: ClipCapConfig(
            gpt2=gpt2,
            mapper=mapper,
            source_format=fmt,
            normalize_prefix=normalize_prefix,
            clip=clip,
            generation=generation,
        ),
    )


def _load_weights(model: ClipCapModel, state_dict: StateDict, path: Path) -> None:
    expected = {k: v for k, v in model.state_dict().items() if k != "gpt.lm_head.weight"}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = [
        f"{k} {list(state_dict[k].shape)} (expected {list(v.shape)})"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    if unexpected:
        problems.append(
            f"unknown keys: {', '.join(unexpected[:5])}" + (" ..." if len(unexpected) > 5 else "")
        )
    if wrong:
        problems.append(f"shape mismatch: {'; '.join(wrong[:5])}")
    if problems:
        raise CheckpointError(path, "; ".join(problems))
    # Weights keep their stored dtype in the file; the model computes in float32.
    model.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=False)


def _dims(path: Path | str, key: str, shape: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    if len(shape) != ndim:
        raise CheckpointError(path, f"{key} has shape {list(shape)}, expected {ndim} dimensions")
    return shape


def _prefix(path: Path | str, out: int, E: int) -> int:
    if out % E:
        raise CheckpointError(path, f"mapper output size {out} is not a multiple of GPT-2's width {E}")
    return out // E


def _checked(path: Path | str, build):
    try:
        return build()
    except ClipCapError as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(path, str(e)) from None


def describe(config: ClipCapConfig) -> dict[str, Any]:
    """The facts a user wants to see about a checkpoint (``clipcap info``)."""
    g, m, gen = config.gpt2, config.mapper, config.generation
    return {
        "format": config.source_format,
        "variant": config.variant,
        "mapper": m.kind,
        "clip_dim (D)": m.clip_dim,
        "gpt2": f"E={g.n_embd}, layers={g.n_layer}, heads={g.n_head}, vocab={g.vocab_size}",
        "prefix_length (P)": m.prefix_length,
        "clip_length (C)": m.clip_length or None,
        "mapper layers": m.num_layers or None,
        "normalize_prefix": config.normalize_prefix,
        "clip": None
        if config.clip is None
        else f"{config.clip.backend}:{config.clip.model}"
        + (f" ({config.clip.pretrained})" if config.clip.pretrained else ""),
        "generation": f"{gen.strategy}, at most {gen.max_new_tokens} new tokens, "
        f"stop at {list(gen.stop_token_ids)}",
    }
