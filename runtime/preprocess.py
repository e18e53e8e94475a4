"""CLIP's image preprocessing without torch: the pixels open_clip's or transformers' transform gives.

:func:`preprocess` turns PIL images into the ``pixel_values`` batch of ``image_encoder.onnx``,
float32 ``[B, 3, S, S]``, as a :class:`~clipcap.config.Preprocessing` says. The CLIP embedding a
ClipCap mapper was trained on depends on these exact pixels, so each ``convention`` reproduces its
library step by step, rounding included (bit-identical in the tests, which allow 1e-5):

``"torchvision"``: open_clip's ``image_transform(S, is_train=False, ...)`` (and OpenAI clip's):

- ``resize="shortest"``: ``Resize(S)`` on the PIL image, in the image's own mode: the shorter side
  becomes S, the longer ``int(S * long / short)`` (truncated); ``CenterCrop(S)`` at offsets
  ``int(round((size - S) / 2))`` (Python's round: halves go to even); then ``convert("RGB")``.
- ``resize="squash"``: ``Resize((S, S))``, then ``convert("RGB")``.
- ``resize="longest"``: ``ResizeKeepRatio(S, longest=1)`` (the longer side becomes S, the shorter
  ``round(short * S / long)``), ``CenterCropOrPad(S, fill=0)`` (the fill 0 is in the image's own
  mode: black for RGB and L, palette entry 0 for P), then ``convert("RGB")``.
- ``ToTensor`` (``/ 255`` in float32), ``Normalize(mean, std)``.

``"hf"``: transformers' ``CLIPImageProcessor`` with the PIL backend (the "slow" processor:
``CLIPImageProcessor`` in transformers 4.x, ``CLIPImageProcessorPil`` in 5.x):

- convert to RGB first (see transparency below), then resize in RGB with PIL: shortest edge as
  above (``get_resize_output_image_size`` truncates the same way), or ``{"height": S, "width": S}``
  for ``resize="squash"``;
- centre crop at offsets ``(size - S) // 2`` (floor, which differs from torchvision's rounding
  when ``size - S`` is 3 mod 4);
- rescale ``float64(x) * (1/255)`` then float32, normalise in float32.
- ``resize="longest"`` has no CLIPImageProcessor form and raises :class:`ConfigError`.

transformers 5's default ``CLIPImageProcessor`` resizes uint8 *tensors* with torchvision's
antialiased bicubic, whose fixed-point rounding is not Pillow's: it is 1-2 levels of 255 off
Pillow (and so off the 4.x processor and this module) on under 1% of the values, and its rounding
can change with the CPU code path and the device. This module follows the PIL processor, the one
the 4.x releases used and the one AutoImageProcessor gave there.

Transparency (``transparency=``): ``"drop"`` is PIL's ``convert("RGB")``, which drops the alpha
channel and keeps the colour stored under it (open_clip, OpenAI clip, transformers 4.x);
``"white"`` composites the image onto white first, as transformers 5 does for images with an alpha
band or a ``transparency`` entry. The default, None, is each convention's current reference:
``"drop"`` for torchvision, ``"white"`` for hf. Opaque images are the same either way.

Image modes: give images in their own mode (as :func:`~clipcap.runtime.images.load_image` returns
them): L, LA, P, RGBA, CMYK, I;16, I, F... The torchvision convention resizes before converting to
RGB (so a P image is resized with NEAREST, RGBA with premultiplied alpha, I;16 in 16 bits, as
Pillow does), exactly as open_clip; converting to RGB beforehand would change the pixels.

Very elongated images: the shortest-edge resize of a 10 × 10,000 image would be 224 × 224,000
pixels, gigabytes for one caption. When the resized image would exceed :data:`FULL_RESIZE_LIMIT`
pixels (an aspect ratio over ~330:1 at S = 224), only the window that the centre crop keeps is
resized (Pillow's ``box``): the same sampling positions and filter, but not bit-identical, since
Pillow may then run its two 1-D passes in the other order and round the uint8 intermediate
differently (up to ~2 levels of 255 on photographs). Below the limit the result is exact.

Torch-free: numpy, Pillow and the standard library only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from clipcap.runtime.images import ImageError
from PIL import Image, ImageOps

from clipcap.config import Preprocessing
from clipcap.errors import ConfigError

__all__ = ["FULL_RESIZE_LIMIT", "INTERPOLATIONS", "TRANSPARENCY", "preprocess"]

INTERPOLATIONS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
"""``Preprocessing.interpolation`` -> Pillow's filter (open_clip and transformers both resize PIL images)."""

TRANSPARENCY = ("drop", "white")
"""How transparent pixels become RGB: ``convert("RGB")`` (drop alpha) or composite onto white."""

