"""clipcap.runtime.images.load_image: every source kind, every bad input, EXIF, decompression bombs."""

from __future__ import annotations

import io
import os
import re
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import clipcap.runtime.images as images_module
import numpy as np
import pytest
from clipcap.runtime.images import ImageError, load_image
from PIL import Image

from clipcap.errors import ClipCapError

REPO = Path(__file__).resolve().parents[1]
ORIENTATION = 0x0112  # the EXIF Orientation tag


@pytest.fixture
def pixels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)


@pytest.fixture
def png_path(tmp_path, pixels) -> Path:
    path = tmp_path / "image.png"
    Image.fromarray(pixels).save(path)
    return path


def encoded(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def noise(width: int, height: int, seed: int = 1) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


# --------------------------------------------------------------------------------------------------
# Every source kind


SOURCE_KINDS = {
    "str": lambda path: str(path),
    "pathlib": lambda path: path,
    "bytes": lambda path: path.read_bytes(),
    "bytearray": lambda path: bytearray(path.read_bytes()),
    "memoryview": lambda path: memoryview(path.read_bytes()),
    "file": lambda path: open(path, "rb"),  # noqa: SIM115 - the test closes it
    "BytesIO": lambda path: io.BytesIO(path.read_bytes()),
    "PIL, lazy": lambda path: Image.open(path),
    "PIL, loaded": lambda path: Image.open(path).convert("RGB"),
    "array": lambda path: np.asarray(Image.open(path)),
}


@pytest.mark.parametrize("kind", SOURCE_KINDS)
def test_every_source_kind_loads_the_same_pixels(kind, png_path, pixels):
    source = SOURCE_KINDS[kind](png_path)
    try:
        image = load_image(source)
    finally:
        if hasattr(source, "close"):
            source.close()
    assert image.mode == "RGB" and image.size == (32, 24)
    assert np.array_equal(np.asarray(image), pixels)
    # Decoded and detached: no open file behind it, pixels readable after the source is gone.
    assert getattr(image, "fp", None) is None
    assert image is not source


def test_the_loaded_image_holds_no_file_and_no_array_memory(png_path, pixels):
    image = load_image(png_path)
    os.remove(png_path)
    assert np.array_equal(np.asarray(image), pixels)
    array = pixels.copy()
    from_array = load_image(array)
    array[:] = 0
    assert np.array_equal(np.asarray(from_array), pixels)


def test_a_file_object_is_read_from_its_position_and_left_open(png_path, pixels):
    with open(png_path, "rb") as file:
        assert np.array_equal(np.asarray(load_image(file)), pixels)
        assert not file.closed
    prefixed = io.BytesIO(b"HEADER" + png_path.read_bytes())
    prefixed.seek(6)
    assert np.array_equal(np.asarray(load_image(prefixed)), pixels)


@pytest.mark.parametrize(
    "array, mode",
    [
        (np.zeros((5, 7), np.uint8), "L"),
        (np.zeros((5, 7, 1), np.uint8), "L"),
        (np.zeros((5, 7, 3), np.uint8), "RGB"),
        (np.zeros((5, 7, 4), np.uint8), "RGBA"),
        (np.zeros((7, 5, 3), np.uint8).transpose(1, 0, 2), "RGB"),  # not C-contiguous
    ],
)
def test_arrays_of_every_accepted_shape(array, mode):
    image = load_image(array)
    assert image.mode == mode and image.size == (7, 5)


def test_files_keep_their_own_mode(tmp_path):
    # Conversion to RGB belongs to the preprocessing, which must see the original mode.
    for mode in ("L", "P", "RGBA", "I;16"):
        path = tmp_path / f"{mode.replace(';', '')}.png"
        Image.new(mode, (4, 3)).save(path)
        assert load_image(path).mode == mode


# --------------------------------------------------------------------------------------------------
# Bad inputs: one clear ImageError each, naming the input


def truncated(data: bytes) -> bytes:
    return data[: len(data) * 6 // 10]


BAD_FILES = {
    "missing": (None, "no such file"),
    "directory": (None, "is a directory"),
    "empty.jpg": (b"", "empty (0 bytes)"),
    "notes.txt": (b"a shopping list, not a photo\n" * 20, "not an image"),
    "truncated.jpg": (lambda: truncated(encoded(noise(64, 64), "JPEG", quality=95)), "truncated or corrupt"),
    "truncated.png": (lambda: truncated(encoded(noise(64, 64), "PNG")), "truncated or corrupt"),
    "corrupt.png": (lambda: encoded(noise(64, 64), "PNG")[:60] + bytes(2000), "truncated or corrupt"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_files_raise_image_error_naming_the_file(name, tmp_path):
    content, problem = BAD_FILES[name]
    if name == "missing":
        path = tmp_path / "no-such-photo.jpg"
    elif name == "directory":
        path = tmp_path / "photos"
        path.mkdir()
    else:
        path = tmp_path / name
        path.write_bytes(content() if callable(content) else content)
    with pytest.raises(ImageError) as caught:
        load_image(path)
    message = str(caught.value)
    assert str(path) in message and problem in message
    # Pillow's own exception is not chained on: the message already says what it said.
    error = caught.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


BAD_SOURCES = {
    "empty bytes": (lambda: b"", "<bytes, 0 bytes>"),
    "text bytes": (lambda: b"hello world", "<bytes, 11 bytes>: not an image"),
    "truncated JPEG bytes": (
        lambda: truncated(encoded(noise(64, 64), "JPEG")),
        "truncated or corrupt",
    ),
    "empty BytesIO": (lambda: io.BytesIO(), "<BytesIO file object>: no bytes"),
    "exhausted BytesIO": (lambda: _exhausted(), "seek(0)"),
    "text-mode file": (lambda: io.StringIO("not bytes"), "text mode"),
    "float array": (lambda: np.zeros((4, 4, 3), np.float32), "float32>: needs dtype uint8"),
    "channels-first array": (lambda: np.zeros((3, 8, 8), np.uint8), "channels-first"),
    "two-channel array": (lambda: np.zeros((8, 8, 2), np.uint8), "needs shape"),
    "4-d array": (lambda: np.zeros((1, 8, 8, 3), np.uint8), "needs shape"),
    "empty array": (lambda: np.zeros((0, 8, 3), np.uint8), "no pixels"),
    "integer": (lambda: 42, "from a int"),
    "None": (lambda: None, "from a NoneType"),
    "list": (lambda: [1, 2, 3], "from a list"),
    "empty path": (lambda: "", "empty path"),
    "URL": (lambda: "https://example.com/cat.jpg", "URLs are not fetched"),
}


def _exhausted() -> io.BytesIO:
    stream = io.BytesIO(encoded(noise(8, 8), "PNG"))
    stream.read()
    return stream


@pytest.mark.parametrize("name", BAD_SOURCES)
def test_bad_sources_raise_image_error_naming_the_input(name):
    make, expected = BAD_SOURCES[name]
    with pytest.raises(ImageError) as caught:
        load_image(make())
    assert expected in str(caught.value)
    assert isinstance(caught.value, ClipCapError) and isinstance(caught.value, ValueError)


def test_a_pil_image_whose_file_was_closed_unloaded_is_an_image_error(png_path):
    with Image.open(png_path) as lazy:
        pass
    with pytest.raises(ImageError, match="closed before the image was loaded"):
        load_image(lazy)
    truncated_file = io.BytesIO(truncated(encoded(noise(64, 64), "PNG")))
    with pytest.raises(ImageError, match="cannot be loaded"):
        load_image(Image.open(truncated_file))


def test_an_unreadable_path_is_an_image_error(monkeypatch, png_path):
    def permission_denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    # (chmod 0 would not do: the tests may run as root, who reads anything)
    monkeypatch.setattr(images_module, "open", permission_denied, raising=False)
    with pytest.raises(ImageError, match=re.escape(f"{png_path}: cannot be read (Permission denied)")):
        load_image(png_path)


# --------------------------------------------------------------------------------------------------
# Decompression bombs


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height (8-bit RGB) and whose data is one empty IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def test_a_header_declaring_a_huge_image_is_refused_before_decoding():
    limit = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError, match="MAX_IMAGE_PIXELS") as caught:
        load_image(png_header_only(100_000, 100_000))
    assert "<bytes," in str(caught.value)
    assert limit == Image.MAX_IMAGE_PIXELS  # read, never changed


@pytest.mark.parametrize("width, height", [(12, 10), (20, 20)])  # 1.2x (Pillow warns), 4x (Pillow raises)
def test_images_over_the_limit_are_errors_not_warnings(monkeypatch, width, height):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    data = encoded(noise(width, height), "PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not show either
        with pytest.raises(ImageError, match=f"{width}×{height} = {width * height} pixels|exceeds limit"):
            load_image(data)
    assert Image.MAX_IMAGE_PIXELS == 100


def test_the_limit_can_be_switched_off(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert load_image(encoded(noise(20, 20), "PNG")).size == (20, 20)


# --------------------------------------------------------------------------------------------------
# EXIF orientation


def with_orientation(image: Image.Image, image_format: str, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return encoded(image, image_format, exif=exif)


def test_exif_orientation_is_applied_by_default_and_can_be_kept():
    # Orientation 6: the stored pixels are shown rotated 90 degrees clockwise (a portrait phone photo).
    stored = noise(40, 20)
    data = with_orientation(stored, "JPEG", 6)
    assert load_image(data).size == (20, 40)
    assert load_image(data, exif_transpose=False).size == (40, 20)

    lossless = with_orientation(stored, "PNG", 6)
    shown = load_image(lossless)
    assert np.array_equal(np.asarray(shown), np.rot90(np.asarray(stored), k=-1))
    assert ORIENTATION not in shown.getexif()  # applied once, not again downstream
    assert np.array_equal(np.asarray(load_image(lossless, exif_transpose=False)), np.asarray(stored))


@pytest.mark.parametrize("source_kind", ["path", "PIL"])
def test_exif_orientation_applies_to_every_encoded_source(tmp_path, source_kind):
    path = tmp_path / "portrait.jpg"
    path.write_bytes(with_orientation(noise(40, 20), "JPEG", 6))
    source = path if source_kind == "path" else Image.open(path)
    assert load_image(source).size == (20, 40)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow says so; the image still loads
def test_a_malformed_exif_block_is_ignored():
    data = encoded(noise(16, 8), "JPEG", exif=b"Exif\x00\x00II*\x00\xff\xff\xff\x7f garbage")
    assert load_image(data).size == (16, 8)


# --------------------------------------------------------------------------------------------------
# The runtime stays torch-free


def test_images_and_preprocess_import_without_torch():
    code = (
        "import sys, clipcap.runtime.images, clipcap.runtime.preprocess; "
        "print(sorted({'torch', 'torchvision', 'transformers', 'open_clip'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
