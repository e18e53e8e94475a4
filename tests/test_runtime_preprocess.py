"""clipcap.runtime.preprocess gives the pixels of open_clip's and transformers' own transforms.

References: open_clip's ``image_transform(S, is_train=False, ...)`` for the "torchvision" convention;
transformers' PIL-backend CLIPImageProcessor for "hf" (``CLIPImageProcessorPil`` in 5.x, the slow
``CLIPImageProcessor`` in 4.x, where transparency is dropped rather than composited onto white).
Random-noise images are the hardest case: bicubic overshoot clips at 0 and 255 everywhere.
"""

from __future__ import annotations

import clipcap.runtime.preprocess as preprocess_module
import numpy as np
import pytest
from clipcap.runtime.images import ImageError
from clipcap.runtime.preprocess import preprocess
from PIL import Image, ImageFilter

from clipcap.config import Preprocessing
from clipcap.errors import ConfigError

TOLERANCE = 1e-5
IMAGE_SIZES = (224, 32)
OTHER_MEAN, OTHER_STD = (0.5, 0.4, 0.3), (0.2, 0.3, 0.4)
MODES = ("RGB", "L", "RGBA", "LA", "P", "P+transparency", "CMYK", "I;16", "I", "F", "1")


def source_sizes(size: int) -> list[tuple[int, int]]:
    """(width, height) pairs: tiny, exactly S, wide, tall, odd, smaller and larger than S.

    S+3 and S+7 make crop offsets of 1.5 and 3.5, where torchvision (round half to even) and
    transformers (floor) disagree.
    """
    return [
        (7, 5),
        (size, size),
        (640, 100),
        (100, 640),
        (size + 3, size),
        (size, size + 7),
        (333, 517),
        (size // 2 + 1, size // 2 + 3),
        (1000, 800),
    ]


def make_image(mode: str, width: int, height: int, seed: int = 0) -> Image.Image:
    """A random-noise image in the given mode (deterministic)."""
    rng = np.random.default_rng(seed)

    def raw(kind: str, channels: int, dtype: str = "u1", low: int = 0, high: int = 256) -> Image.Image:
        values = rng.integers(low, high, (height, width, channels)).astype(dtype)
        return Image.frombytes(kind, (width, height), values.tobytes())

    if mode in ("RGB", "RGBA", "CMYK"):
        return raw(mode, len(mode))
    if mode in ("L", "LA"):
        return raw(mode, len(mode))
    if mode in ("P", "P+transparency"):
        image = raw("P", 1, "u1", 0, 64)
        image.putpalette(rng.integers(0, 256, 64 * 3).astype("u1").tobytes())
        if mode == "P+transparency":
            image.info["transparency"] = 3
        return image
    if mode == "I;16":
        return raw("I;16", 1, "<u2", 0, 65536)
    if mode == "I":
        return raw("I", 1, "<i4", -300, 600)
    if mode == "F":
        values = rng.normal(128, 100, (height, width)).astype("<f4")
        return Image.frombytes("F", (width, height), values.tobytes())
    if mode == "1":
        return raw("L", 1).point(lambda v: 255 if v > 127 else 0).convert("1")
    raise AssertionError(mode)


def open_clip_reference(images, spec: Preprocessing) -> np.ndarray:
    open_clip = pytest.importorskip("open_clip")
    transform = open_clip.image_transform(
        spec.image_size,
        is_train=False,
        mean=spec.mean,
        std=spec.std,
        resize_mode=spec.resize,
        interpolation=spec.interpolation,
    )
    return np.stack([transform(image).numpy() for image in images])


def hf_reference(images, spec: Preprocessing) -> tuple[np.ndarray, str]:
    """(pixels of transformers' PIL CLIPImageProcessor, the transparency it uses)."""
    transformers = pytest.importorskip("transformers")
    if hasattr(transformers, "CLIPImageProcessorPil"):  # 5.x: the slow processor's new name
        processor_class, transparency = transformers.CLIPImageProcessorPil, "white"
    else:  # 4.x: CLIPImageProcessor is the slow, PIL one; it converts with convert("RGB")
        processor_class, transparency = transformers.CLIPImageProcessor, "drop"
    size = spec.image_size
    resample = {"bicubic": 3, "bilinear": 2}[spec.interpolation]
    target = {"shortest_edge": size} if spec.resize == "shortest" else {"height": size, "width": size}
    processor = processor_class(
        size=target,
        crop_size={"height": size, "width": size},
        resample=resample,
        image_mean=list(spec.mean),
        image_std=list(spec.std),
    )
    return processor(list(images), return_tensors="np")["pixel_values"], transparency


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


# --------------------------------------------------------------------------------------------------
# Against the references


@pytest.mark.parametrize("size", IMAGE_SIZES)
@pytest.mark.parametrize("mode", MODES)
def test_torchvision_convention_matches_open_clip(size, mode):
    spec = Preprocessing(size)
    images = [make_image(mode, w, h, seed) for seed, (w, h) in enumerate(source_sizes(size))]
    ours = preprocess(images, spec)
    assert ours.shape == (len(images), 3, size, size) and ours.dtype == np.float32
    assert ours.flags.c_contiguous
    assert max_diff(ours, open_clip_reference(images, spec)) <= TOLERANCE


@pytest.mark.parametrize("size", IMAGE_SIZES)
@pytest.mark.parametrize("mode", MODES)
def test_hf_convention_matches_clip_image_processor(size, mode):
    spec = Preprocessing(size, convention="hf")
    images = [make_image(mode, w, h, seed) for seed, (w, h) in enumerate(source_sizes(size))]
    reference, transparency = hf_reference(images, spec)
    ours = preprocess(images, spec, transparency=transparency)
    assert ours.shape == (len(images), 3, size, size) and ours.dtype == np.float32
    assert max_diff(ours, reference) <= TOLERANCE


@pytest.mark.parametrize("resize", ["squash", "longest"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "CMYK", "I;16"])
def test_torchvision_squash_and_longest_match_open_clip(resize, interpolation, mode):
    spec = Preprocessing(
        40, resize=resize, interpolation=interpolation, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4)
    )
    # (1, 50) and (50, 1): the short side rounds to 1 px and is padded to 40.
    sizes = [(7, 5), (40, 40), (300, 47), (47, 300), (41, 39), (1, 50), (50, 1), (123, 321)]
    images = [make_image(mode, w, h, seed) for seed, (w, h) in enumerate(sizes)]
    assert max_diff(preprocess(images, spec), open_clip_reference(images, spec)) <= TOLERANCE


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("resize", ["shortest", "squash"])
def test_hf_options_match_clip_image_processor(interpolation, resize):
    spec = Preprocessing(
        48,
        resize=resize,
        interpolation=interpolation,
        mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.3, 0.4),
        convention="hf",
    )
    sizes = [(7, 5), (48, 48), (300, 47), (47, 300), (51, 48), (48, 55), (123, 321)]
    images = [make_image(mode, w, h, i) for i, (w, h) in enumerate(sizes) for mode in ("RGB", "RGBA", "I;16")]
    reference, transparency = hf_reference(images, spec)
    assert max_diff(preprocess(images, spec, transparency=transparency), reference) <= TOLERANCE