FULL_RESIZE_LIMIT = 1 << 24
"""Above this many pixels in the resized image, resize only the centre-crop window (see above)."""


def preprocess(
    images: Sequence[Image.Image] | Image.Image,
    spec: Preprocessing,
    *,
    transparency: str | None = None,
) -> np.ndarray:
    """Preprocessed pixels ``[B, 3, S, S]`` float32 (C order) for ``image_encoder.onnx``.

    Args:
        images: PIL images in any mode and size (a single image gives a batch of one).
        spec: the bundle's or checkpoint's preprocessing: image size S, resize mode, interpolation,
            mean, std and whose rounding to reproduce (``convention``).
        transparency: ``"drop"`` (``convert("RGB")``), ``"white"`` (composite onto white) or None
            for the convention's reference (torchvision: drop, hf: white as in transformers 5;
            pass ``"drop"`` to reproduce transformers 4.x).

    Raises:
        ConfigError: an interpolation, transparency or resize mode that cannot be reproduced
            (``resize="longest"`` with the hf convention).
        ImageError: an element that is not a PIL image, or whose mode cannot be converted to RGB.
    """
    if not isinstance(spec, Preprocessing):
        raise ConfigError(f"spec must be a clipcap.config.Preprocessing, got {type(spec).__name__}")
    resample = _resample(spec.interpolation)
    transparency = _transparency(spec, transparency)
    if spec.convention == "hf" and spec.resize == "longest":
        raise ConfigError(
            "preprocessing resize='longest' with convention='hf': transformers' CLIPImageProcessor has no "
            "such mode (it resizes the shortest edge or to height x width); use convention='torchvision'"
        )
    if isinstance(images, Image.Image):
        images = [images]

    size = spec.image_size
    view = _torchvision_view if spec.convention == "torchvision" else _hf_view
    pixels = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise ImageError(
                f"images[{i}] is a {type(image).__name__}, not a PIL image; load it with "
                "clipcap.runtime.images.load_image first"
            )
        if image.width == 0 or image.height == 0:
            raise ImageError(f"images[{i}] is {image.width}×{image.height}: an image without pixels")
        pixels[i] = np.asarray(view(image, spec, resample, transparency))

    # NHWC uint8 -> NCHW float32, C order; then each library's float arithmetic.
    nchw = pixels.transpose(0, 3, 1, 2)
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
    if spec.convention == "torchvision":
        # ToTensor: uint8 -> float32, / 255; Normalize: (x - mean) / std, float32 throughout.
        values = np.ascontiguousarray(nchw, dtype=np.float32)
        values /= np.float32(255)
    else:
        # transformers' rescale: upcast to float64, * (1/255), back to float32; normalize in float32.
        values = np.ascontiguousarray(nchw, dtype=np.float64)
        values *= 1 / 255
        values = values.astype(np.float32)
    values -= mean
    values /= std
    return values


# --------------------------------------------------------------------------------------------------
# The geometry: each convention's resize, crop and RGB conversion, on PIL images.


def _torchvision_view(
    image: Image.Image, spec: Preprocessing, resample: Image.Resampling, transparency: str
) -> Image.Image:
    """open_clip's transform up to ToTensor: an RGB image of S x S."""
    size = spec.image_size
    if transparency == "white" and _has_alpha(image):
        image = _on_white(image)
    # Everything below happens in the image's own mode; RGB comes last, as in open_clip.
    if spec.resize == "shortest":
        new_width, new_height = _shortest_edge_size(image.width, image.height, size)
        # torchvision's center_crop: int(round(...)), Python's round: halves go to even.
        left = round((new_width - size) / 2.0)
        top = round((new_height - size) / 2.0)
        image = _resize_and_crop(image, (new_width, new_height), (left, top), size, resample)
    elif spec.resize == "squash":
        if image.size != (size, size):
            image = image.resize((size, size), resample)
    else:  # longest
        image = _resize_keep_ratio_longest(image, size, resample)
        image = _center_crop_or_pad(image, size)
    return _to_rgb(image, "drop")


def _hf_view(
    image: Image.Image, spec: Preprocessing, resample: Image.Resampling, transparency: str
) -> Image.Image:
    """CLIPImageProcessor (PIL backend) up to rescale: an RGB image of S x S."""
    size = spec.image_size
    image = _to_rgb(image, transparency)  # transformers converts first, then resizes in RGB
    if spec.resize == "shortest":
        new_width, new_height = _shortest_edge_size(image.width, image.height, size)
        # transformers' center_crop: (size - crop) // 2.
        left, top = (new_width - size) // 2, (new_height - size) // 2
        return _resize_and_crop(image, (new_width, new_height), (left, top), size, resample)
    # squash: size {"height": S, "width": S}; the centre crop to S x S is then a no-op.
    return image if image.size == (size, size) else image.resize((size, size), resample)


