"""Hugging Face transformers' CLIP image encoders: a ``CLIPModel`` hub id or local directory.

torch is needed to import this module; transformers only to build an encoder.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

from clipcap.config import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ClipSpec, Preprocessing
from clipcap.errors import CheckpointError, OptionsError, require
from clipcap.models.clip_downloads import _check_hub_repo_available
from clipcap.models.clip_encoder import ImageEncoder, _square

torch = require("torch", "export")


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
