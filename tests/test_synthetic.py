"""The demo's synthetic captioned image set: right captions, countable shapes, deterministic files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clipcap.demo.synthetic import COLOURS, IMAGE_SIZE, Scene, all_scenes, render, write_dataset


def test_every_combination_once():
    scenes = all_scenes()
    assert len(scenes) == len(set(scenes)) == 3 * 2 * 6 * 3 * 4


@pytest.mark.parametrize(
    ("scene", "canonical"),
    [
        (Scene(1, "small", "red", "circle", "left"), "a small red circle on the left"),
        (Scene(2, "large", "blue", "square", "top"), "two large blue squares on the top"),
        (Scene(3, "small", "green", "triangle", "bottom"), "three small green triangles on the bottom"),
    ],
)
def test_captions(scene, canonical):
    captions = scene.captions()
    assert captions[0] == canonical
    assert len(set(captions)) == 3
    assert captions[1].startswith("there is " if scene.count == 1 else "there are ")
    assert all(scene.colour in c and scene.position in c for c in captions)


def _mask(image, colour_name):
    """Pixels close to the scene's colour (its jitter is at most 20 per channel)."""
    pixels = np.asarray(image).astype(int)
    return (np.abs(pixels - np.array(COLOURS[colour_name])) <= 24).all(-1)


def _components(mask: np.ndarray) -> int:
    """Connected regions (8-neighbour flood fill: a small triangle's tip may touch only diagonally)."""
    seen = np.zeros_like(mask)
    count = 0
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        count += 1
        stack = [start]
        seen[start] = True
        while stack:
            y, x = stack.pop()
            for n in ((y + dy, x + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)):
                if 0 <= n[0] < mask.shape[0] and 0 <= n[1] < mask.shape[1] and mask[n] and not seen[n]:
                    seen[n] = True
                    stack.append(n)
    return count


@pytest.mark.parametrize("scene", all_scenes()[::37])
def test_render_draws_the_scene(scene):
    image = render(scene, np.random.default_rng(1))
    assert image.size == (IMAGE_SIZE, IMAGE_SIZE)
    mask = _mask(image, scene.colour)
    count = _components(mask)
    assert count == scene.count  # shapes never touch, so each one is countable
    ys, xs = np.nonzero(mask)
    half = IMAGE_SIZE / 2
    inside = {"left": xs < half, "right": xs >= half, "top": ys < half, "bottom": ys >= half}[scene.position]
    assert inside.all()


def test_write_dataset_is_deterministic(tmp_path):
    a = write_dataset(tmp_path / "a", 6, 2, 3, seed=5)
    b = write_dataset(tmp_path / "b", 6, 2, 3, seed=5)
    rows = [json.loads(line) for line in a.read_text().splitlines()]
    assert [r["split"] for r in rows] == ["train"] * 6 + ["val"] * 2 + ["test"] * 3
    assert a.read_text() == b.read_text()
    for r in rows:
        assert (a.parent / r["image"]).read_bytes() == (b.parent / r["image"]).read_bytes()
        assert len(r["captions"]) == 3