def _shortest_edge_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) with the shorter side = size: torchvision's _compute_resized_output_size and
    transformers' get_resize_output_image_size, which agree (the longer side is truncated)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def _resize_and_crop(
    image: Image.Image,
    new_size: tuple[int, int],
    offset: tuple[int, int],
    crop: int,
    resample: Image.Resampling,
) -> Image.Image:
    """Resize to new_size, then crop a crop x crop square at offset (left, top)."""
    new_width, new_height = new_size
    left, top = offset
    if new_width * new_height <= FULL_RESIZE_LIMIT:
        if image.size != new_size:  # both libraries skip (or copy) a resize to the same size
            image = image.resize(new_size, resample)
        return image.crop((left, top, left + crop, top + crop))
    # Resize only the window the crop keeps: Pillow samples output pixel i of a box resize at
    # box_left + (i + 0.5) * scale, with the same scale (and so filter support) as the full resize.
    scale_x, scale_y = image.width / new_width, image.height / new_height
    box = (left * scale_x, top * scale_y, (left + crop) * scale_x, (top + crop) * scale_y)
    return image.resize((crop, crop), resample, box=box)


def _resize_keep_ratio_longest(image: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    """open_clip's ResizeKeepRatio(size, longest=1) at inference (no random scale or aspect)."""
    width, height = image.size
    ratio_h, ratio_w = height / size, width / size
    ratio = max(ratio_h, ratio_w) * 1.0 + min(ratio_h, ratio_w) * (1.0 - 1.0)  # as open_clip computes it
    # open_clip's round() can give 0 for a sliver of an image (and then fails); keep one pixel.
    new_height, new_width = (max(1, round(x * 1.0 / ratio)) for x in (height, width))
    if (new_width, new_height) == image.size:
        return image
    return image.resize((new_width, new_height), resample)


def _center_crop_or_pad(image: Image.Image, size: int) -> Image.Image:
    """open_clip's center_crop_or_pad(image, size, fill=0) on a PIL image."""
    width, height = image.size
    if size > width or size > height:
        pad_x, pad_y = max(size - width, 0), max(size - height, 0)
        border = (pad_x // 2, pad_y // 2, (pad_x + 1) // 2, (pad_y + 1) // 2)
        image = _pad_with_zero(image, border)
        width, height = image.size
        if (width, height) == (size, size):
            return image
    left, top = round((width - size) / 2.0), round((height - size) / 2.0)
    return image.crop((left, top, left + size, top + size))


def _pad_with_zero(image: Image.Image, border: tuple[int, int, int, int]) -> Image.Image:
    """torchvision's PIL pad(fill=0, padding_mode="constant"): 0 in every band of the image's mode."""
    bands = len(image.getbands())
    fill: float | tuple[float, ...] = 0.0 if image.mode == "F" else 0
    if bands > 1:
        fill = (fill,) * bands
    padded = ImageOps.expand(image, border=border, fill=fill)
    if image.mode == "P":
        padded.putpalette(image.getpalette())
    return padded


# --------------------------------------------------------------------------------------------------
# RGB


def _has_alpha(image: Image.Image) -> bool:
    # transformers 5's test, word for word: an "A" band, or a transparency entry (P, L and RGB PNGs).
    return "A" in image.getbands() or image.info.get("transparency") is not None


def _on_white(image: Image.Image) -> Image.Image:
    """transformers 5's convert_to_rgb for an image with transparency: composite onto white."""
    rgba = _convert(image, "RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_rgb(image: Image.Image, transparency: str) -> Image.Image:
    if transparency == "white" and _has_alpha(image):
        return _on_white(image)
    return image if image.mode == "RGB" else _convert(image, "RGB")


def _convert(image: Image.Image, mode: str) -> Image.Image:
    try:
        return image.convert(mode)
    except (ValueError, OSError) as e:
        raise ImageError(
            f"<PIL image, mode {image.mode}, {image.width}×{image.height}>: cannot be converted to {mode} "
            f"({e}); convert it to RGB yourself first"
        ) from None


# --------------------------------------------------------------------------------------------------
# Options


def _resample(interpolation: str) -> Image.Resampling:
    try:
        return INTERPOLATIONS[interpolation]
    except KeyError:
        raise ConfigError(
            f"preprocessing.interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}"
        ) from None


def _transparency(spec: Preprocessing, transparency: str | None) -> str:
    if transparency is None:
        return "drop" if spec.convention == "torchvision" else "white"
    if transparency not in TRANSPARENCY:
        raise ConfigError(
            f"transparency must be one of {', '.join(TRANSPARENCY)} or None, got {transparency!r}"
        )
    return transparency
