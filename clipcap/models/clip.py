"""CLIP image encoders that give exactly the embedding a ClipCap mapper was trained on.

ClipCap feeds its mapper the *un-normalised* CLIP image embedding: open_clip's
``encode_image(x, normalize=False)`` or Hugging Face's ``CLIPModel.get_image_features``. Each encoder
here wraps one library's model, returns that embedding for preprocessed pixels, and carries a
:class:`~clipcap.config.ClipSpec` naming the CLIP and its preprocessing, so that a checkpoint's config
can rebuild the same encoder with :func:`load_image_encoder`.

Two backends:

- :func:`open_clip_encoder`: an open_clip model name plus a pretrained tag or a local weights file.
- :func:`hf_clip_encoder`: a Hugging Face ``CLIPModel`` hub id or local directory.

torch is needed to import this module; open_clip and transformers only by the backend that uses them.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import tempfile
import urllib.parse
import warnings
import zipfile
from pathlib import Path
from typing import Any

from clipcap.config import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ClipSpec, Preprocessing
from clipcap.errors import CheckpointError, OptionsError, require
from clipcap.logs import drop_root_records

# open_clip's notice when a model is built without weights (logged on the root logger).
NO_PRETRAINED = "No pretrained weights loaded"

torch = require("torch", "export")

__all__ = [
    "HFClipEncoder",
    "ImageEncoder",
    "OpenClipEncoder",
    "hf_clip_encoder",
    "is_torchscript_archive",
    "load_image_encoder",
    "open_clip_encoder",
]


class ImageEncoder(torch.nn.Module):
    """Preprocessed pixels ``[B, 3, H, W]`` float32 -> the CLIP image embedding ``[B, D]``, un-normalised.

    Always float32 and in eval mode with frozen weights: ClipCap never trains its CLIP, and a dropout
    or patch dropout switched on by a stray ``.train()`` would change the embedding.
    """

    def __init__(self, spec: ClipSpec) -> None:
        super().__init__()
        self.spec = spec

    @property
    def embed_dim(self) -> int:
        return self.spec.embed_dim

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def train(self, mode: bool = True) -> ImageEncoder:
        # Ignore the mode on purpose: see the class docstring.
        return super().train(False)

    def _freeze(self) -> None:
        self.float()
        self.requires_grad_(False)
        self.eval()


# --------------------------------------------------------------------------------------------------
# open_clip


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
    architecture = None
    if isinstance(model_config, dict):  # a spec's own copy (ClipSpec.model_config)
        architecture = model_config
        _register_model_config_dict(open_clip, model_name, architecture)
    elif model_config is not None:
        architecture = _register_model_config(open_clip, model_name, Path(model_config))
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
    torchscript = weights_file is not None and is_torchscript_archive(weights_file)

    # The activation the source implies, then the user's word over it.
    if tag_cfg:
        implied: bool | None = bool(tag_cfg.get("quick_gelu", False))
    elif torchscript:
        implied = True
    elif has_schema:
        implied = None  # the config lives in the repo or folder; leave it to open_clip
    else:
        implied = bool(open_clip.get_model_config(model_name).get("quick_gelu", False))
    use_quick_gelu = implied if quick_gelu is None else quick_gelu

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
    else:
        source = None if pretrained is None else (pretrained if tag_cfg else str(weights_file))
        try:
            model = open_clip.create_model(model_name, pretrained=source, weights_only=True, **activation)
        except RuntimeError as e:
            if weights_file is None:
                raise
            raise CheckpointError(weights_file, f"cannot be loaded into open_clip {model_name!r}: {e}") from e

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


def _check_download_possible(tag_cfg: dict[str, Any], model_name: str, tag: str) -> None:
    """Fail at once, fix first, when a pretrained tag's weights must be downloaded and cannot be.

    Offline, open_clip's download retries for a minute and logs every retry before it fails; one
    look at the Hugging Face cache and one connection attempt say the same thing in a second.
    """
    hub = tag_cfg.get("hf_hub", "")
    host = "huggingface.co" if hub else urllib.parse.urlparse(tag_cfg.get("url", "")).hostname
    if hub and _in_hub_cache(hub):
        return
    offline = _hub_offline()
    if not offline and host and _reachable(host):
        return
    why = "HF_HUB_OFFLINE is set" if offline else f"{host} cannot be reached (offline?)"
    raise OptionsError(
        f"use local CLIP weights: pass --clip-weights FILE (pretrained=FILE in Python). "
        f"--clip {model_name}:{tag} needs its weights downloaded, they are not in the Hugging Face "
        f"cache, and {why}"
    )


def _check_hub_repo_available(repo: str) -> None:
    """The same fail-fast for a Hugging Face CLIP named by its hub id."""
    if _in_hub_cache(f"{repo}/config.json"):
        return
    offline = _hub_offline()
    if not offline and _reachable("huggingface.co"):
        return
    why = "HF_HUB_OFFLINE is set" if offline else "huggingface.co cannot be reached (offline?)"
    raise OptionsError(
        f"use a local CLIP: pass --clip hf:DIR, a save_pretrained directory. The hub id {repo!r} "
        f"is not in the Hugging Face cache, and {why}"
    )


def _in_hub_cache(hub: str, cache_dir: str | os.PathLike[str] | None = None) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    repo, filename = os.path.split(hub)  # open_clip's reading: "org/model/" names no file
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    return any(isinstance(try_to_load_from_cache(repo, name, cache_dir=cache_dir), str) for name in names)


def _hub_offline() -> bool:
    try:
        from huggingface_hub import constants
    except ImportError:
        return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    return bool(constants.HF_HUB_OFFLINE)


def _reachable(host: str, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


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


def _square(size: int | tuple[int, ...] | list[int], what: str) -> int:
    if isinstance(size, int):
        return size
    if len(size) == 2 and size[0] == size[1]:
        return int(size[0])
    raise OptionsError(
        f"{what} {tuple(size)} is not square; ClipCap's preprocessing takes square images only"
    )


# --------------------------------------------------------------------------------------------------
# Hugging Face transformers


class HFClipEncoder(ImageEncoder):
    """A Hugging Face CLIP's ``get_image_features(pixel_values)``: the projected pooled CLS token.

    Holds a ``CLIPVisionModelWithProjection`` (vision tower + visual projection, the same weights under
    the same names as in ``CLIPModel``), whose ``image_embeds`` is exactly ``get_image_features``; it
    also avoids ``get_image_features``' change of return type (a tensor in transformers 4.x, a
    ``BaseModelOutputWithPooling`` in 5.x).
    """

    def __init__(self, model: torch.nn.Module, spec: ClipSpec) -> None:
        super().__init__(spec)
        self.model = model
        self._freeze()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values, return_dict=True).image_embeds


# PIL resample codes, as CLIPImageProcessor stores them.
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
# A CLIPModel checkpoint's weights that the image embedding does not use.
_HF_TEXT_WEIGHTS = (r"^text_model\.", r"^text_projection\.", r"^logit_scale$")


def hf_clip_encoder(name_or_path: str | os.PathLike[str]) -> HFClipEncoder:
    """Build a Hugging Face CLIP image encoder from a hub id (needs network) or a local directory.

    The directory holds a ``CLIPModel`` (or ``CLIPVisionModelWithProjection``) saved with
    ``save_pretrained``; only the vision tower and visual projection are loaded. Preprocessing comes
    from ``preprocessor_config.json`` beside it when present (CLIPImageProcessor's), otherwise from
    CLIP's defaults at the vision tower's image size.

    Raises:
        OptionsError: a missing directory, a model that is not CLIP, or a preprocessor config that
            :class:`~clipcap.config.Preprocessing` cannot express.
        CheckpointError: weights that lack the vision tower or projection, or do not fit the config.
    """
    transformers = require("transformers", "export")

    name = os.fspath(name_or_path)
    local = Path(name).expanduser()
    if local.is_dir():
        name = str(local)
    elif local.exists():
        raise OptionsError(
            f"{name} is a file; a Hugging Face CLIP is a save_pretrained directory or a hub id"
        )
    elif name.startswith(("/", ".", "~")) or name.count("/") > 1:  # a path, not an "org/name" hub id
        raise OptionsError(f"Hugging Face CLIP directory not found: {name}")
    else:
        _check_hub_repo_available(name)

    config = transformers.AutoConfig.from_pretrained(name)
    if isinstance(config, transformers.CLIPConfig):
        vision_config = config.vision_config
        # The projection size lives on CLIPConfig; the vision sub-config's own projection_dim is a stale
        # default (512) in saved CLIPModel configs.
        vision_config.projection_dim = config.projection_dim
    elif isinstance(config, transformers.CLIPVisionConfig):
        vision_config = config
    else:
        raise OptionsError(f"{name} is not a CLIP model (model_type {config.model_type!r})")

    try:
        model, info = _vision_model_class(transformers).from_pretrained(
            name, config=vision_config, output_loading_info=True
        )
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(name, f"weights do not fit its CLIP config: {e}") from e
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise CheckpointError(
            name,
            f"lacks {len(missing)} weights of the CLIP image encoder (e.g. {', '.join(missing[:3])}); "
            "a CLIPModel or CLIPVisionModelWithProjection is needed (a CLIPVisionModel has no projection)",
        )

    spec = ClipSpec(
        backend="hf",
        model=os.fspath(name_or_path),
        pretrained=None,
        embed_dim=int(model.visual_projection.out_features),
        preprocessing=_hf_preprocessing(
            _read_preprocessor_config(name), _square(vision_config.image_size, "image_size")
        ),
    )
    return HFClipEncoder(model, spec)


@functools.cache
def _vision_model_class(transformers: Any) -> Any:
    """CLIPVisionModelWithProjection, told that a CLIPModel checkpoint's text weights are expected.

    Without this, loading a CLIPModel checkpoint logs every text-tower weight as unexpected.
    """

    class CLIPImageEmbedder(transformers.CLIPVisionModelWithProjection):
        _keys_to_ignore_on_load_unexpected = list(_HF_TEXT_WEIGHTS)  # noqa: RUF012 - 4.x adds a list

    return CLIPImageEmbedder


def _read_preprocessor_config(name: str) -> dict[str, Any] | None:
    from transformers.utils import cached_file

    path = cached_file(name, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OptionsError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise OptionsError(f"{path} is not a JSON object")
    return data


def _hf_preprocessing(cfg: dict[str, Any] | None, image_size: int) -> Preprocessing:
    """CLIPImageProcessor's settings as a Preprocessing, or CLIP's defaults when there are none."""
    if cfg is None:
        return Preprocessing(image_size, convention="hf")

    def refuse(what: str) -> OptionsError:
        return OptionsError(f"preprocessor_config.json {what}, which clipcap's Preprocessing cannot express")

    for flag in ("do_resize", "do_rescale", "do_normalize"):
        if not cfg.get(flag, True):
            raise refuse(f"sets {flag}=false")
    if abs(float(cfg.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9:
        raise refuse(f"rescales by {cfg['rescale_factor']} instead of 1/255")

    # Older processors store plain ints; newer ones dicts.
    size = cfg.get("size", image_size)
    size = {"shortest_edge": size} if isinstance(size, int) else dict(size)
    if "shortest_edge" in size:
        resize, target = "shortest", int(size["shortest_edge"])
    elif "height" in size and "width" in size and size["height"] == size["width"]:
        resize, target = "squash", int(size["height"])
    else:
        raise refuse(f"resizes to {size}")
    if cfg.get("do_center_crop", True):
        crop = cfg.get("crop_size", target)
        crop = {"height": crop, "width": crop} if isinstance(crop, int) else dict(crop)
        if crop.get("height") != target or crop.get("width") != target:
            raise refuse(f"resizes to {target} then crops {crop}")
    elif resize == "shortest":
        raise refuse("resizes the shorter side without a centre crop")

    resample = cfg.get("resample", 3)
    if resample not in _PIL_RESAMPLE:
        raise refuse(f"uses resample={resample!r}")
    return Preprocessing(
        image_size=target,
        resize=resize,
        interpolation=_PIL_RESAMPLE[resample],
        mean=tuple(cfg.get("image_mean", OPENAI_CLIP_MEAN)),
        std=tuple(cfg.get("image_std", OPENAI_CLIP_STD)),
        convention="hf",
    )


# --------------------------------------------------------------------------------------------------
# From a spec


def load_image_encoder(spec: ClipSpec, *, model_config: str | os.PathLike[str] | None = None) -> ImageEncoder:
    """Build the encoder a :class:`~clipcap.config.ClipSpec` describes (e.g. a checkpoint's ``clip``).

    An open_clip spec's ``quick_gelu`` is passed on to :func:`open_clip_encoder` (None: inferred there).
    The returned encoder's ``spec`` is the one measured from the built model; its embedding size must
    equal ``spec.embed_dim``, the size the checkpoint's mapper takes.

    Raises:
        OptionsError: an open_clip spec without weights, ``model_config`` for a Hugging Face spec, or an
            embedding size other than ``spec.embed_dim``; and whatever the backend raises.
    """
    if spec.backend == "open_clip":
        if spec.pretrained is None:
            raise OptionsError(
                f"clip.pretrained is not set for open_clip {spec.model!r}: name a pretrained tag or a "
                "weights file, or the encoder would have random weights"
            )
        encoder: ImageEncoder = open_clip_encoder(
            spec.model,
            spec.pretrained,
            quick_gelu=spec.quick_gelu,
            model_config=model_config if model_config is not None else spec.model_config,
        )
    else:
        if model_config is not None:
            raise OptionsError("model_config is an open_clip model config; a Hugging Face CLIP needs none")
        encoder = hf_clip_encoder(spec.model)

    if encoder.embed_dim != spec.embed_dim:
        source = spec.model if spec.pretrained is None else f"{spec.model} ({spec.pretrained})"
        raise OptionsError(
            f"the CLIP {source} gives {encoder.embed_dim}-d embeddings but the spec says {spec.embed_dim}-d: "
            "the checkpoint was trained on a different CLIP"
        )
    return encoder
