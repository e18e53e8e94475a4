"""Load an image from whatever a caller has (a path, bytes, a file, a PIL image, a numpy array).

:func:`load_image` returns a fully decoded PIL image in its **own mode** (RGB, L, P, RGBA, CMYK,
I;16, ...): the conversion to RGB is part of the preprocessing, because open_clip resizes before
converting and transformers converts before resizing, and each must be reproduced as it is
(see :mod:`clipcap.runtime.preprocess`). Multi-frame files (GIF, APNG, TIFF) give their first frame.

Every bad input raises :class:`ImageError`, naming the input and saying what to do; no raw Pillow
or ``OSError`` traceback reaches the caller. The whole image is decoded here (``load()``), so a
truncated or corrupt file fails here and not later in the preprocessing, and the returned image
holds no open file.

EXIF orientation is applied by default (``exif_transpose=True``): phone cameras store the sensor's
pixels and record the rotation in an EXIF tag, so without it a portrait photo reaches the captioner
lying on its side, which is not what a person sees and makes worse captions. ``exif_transpose=False``
keeps the stored pixels, reproducing pipelines that ignore the tag: open_clip's and transformers'
own transforms never apply it, and neither did the ClipCap training runs that computed their CLIP
embeddings with them. A malformed EXIF block is treated as having no orientation.

Decompression bombs: an image whose header declares more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels
is refused before its pixels are decoded. Pillow itself only warns between one and two times the
limit and raises above it; both are errors here. The limit is read, never changed: raise it in
your own code for images you trust (``PIL.Image.MAX_IMAGE_PIXELS = None`` turns the check off).

Torch-free: numpy, Pillow and the standard library only.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps

from clipcap.errors import ImageError

__all__ = ["ImageError", "ImageSource", "load_image"]

ImageSource = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes] | Image.Image | np.ndarray
"""What :func:`load_image` accepts."""

_ACCEPTED = (
    "a file path, bytes, a binary file object, a PIL image, or an H×W×3 (or H×W grayscale) uint8 numpy array"
)


def load_image(source: ImageSource, *, exif_transpose: bool = True) -> Image.Image:
    """Decode ``source`` into a PIL image, fully loaded and independent of any file or array.

    Args:
        source: one of

            - a path (``str`` or ``os.PathLike``) to an image file;
            - the encoded file in memory: ``bytes``, ``bytearray`` or ``memoryview``;
            - a binary file object (anything with ``.read()``), read from its current position
              to the end; it is not closed;
            - a ``PIL.Image.Image`` (loaded here if it was opened lazily; a copy is returned);
            - a numpy ``uint8`` array of shape H×W×3 (RGB), H×W×4 (RGBA), H×W or H×W×1 (grayscale).
        exif_transpose: rotate / flip the image as its EXIF orientation tag says (see the module
            docstring). Arrays have no EXIF and are returned as they are.

    Returns:
        The image in its own mode (not converted to RGB); the first frame of a multi-frame file.

    Raises:
        ImageError: the source is missing, a directory, empty, not an image, truncated or corrupt,
            over Pillow's decompression-bomb limit, an array of the wrong dtype or shape, or of an
            unsupported type.
    """
    if isinstance(source, Image.Image):
        image = _from_pil(source)
    elif isinstance(source, np.ndarray):
        return _from_array(source)
    elif isinstance(source, (str, os.PathLike)):
        image = _from_path(source)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = source.tobytes() if isinstance(source, memoryview) else bytes(source)
        name = f"<{type(source).__name__}, {len(data)} bytes>"
        if not data:
            raise ImageError(f"{name}: no data; pass the bytes of an encoded image file (JPEG, PNG, ...)")
        image = _decode(io.BytesIO(data), name)
    elif hasattr(source, "read"):
        image = _from_file_object(source)
    else:
        raise ImageError(f"cannot load an image from a {type(source).__name__}: pass {_ACCEPTED}")

    if exif_transpose:
        image = _apply_exif_orientation(image)
    return image


# --------------------------------------------------------------------------------------------------
# Sources


def _from_path(source: str | os.PathLike[str]) -> Image.Image:
    raw = os.fspath(source)
    if isinstance(raw, bytes):  # os.PathLike[bytes]
        raw = os.fsdecode(raw)
    if not raw:
        raise ImageError("'' is an empty path: pass the path of an image file")
    if raw.startswith(("http://", "https://")):
        raise ImageError(f"{raw}: URLs are not fetched; download the image and pass the file or its bytes")
    path = Path(raw).expanduser()
    try:
        if not path.exists():
            raise ImageError(f"{path}: no such file; check the path")
        if path.is_dir():
            raise ImageError(f"{path}: is a directory; pass the path of an image file inside it")
        # O_NONBLOCK: a FIFO (or one swapped in after a check) must not block the open; only a
        # regular file is read, so /dev/zero, pipes and sockets are refused by what they are.
        with open(path, "rb", opener=_nonblocking) as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise ImageError(f"{path}: not a regular file (a device, pipe or socket); pass an image file")
            if os.fstat(file.fileno()).st_size == 0:
                raise ImageError(f"{path}: the file is empty (0 bytes); it was not written completely")
            return _decode(file, str(path))
    except OSError as e:  # permission denied, a device, ...
        raise ImageError(f"{path}: cannot be read ({e.strerror or e})") from None


def _nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


def _from_file_object(source: IO[bytes]) -> Image.Image:
    name = _describe_file_object(source)
    try:
        data = source.read()
    except Exception as e:  # a closed file, a socket error, ...
        raise ImageError(f"{name}: cannot be read ({type(e).__name__}: {e})") from None
    if isinstance(data, str):
        raise ImageError(f"{name}: is open in text mode; open the image file with mode 'rb'")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageError(f"{name}: .read() returned a {type(data).__name__}, not bytes; pass {_ACCEPTED}")
    if not data:
        raise ImageError(
            f"{name}: no bytes to read (an empty file, or one already read to its end: seek(0) first)"
        )
    return _decode(io.BytesIO(bytes(data)), name)


def _from_array(array: np.ndarray) -> Image.Image:
    name = f"<numpy array, shape {array.shape}, {array.dtype}>"
    if array.dtype != np.uint8:
        hint = (
            " (for floats in [0, 1]: (a * 255).round().astype(np.uint8))"
            if np.issubdtype(array.dtype, np.floating)
            else ""
        )
        raise ImageError(f"{name}: needs dtype uint8 with values 0..255; convert it first{hint}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (3, 4):
        raise ImageError(f"{name}: looks channels-first; pass it as H×W×C, e.g. a.transpose(1, 2, 0)")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
        raise ImageError(f"{name}: needs shape H×W×3 (RGB), H×W×4 (RGBA) or H×W (grayscale)")
    if array.size == 0:
        raise ImageError(f"{name}: has no pixels")
    # uint8 H×W, H×W×3, H×W×4 -> L, RGB, RGBA. fromarray may share the array's memory: copy, so that
    # later writes to the array do not show in the image.
    return Image.fromarray(np.ascontiguousarray(array)).copy()


def _from_pil(source: Image.Image) -> Image.Image:
    try:
        source.load()  # a lazily opened image decodes now, so that truncation is caught here
        return source.copy()
    except Exception as e:
        raise ImageError(
            f"{_describe_pil(source)}: its pixels cannot be loaded ({type(e).__name__}: {e}); the file is "
            "truncated or corrupt, or was closed before the image was loaded: pass the path instead"
        ) from None


def _describe_file_object(source: object) -> str:
    file_name = getattr(source, "name", None)
    if isinstance(file_name, (str, bytes, os.PathLike)):
        return f"<file {os.fsdecode(file_name)!r}>"
    return f"<{type(source).__name__} file object>"


def _describe_pil(image: Image.Image) -> str:
    file_name = getattr(image, "filename", "")
    if file_name:
        return f"<PIL image from {os.fsdecode(file_name)!r}>"
    return f"<PIL image, mode {image.mode}, {image.width}×{image.height}>"


# --------------------------------------------------------------------------------------------------
# Decoding


def _decode(source: IO[bytes], name: str) -> Image.Image:
    """Open, check the size, decode every pixel, return a copy detached from the file."""
    try:
        with warnings.catch_warnings():
            # Pillow warns between 1x and 2x MAX_IMAGE_PIXELS; the explicit check below refuses those,
            # with a message that says what to do, so the warning would only repeat it.
            # (catch_warnings swaps a process-wide filter list; a concurrent thread's own
            # DecompressionBombWarning may be hidden for this moment, nothing worse.)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(source)
        with opened:
            _check_pixel_count(opened.width, opened.height, name)
            opened.load()  # decode now: a truncated or corrupt file fails here, inside this try
            return opened.copy()
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: {str(e).rstrip('.')}; {_RAISE_LIMIT_HINT}") from None
    except Image.UnidentifiedImageError:
        raise ImageError(
            f"{name}: not an image file Pillow can read (JPEG, PNG, GIF, WebP, BMP, TIFF, ...); "
            "convert it to JPEG or PNG"
        ) from None
    except Exception as e:  # OSError, SyntaxError, EOFError, ValueError, zlib.error ... from a decoder
        raise ImageError(
            f"{name}: cannot be decoded, the image data is truncated or corrupt ({type(e).__name__}: {e}); "
            "re-download or re-save the file"
        ) from None


_RAISE_LIMIT_HINT = (
    "if you trust this image, raise PIL.Image.MAX_IMAGE_PIXELS (None turns the check off) "
    "or downscale the image first"
)


def _check_pixel_count(width: int, height: int, name: str) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise ImageError(
            f"{name}: {width}×{height} = {width * height} pixels is over Pillow's decompression-bomb "
            f"limit of {int(limit)} pixels; {_RAISE_LIMIT_HINT}"
        )


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    try:
        transposed = ImageOps.exif_transpose(image)
    except Exception:
        # A malformed EXIF block: there is no orientation to trust; the pixels themselves are fine.
        return image
    return image if transposed is None else transposed
