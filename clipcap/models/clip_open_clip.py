"""open_clip's CLIP image encoders: an open_clip model name plus a pretrained tag or a local weights file.

torch is needed to import this module; open_clip only to build an encoder.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

from clipcap.config import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ClipSpec, Preprocessing
from clipcap.errors import CheckpointError, OptionsError, require
from clipcap.logs import drop_root_records
from clipcap.models.clip_downloads import _check_download_possible
from clipcap.models.clip_encoder import ImageEncoder, _square

# open_clip's notice when a model is built without weights (logged on the root logger).
NO_PRETRAINED = "No pretrained weights loaded"

torch = require("torch", "export")


class OpenClipEncoder(ImageEncoder):
    """An open_clip model's ``encode_image(pixel_values, normalize=False)``.

    For CLIP and CustomTextCLIP (every contrastive open_clip model), ``encode_image`` is exactly
    ``model.visual(x)`` when not normalising, so only the image tower is kept: the text tower would be
    dead weight in memory. Any other model class (CoCa) is kept whole and called through ``encode_image``.
    """

    def __init__(self, model: torch.nn.Module, spec: ClipSpec) -> None:
        super().__init__(spec)
        import open_clip

        if type(model).encode_image in (open_clip.CLIP.encode_image, open_clip.CustomTextCLIP.encode_image):
            self.visual: torch.nn.Module | None = model.visual
            self.model: torch.nn.Module | None = None
        else:
            self.visual = None
            self.model = model
        self._freeze()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.visual is not None:
            return self.visual(pixel_values)
        return self.model.encode_image(pixel_values, normalize=False)


# Entries of an OpenAI TorchScript archive's state_dict that are not weights of open_clip's CLIP
# (open_clip drops the first three too; a traced open_clip model also saves its text attention mask).
_TORCHSCRIPT_NON_WEIGHTS = ("input_resolution", "context_length", "vocab_size", "attn_mask")
_OPEN_CLIP_SCHEMAS = ("hf-hub:", "local-dir:")


def open_clip_encoder(
    model_name: str,
    pretrained: str | os.PathLike[str] | None = None,
    *,
    quick_gelu: bool | None = None,
    model_config: str | os.PathLike[str] | dict[str, Any] | None = None,
) -> OpenClipEncoder:
    """Build an open_clip image encoder.

    Args:
        model_name: an open_clip architecture ("ViT-B-32", "RN50x4", "ViT-B-32-quickgelu"; "/" is read
            as "-"), or open_clip's "hf-hub:org/repo" / "local-dir:/path" forms.
        pretrained: an open_clip pretrained tag ("openai", "laion2b_s34b_b79k"; downloaded by open_clip)
            or a local weights file (.pt, .pth, .bin, .safetensors, or OpenAI's own TorchScript ``.pt``).
            None gives random weights (tests only). State dicts load with ``weights_only=True``.
        quick_gelu: the activation of the weights: True for QuickGELU (everything OpenAI trained), False
            for GELU, None to infer it (see below).
        model_config: an open_clip model-config JSON file for an architecture open_clip does not ship;
            it is registered under its file stem, which must equal ``model_name`` (or the config
            itself, as a dict). The spec keeps the config, so a checkpoint carries its CLIP.

    QuickGELU: OpenAI's CLIP weights were trained with QuickGELU, and a model built with GELU loads them
    without complaint but gives different embeddings. With ``quick_gelu=None`` this function uses
    QuickGELU when the pretrained tag says so (open_clip itself only warns and keeps the model's own
    activation), when the file is a TorchScript archive (OpenAI's release format), or when the model
    config says so (the ``-quickgelu`` names). It cannot tell from a plain state dict: **a state dict
    converted from OpenAI's weights must be loaded with ``quick_gelu=True`` or into the ``-quickgelu``
    model name** (e.g. "ViT-B-32-quickgelu").

    The spec records the activation actually built in ``quick_gelu`` (None only for an "hf-hub:" /
    "local-dir:" model left to its own config), so :func:`load_image_encoder` rebuilds the same encoder.

    Raises:
        OptionsError: unknown model name or tag, missing weights or config file.
        CheckpointError: a weights file that does not fit the architecture.
    """
    open_clip = _import_open_clip()
    has_schema = model_name.startswith(_OPEN_CLIP_SCHEMAS)
    if not has_schema:
        model_name = model_name.replace("/", "-")
    architecture = _register_architecture(open_clip, model_name, model_config)
    _check_model_name(open_clip, model_name, pretrained, has_schema)
    pretrained, tag_cfg, weights_file = _resolve_pretrained(open_clip, model_name, pretrained)
    torchscript = weights_file is not None and is_torchscript_archive(weights_file)
    use_quick_gelu = _quick_gelu_to_build(open_clip, model_name, quick_gelu, tag_cfg, torchscript, has_schema)
    model = _create_model(
        open_clip, model_name, pretrained, tag_cfg, weights_file, torchscript, use_quick_gelu
    )
    spec = ClipSpec(
        backend="open_clip",
        model=model_name,
        pretrained=pretrained,
        embed_dim=_open_clip_embed_dim(model),
        preprocessing=_open_clip_preprocessing(open_clip.get_model_preprocess_cfg(model)),
        quick_gelu=use_quick_gelu,
        model_config=architecture,
    )
    return OpenClipEncoder(model, spec)


def _register_architecture(
    open_clip: Any, model_name: str, model_config: str | os.PathLike[str] | dict[str, Any] | None
) -> dict[str, Any] | None:
    """Register a --clip-config file (or a spec's copy of one) with open_clip; returns its config."""
    if isinstance(model_config, dict):  # a spec's own copy (ClipSpec.model_config)
        _register_model_config_dict(open_clip, model_name, model_config)
        return model_config
    if model_config is not None:
        return _register_model_config(open_clip, model_name, Path(model_config))
    return None


def _check_model_name(open_clip: Any, model_name: str, pretrained: object, has_schema: bool) -> None:
    if not has_schema and open_clip.get_model_config(model_name) is None:
        raise OptionsError(
            f"unknown open_clip model {model_name!r} (see open_clip.list_models()); for an architecture "
            f"open_clip does not ship, give its config file: --clip-config {model_name}.json "
            f"(model_config= in Python)"
        )
    if has_schema and pretrained is not None:
        raise OptionsError(
            f"{model_name!r} brings its own weights; pretrained must be None, got {pretrained!r}"
        )


def _resolve_pretrained(
    open_clip: Any, model_name: str, pretrained: str | os.PathLike[str] | None
) -> tuple[str | None, dict[str, Any], Path | None]:
    """(pretrained as the spec records it, the tag's config or {}, the local weights file or None)."""
    tag_cfg: dict[str, Any] = {}
    weights_file: Path | None = None
    if pretrained is not None:
        pretrained = os.fspath(pretrained)
        tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
        if tag_cfg:
            _check_download_possible(tag_cfg, model_name, pretrained)
        else:
            weights_file = _existing_weights_file(open_clip, model_name, pretrained)
            # Absolute, so a checkpoint trained on these embeddings finds them from anywhere.
            pretrained = str(weights_file.resolve())
    return pretrained, tag_cfg, weights_file


def _quick_gelu_to_build(
    open_clip: Any,
    model_name: str,
    quick_gelu: bool | None,
    tag_cfg: dict[str, Any],
    torchscript: bool,
    has_schema: bool,
) -> bool | None:
    """The activation the source implies, then the user's word over it."""
    if tag_cfg:
        implied: bool | None = bool(tag_cfg.get("quick_gelu", False))
    elif torchscript:
        implied = True
    elif has_schema:
        implied = None  # the config lives in the repo or folder; leave it to open_clip
    else:
        implied = bool(open_clip.get_model_config(model_name).get("quick_gelu", False))
    return implied if quick_gelu is None else quick_gelu


def _create_model(
    open_clip: Any,
    model_name: str,
    pretrained: str | None,
    tag_cfg: dict[str, Any],
    weights_file: Path | None,
    torchscript: bool,
    use_quick_gelu: bool | None,
) -> torch.nn.Module:
    activation: dict[str, Any] = {}
    if use_quick_gelu is not None:
        # force_quick_gelu keeps open_clip's tag/model consistency check quiet; the kwarg wins over the
        # model config, so it also turns QuickGELU off for a "-quickgelu" name.
        activation = {"force_quick_gelu": use_quick_gelu, "quick_gelu": use_quick_gelu}

    if torchscript:
        # open_clip loads weights with torch.load(weights_only=True), which refuses TorchScript
        # archives. Build the architecture, then copy the archive's weights in (torch.jit.load does not
        # unpickle arbitrary Python objects).
        # open_clip logs "No pretrained weights loaded ... initialized randomly": untrue here, the
        # archive's weights are copied in right after.
        with drop_root_records(NO_PRETRAINED):
            model = open_clip.create_model(model_name, pretrained=None, **activation)
        _load_torchscript_weights(model, weights_file, model_name)
        return model
    source = None if pretrained is None else (pretrained if tag_cfg else str(weights_file))
    try:
        return open_clip.create_model(model_name, pretrained=source, weights_only=True, **activation)
    except pickle.UnpicklingError:
        if weights_file is None:
            raise
        raise CheckpointError(
            weights_file,
            "refused as CLIP weights: this pickle needs code to load (it holds more than tensors), and "
            "running it could execute anything; pass a plain state dict, a .safetensors file or OpenAI's "
            "TorchScript .pt",
        ) from None
    except RuntimeError as e:
        if weights_file is None:
            raise
        raise CheckpointError(weights_file, f"cannot be loaded into open_clip {model_name!r}: {e}") from e


def is_torchscript_archive(path: str | os.PathLike[str]) -> bool:
    """Whether a file is a TorchScript archive (OpenAI's CLIP release format) rather than a state dict.

    Both are zip files; only TorchScript holds ``constants.pkl`` and a ``code/`` folder (under the
    archive's top folder). Reads the zip directory, not the weights.
    """
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            inner = name.split("/", 1)[-1]
            if inner == "constants.pkl" or inner.startswith("code/"):
                return True
    return False


def _import_open_clip() -> Any:
    return require("open_clip", "export", package="open_clip_torch")


def _register_model_config(open_clip: Any, model_name: str, path: Path) -> dict[str, Any]:
    """Register a --clip-config file with open_clip; returns the config it holds."""
    if not path.is_file():
        raise OptionsError(f"open_clip model config not found: {path}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OptionsError(f"cannot read open_clip model config {path}: {e}") from None
    # open_clip silently skips a file without these keys; say so instead.
    if not isinstance(config, dict) or not all(k in config for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise OptionsError(f"{path} is not an open_clip model config (needs embed_dim, vision_cfg, text_cfg)")
    if path.stem != model_name:
        raise OptionsError(
            f"open_clip registers a model config under its file name: {path.name} defines {path.stem!r}, "
            f"not {model_name!r}"
        )
    # add_model_config appends to a global search path and rescans it; skip repeats.
    if open_clip.get_model_config(model_name) != config:
        open_clip.add_model_config(path)
    return config


def _register_model_config_dict(open_clip: Any, model_name: str, config: dict[str, Any]) -> None:
    """Register a model config a spec carries (open_clip reads configs from files only)."""
    if open_clip.get_model_config(model_name) == config:
        return
    folder = Path(tempfile.mkdtemp(prefix="clipcap-open-clip-config-"))
    path = folder / f"{model_name}.json"
    path.write_text(json.dumps(config))
    _register_model_config(open_clip, model_name, path)


def _existing_weights_file(open_clip: Any, model_name: str, pretrained: str) -> Path:
    path = Path(pretrained).expanduser()
    if path.is_file():
        return path
    looks_like_path = path.suffix != "" or any(sep in pretrained for sep in ("/", "\\", "~"))
    if looks_like_path:
        raise OptionsError(f"CLIP weights file not found: {pretrained}")
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    raise OptionsError(
        f"{pretrained!r} is neither a pretrained tag of open_clip {model_name!r} nor an existing file "
        f"(its tags: {', '.join(tags) if tags else 'none'})"
    )


def _load_torchscript_weights(model: torch.nn.Module, path: Path, model_name: str) -> None:
    try:
        with warnings.catch_warnings():
            # Recent torch deprecates TorchScript; nothing the user can act on, OpenAI ships this format.
            warnings.filterwarnings(
                "ignore", message=r".*torch\.jit\.load.*deprecated", category=FutureWarning
            )
            archive = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as e:
        raise CheckpointError(path, f"looks like a TorchScript archive but cannot be loaded: {e}") from e
    state = {k: v for k, v in archive.state_dict().items() if k not in _TORCHSCRIPT_NON_WEIGHTS}
    try:
        # load_state_dict copies into the float32 parameters, so OpenAI's fp16 weights come out float32.
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(path, f"does not fit open_clip {model_name!r}: {e}") from e


def _open_clip_embed_dim(model: torch.nn.Module) -> int:
    output_dim = getattr(getattr(model, "visual", None), "output_dim", None)
    if isinstance(output_dim, int):
        return output_dim
    # Towers without output_dim (timm, CoCa): measure it.
    size = _square(getattr(model.visual, "image_size", 224), "image_size")
    with torch.no_grad():
        return int(model.encode_image(torch.zeros(1, 3, size, size), normalize=False).shape[-1])


def _open_clip_preprocessing(cfg: dict[str, Any]) -> Preprocessing:
    return Preprocessing(
        image_size=_square(cfg.get("size", 224), "preprocessing size"),
        resize=cfg.get("resize_mode", "shortest"),
        interpolation=cfg.get("interpolation", "bicubic"),
        mean=tuple(cfg.get("mean", OPENAI_CLIP_MEAN)),
        std=tuple(cfg.get("std", OPENAI_CLIP_STD)),
        convention="torchvision",
    )