def test_default_clip_image_processor_of_transformers_5_is_close_but_not_pillow():
    """transformers 5's default CLIPImageProcessor resizes uint8 tensors with torchvision, whose
    fixed-point bicubic rounds differently from Pillow: a level or two off on a few pixels."""
    transformers = pytest.importorskip("transformers")
    processor_class = transformers.CLIPImageProcessor
    if getattr(processor_class, "backend", None) is None or "Pil" in processor_class.__name__:
        pytest.skip("this transformers' CLIPImageProcessor is the PIL one, compared above")
    spec = Preprocessing(224, convention="hf")
    images = [make_image("RGB", w, h, seed) for seed, (w, h) in enumerate(source_sizes(224))]
    reference = processor_class(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})(
        images, return_tensors="np"
    )["pixel_values"]
    ours = preprocess(images, spec)
    two_levels = 2.5 / 255 / min(spec.std)
    assert max_diff(ours, reference) <= two_levels
    assert (np.abs(ours - reference) > TOLERANCE).mean() < 0.02


# --------------------------------------------------------------------------------------------------
# Behaviour


def test_conventions_differ_only_in_their_rounding():
    # S+3: the crop offset is 1.5, which torchvision rounds to 2 and transformers floors to 1.
    image = make_image("RGB", 35, 32)
    torchvision = preprocess([image], Preprocessing(32))
    hf = preprocess([image], Preprocessing(32, convention="hf"))
    assert max_diff(torchvision[..., :, :-1], hf[..., :, 1:]) <= TOLERANCE
    assert max_diff(torchvision, hf) > 0.1


