"""The single-machine dataset job: results equal Captioner.caption's token for token, come back
in input order with bad images in their place, from a bounded window, and stop cleanly."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")  # the tiny bundle is exported from a PyTorch model

from clipcap.runtime import Captioner, ImageError
from clipcap.scale.dataset import DatasetResult, caption_dataset
from clipcap.scale.sources import Item
from PIL import Image

from clipcap.errors import OptionsError

# A stop set random tiny models hit now and then, so captions end at different lengths and rows
# are refilled mid-batch.
SOME_STOPS = tuple(range(3, 50257, 7))


@pytest.fixture(scope="module")
def captioner(tiny_bundle):
    return Captioner(tiny_bundle[0], threads=1)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """30 PNGs of different sizes, and a broken file."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(30):
        path = folder / f"{i:02}.png"
        Image.fromarray(rng.integers(0, 256, size=(20 + i, 48 - i, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return paths, str(folder / "broken.jpg")


def expected(captioner, paths, options, batch_size):
    return captioner.caption(paths, options, batch_size=batch_size, errors="return")


@pytest.mark.parametrize(
    "overrides",
    [
        dict(strategy="greedy", max_new_tokens=12, stop_token_ids=SOME_STOPS),
        dict(strategy="beam", beam_size=3, max_new_tokens=7, stop_token_ids=SOME_STOPS),
        dict(strategy="top_k", top_k=20, seed=5, max_new_tokens=10, stop_token_ids=SOME_STOPS),
    ],
    ids=["greedy", "beam", "top_k-seeded"],
)
def test_captions_equal_captioner_caption_token_for_token(captioner, photos, overrides):
    paths, broken = photos
    options = captioner.options(**overrides)
    batch = 6  # rows at once: five batches' worth of images, refilled as captions end
    # Sampling's generators follow the image's place in its chunk; a bad image before it in the
    # chunk would shift them in Captioner.caption, so the bad one goes last there.
    inputs = [*paths[:13], broken, *paths[13:]] if options.strategy != "top_k" else [*paths, broken]
    want = expected(captioner, inputs, options, batch)
    got = list(caption_dataset(captioner, inputs, options, max_batch_rows=batch, workers=2))
    assert [r.key for r in got] == inputs
    for result, reference in zip(got, want, strict=True):
        if isinstance(reference, ImageError):
            assert not result.ok and result.error == str(reference)
        else:
            # Tokens exactly; the score to float precision (the batch around a row changes the
            # order of its sums, not its tokens).
            got_caption = result.caption
            assert (got_caption.text, got_caption.tokens) == (reference.text, reference.tokens), result.key
            assert got_caption.score == pytest.approx(reference.score, rel=1e-5, abs=1e-5)
    lengths = {len(r.caption.tokens) for r in got if r.ok}
    assert len(lengths) > 1  # the stop set made captions of different lengths


def test_items_bring_bytes_errors_and_keys(captioner, photos):
    paths, _ = photos
    data = Path(paths[0]).read_bytes()
    items = [Item("shard.tar/0.png", source=data), Item("list.csv:3", error="list.csv:3: no 'path'")]
    first, second = caption_dataset(captioner, items, max_new_tokens=3)
    assert first.key == "shard.tar/0.png"
    assert first.caption.tokens == captioner.caption(paths[0], max_new_tokens=3).tokens
    assert second == DatasetResult("list.csv:3", error="list.csv:3: no 'path'")
    assert second.row() == {"input": "list.csv:3", "error": "list.csv:3: no 'path'"}
    assert set(first.row()) == {"input", "caption", "tokens", "score"}


def test_skip_leaves_out_done_keys(captioner, photos):
    paths, _ = photos
    got = [r.key for r in caption_dataset(captioner, paths[:6], skip=set(paths[1:6:2]), max_new_tokens=2)]
    assert got == [paths[0], paths[2], paths[4]]


def test_a_bounded_window_of_items_is_in_flight(captioner, photos):
    paths, _ = photos
    pulled = []

    def stream():
        for path in paths:
            pulled.append(path)
            yield path

    results = caption_dataset(captioner, stream(), max_new_tokens=2, max_batch_rows=2, window=5)
    next(results)
    assert len(pulled) <= 6  # the window, and the one item that waits for a free place
    rest = list(results)
    assert len(rest) == len(paths) - 1 and len(pulled) == len(paths)


def test_closing_early_stops_the_decode_loop_and_the_loaders(captioner, photos):
    paths, _ = photos
    before = {t.name for t in threading.enumerate()}
    results = caption_dataset(captioner, paths * 3, max_new_tokens=4)
    assert next(results).ok
    results.close()
    left = {t.name for t in threading.enumerate()} - before
    assert not {n for n in left if n.startswith(("clipcap-decode", "clipcap-load"))}, left


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(workers=0), "workers must be >= 1"),
        (dict(window=0), "window must be >= 1"),
        (dict(max_batch_rows=2, options=dict(strategy="beam", beam_size=3)), "must hold one image's 3 beams"),
    ],
)
def test_bad_settings_fail_before_any_work(captioner, kwargs, message):
    options = kwargs.pop("options", None)
    with pytest.raises(OptionsError, match=message):
        next(caption_dataset(captioner, ["never-read.jpg"], captioner.options(**(options or {})), **kwargs))
