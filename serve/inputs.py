"""Turn what a client sent into what the engine takes: pixels per image, or checked embeddings.

Image decoding and preprocessing run on the HTTP side (in a worker thread), not in the decode
loop, so a large upload never stalls the batch. A bad image becomes its item's ImageError; the
request's other images go on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from clipcap.runtime import Captioner
from clipcap.runtime.images import ImageSource, load_image
from clipcap.runtime.preprocess import preprocess

from clipcap.errors import ImageError, OptionsError


def load_pixels(captioner: Captioner, sources: Sequence[ImageSource]) -> tuple[np.ndarray | None, list]:
    """(pixels [n_good, 3, S, S] or None, one entry per source: its row in pixels, or its ImageError)."""
    images, where = [], []
    for source in sources:
        try:
            images.append(load_image(source))
            where.append(len(images) - 1)
        except ImageError as e:
            where.append(e)
    if not images:
        return None, where
    return preprocess(images, captioner.preprocessing), where


def check_embeddings(captioner: Captioner, data: object) -> np.ndarray:
    """A JSON list of lists as float32 [n, D]; OptionsError naming the shape the bundle needs."""
    try:
        array = np.asarray(data, dtype=np.float32)
    except (TypeError, ValueError):
        array = None
    if array is None or array.ndim != 2 or array.shape[0] == 0 or array.shape[1] != captioner.clip_dim:
        shape = "not a list of equal-length number lists" if array is None else f"shape {list(array.shape)}"
        raise OptionsError(
            f"embeddings must be a non-empty list of lists of {captioner.clip_dim} numbers "
            f"(this bundle's CLIP width), got {shape}"
        )
    if not np.isfinite(array).all():
        raise OptionsError("embeddings must be finite numbers (no NaN or infinity)")
    return array
