"""A synthetic captioned image set for the offline demo: coloured shapes, counted and placed.

Each picture holds one, two or three shapes of one kind, colour and size, all in one half of the
picture; its caption says exactly that ("two small red circles on the left"), so a caption is
right or wrong, and the demo can report exact-match accuracy next to BLEU and CIDEr. Three
phrasings per picture play the part of COCO's five human captions: any of them is a right answer.

Torch-free (numpy + Pillow); deterministic given the seed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 4.0, "large": 7.0}  # radius in pixels at IMAGE_SIZE
POSITIONS = ("left", "right", "top", "bottom")
COUNTS = {1: "a", 2: "two", 3: "three"}
IMAGE_SIZE = 64


@dataclass(frozen=True)
class Scene:
    count: int
    size: str
    colour: str
    shape: str
    position: str

    def captions(self) -> tuple[str, ...]:
        """The three right answers, canonical first."""
        noun = self.shape + ("s" if self.count > 1 else "")
        things = f"{COUNTS[self.count]} {self.size} {self.colour} {noun}"
        verb = "is" if self.count == 1 else "are"
        return (
            f"{things} on the {self.position}",
            f"there {verb} {things} on the {self.position}",
            f"{things} in the {self.position} half of the picture",
        )


def all_scenes() -> list[Scene]:
    return [
        Scene(n, s, c, k, p)
        for n in COUNTS
        for s in SIZES
        for c in COLOURS
        for k in SHAPES
        for p in POSITIONS
    ]


def random_scenes(n: int, rng: np.random.Generator) -> list[Scene]:
    """n scenes drawn uniformly over every combination (432 of them)."""
    scenes = all_scenes()
    return [scenes[i] for i in rng.integers(0, len(scenes), size=n)]


def render(scene: Scene, rng: np.random.Generator, size: int = IMAGE_SIZE) -> Image.Image:
    """Draw ``scene``: a noisy dark background, shapes of jittered colour placed without overlap."""
    background = rng.integers(10, 60, size=3)
    pixels = np.clip(background + rng.normal(0, 6, size=(size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    radius = SIZES[scene.size] * size / IMAGE_SIZE
    colour = tuple(int(np.clip(v + rng.integers(-20, 21), 0, 255)) for v in COLOURS[scene.colour])
    for x, y in _places(scene, radius, size, rng):
        r = radius * rng.uniform(0.9, 1.1)
        if scene.shape == "circle":
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
        elif scene.shape == "square":
            s = r * 0.9  # a square of the same area as the circle looks the same size
            draw.rectangle((x - s, y - s, x + s, y + s), fill=colour)
        else:
            angle = rng.uniform(-0.3, 0.3)
            points = [
                (x + 1.2 * r * math.sin(angle + a), y - 1.2 * r * math.cos(angle + a))
                for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)
            ]
            draw.polygon(points, fill=colour)
    return image


def _places(scene: Scene, radius: float, size: int, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Centres such that whole shapes lie inside the scene's half and never touch.

    A triangle reaches 1.2 radii from its centre, times the 1.1 size jitter. The shapes are spread
    along the half's long side, at least `gap` apart, so each one is countable. "On the left"
    must not also be "on the top": a left or right group is centred on the horizontal midline (a
    top or bottom group on the vertical one), so every picture has exactly one right position.
    """
    extent = radius * 1.35
    gap = 2.5 * radius  # between centres along the long side; > the width of any two shapes
    half = size / 2
    lo, hi = extent, size - extent  # the long side's range (the whole picture)
    short = {"left": (extent, half - extent), "right": (half + extent, size - extent)}.get(
        scene.position
    ) or {"top": (extent, half - extent), "bottom": (half + extent, size - extent)}[scene.position]
    slack = (hi - lo) - (scene.count - 1) * gap
    if slack < 0 or short[0] > short[1]:
        raise RuntimeError(f"cannot place {scene} in {size} pixels")  # never with the sizes above
    along = np.sort(rng.uniform(0, slack, size=scene.count)) + gap * np.arange(scene.count)
    # Centre the group on the midline (within 5% of the picture), staying inside the picture.
    shift = half + rng.uniform(-0.05, 0.05) * size - (lo + along.mean())
    along = lo + along + np.clip(shift, -along[0], (hi - lo) - along[-1])
    across = rng.uniform(*short, size=scene.count)
    if scene.position in ("left", "right"):
        return [(float(x), float(y)) for x, y in zip(across, along, strict=True)]
    return [(float(x), float(y)) for x, y in zip(along, across, strict=True)]


@dataclass(frozen=True)
class Sample:
    file: str
    scene: Scene
    split: str


def write_dataset(out: str | Path, n_train: int, n_val: int, n_test: int, *, seed: int = 0) -> Path:
    """Render a captioned image set into ``out/images/`` with ``out/captions.jsonl`` (the folder
    format `clipcap embed` reads: one line per image, its three captions and its split)."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for sample, image in _samples(n_train, n_val, n_test, rng):
        image.save(out / sample.file)
        lines.append({"image": sample.file, "captions": list(sample.scene.captions()), "split": sample.split})
    (out / "captions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return out / "captions.jsonl"


def _samples(
    n_train: int, n_val: int, n_test: int, rng: np.random.Generator
) -> Iterator[tuple[Sample, Image.Image]]:
    i = 0
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        for scene in random_scenes(n, rng):
            yield Sample(f"images/{i:05d}.png", scene, split), render(scene, rng)
            i += 1