def test_transparency_drop_keeps_the_hidden_colour_and_white_composites():
    hidden_red = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    spec = Preprocessing(16, mean=(0, 0, 0), std=(1, 1, 1))
    assert np.allclose(preprocess(hidden_red, spec)[0, :, 0, 0], [1, 0, 0])
    assert np.allclose(preprocess(hidden_red, spec, transparency="white")[0, :, 0, 0], [1, 1, 1])
    hf = Preprocessing(16, mean=(0, 0, 0), std=(1, 1, 1), convention="hf")
    assert np.allclose(preprocess(hidden_red, hf)[0, :, 0, 0], [1, 1, 1])  # transformers 5's default
    assert np.allclose(preprocess(hidden_red, hf, transparency="drop")[0, :, 0, 0], [1, 0, 0])
    opaque = make_image("RGB", 20, 30)
    for convention_spec in (spec, hf):
        assert np.array_equal(
            preprocess(opaque, convention_spec, transparency="drop"),
            preprocess(opaque, convention_spec, transparency="white"),
        )


def test_a_batch_is_its_images_stacked():
    spec = Preprocessing(32)
    images = [
        make_image(mode, w, h, i)
        for i, (mode, (w, h)) in enumerate(zip(MODES, source_sizes(32), strict=False))
    ]
    batch = preprocess(images, spec)
    for i, image in enumerate(images):
        assert np.array_equal(batch[i], preprocess(image, spec)[0])
    assert preprocess([], spec).shape == (0, 3, 32, 32)


def test_very_elongated_images_resize_only_the_crop_window(monkeypatch):
    # A blurred (photograph-like) image; noise would exaggerate the uint8 rounding of the two passes.
    image = make_image("RGB", 1200, 23).filter(ImageFilter.GaussianBlur(2))
    for convention in ("torchvision", "hf"):
        spec = Preprocessing(32, convention=convention)
        full = preprocess(image, spec)
        monkeypatch.setattr(preprocess_module, "FULL_RESIZE_LIMIT", 0)
        windowed = preprocess(image, spec)
        monkeypatch.undo()
        assert windowed.shape == full.shape
        assert max_diff(windowed, full) <= 3 / 255 / min(spec.std)


@pytest.mark.parametrize(
    "spec, options, named",
    [
        (Preprocessing(32, resize="longest", convention="hf"), {}, "longest"),
        (Preprocessing(32, interpolation="cubic"), {}, "interpolation"),
        (Preprocessing(32), {"transparency": "black"}, "transparency"),
    ],
)
def test_settings_that_cannot_be_reproduced_raise_config_error(spec, options, named):
    with pytest.raises(ConfigError, match=named):
        preprocess([make_image("RGB", 8, 8)], spec, **options)


def test_non_images_and_unconvertible_modes_raise_image_error():
    with pytest.raises(ImageError, match=r"images\[1\].*ndarray.*load_image"):
        preprocess([make_image("RGB", 8, 8), np.zeros((8, 8, 3), np.uint8)], Preprocessing(8))
    with pytest.raises(ImageError, match="without pixels"):
        preprocess([Image.new("RGB", (0, 5))], Preprocessing(8))
    with pytest.raises(ImageError, match="mode La"):
        preprocess([Image.new("La", (8, 8))], Preprocessing(8, convention="hf"))
