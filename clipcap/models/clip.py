"""CLIP image encoders that give exactly the embedding a ClipCap mapper was trained on.

ClipCap feeds its mapper the *un-normalised* CLIP image embedding: open_clip's
``encode_image(x, normalize=False)`` or Hugging Face's ``CLIPModel.get_image_features``. Each encoder
here wraps one library's model, returns that embedding for preprocessed pixels, and carries a
:class:`~clipcap.config.ClipSpec` naming the CLIP and its preprocessing, so that a checkpoint's config
can rebuild the same encoder with :func:`load_image_encoder`.

Two backends:

- :func:`open_clip_encoder`: an open_clip model name plus a pretrained tag or a local weights file.
- :func:`hf_clip_encoder`: a Hugging Face ``CLIPModel`` hub id or local directory.

The pieces: the encoder base type (``clip_encoder``), the open_clip backend (``clip_open_clip``), the
Hugging Face backend (``clip_hf``) and the fail-fast download checks (``clip_downloads``); this module
rebuilds an encoder from a spec and re-exports every public name.

torch is needed to import this module; open_clip and transformers only by the backend that uses them.
"""

from __future__ import annotations

import os

from clipcap.config import ClipSpec
from clipcap.errors import OptionsError

# Re-exported: callers and tests import these from here. The private ones are what tests reach.
from clipcap.models.clip_downloads import (  # noqa: F401
    _check_download_possible,
    _check_hub_repo_available,
    _hub_offline,
    _in_hub_cache,
    _reachable,
)
from clipcap.models.clip_encoder import ImageEncoder, _square  # noqa: F401
from clipcap.models.clip_hf import HFClipEncoder, _hf_preprocessing, hf_clip_encoder  # noqa: F401
from clipcap.models.clip_open_clip import (
    NO_PRETRAINED,
    OpenClipEncoder,
    is_torchscript_archive,
    open_clip_encoder,
)

__all__ = [
    "NO_PRETRAINED",
    "HFClipEncoder",
    "ImageEncoder",
    "OpenClipEncoder",
    "hf_clip_encoder",
    "is_torchscript_archive",
    "load_image_encoder",
    "open_clip_encoder",
]


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
