"""Issue 11's findings, each as it was reported: a bundle reads only its own listed and hashed
files, every size is bounded before use, malformed input gives one ClipCapError, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import signal

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from clipcap.runtime import Captioner
from clipcap.runtime.arrays import read_embeddings
from clipcap.runtime.bundle import open_bundle
from PIL import Image

from clipcap.errors import BundleError, DataError, ImageError, OptionsError
from clipcap.manifest import MANIFEST_NAME, sha256_file


def _copy(bundle, dst):
    """A private copy: graphs hard-linked (fast), the manifest copied, so edits stay here."""
    shutil.copytree(bundle, dst, copy_function=os.link)
    os.unlink(dst / MANIFEST_NAME)
    shutil.copy(bundle / MANIFEST_NAME, dst / MANIFEST_NAME)
    return dst


def _edit(path, change):
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    change(manifest)
    (path / MANIFEST_NAME).write_text(json.dumps(manifest))


def _rehash(path, name):
    _edit(
        path,
        lambda m: m["files"].__setitem__(
            name, {"sha256": sha256_file(path / name), "bytes": (path / name).stat().st_size}
        ),
    )


@pytest.fixture
def bundle(tiny_bundle, tmp_path):
    return _copy(tiny_bundle[0], tmp_path / "b")


@pytest.fixture(scope="module")
def captioner(tiny_bundle):
    return Captioner(tiny_bundle[0])


# --- finding 1: confinement --------------------------------------------------------------------


def _outside(tmp_path):
    secret = tmp_path / "outside" / "decoder.onnx"
    secret.parent.mkdir()
    secret.write_bytes(b"not yours")
    return secret


def test_files_entries_outside_the_bundle_are_refused(bundle, tmp_path):
    entry = {"sha256": "0" * 64, "bytes": 9}
    for name in ("../../../../etc/hosts", "/etc/hosts", "sub/../../x"):
        _edit(bundle, lambda m, name=name: m["files"].__setitem__(name, entry))
        with pytest.raises(BundleError, match="relative name inside the bundle"):
            open_bundle(bundle)
        _edit(bundle, lambda m, name=name: m["files"].pop(name))


@pytest.mark.parametrize("where", ["absolute", "dotdot"])
def test_graph_files_outside_the_bundle_are_refused(bundle, tmp_path, where):
    secret = shutil.copy(bundle / "decoder.onnx", _outside(tmp_path))
    name = str(secret) if where == "absolute" else "../outside/decoder.onnx"
    _edit(bundle, lambda m: m["graphs"]["decoder"].__setitem__("file", name))
    with pytest.raises(BundleError, match="files"):
        Captioner(bundle)


def test_a_symlink_out_of_the_bundle_is_refused(bundle, tmp_path):
    secret = shutil.copy(bundle / "decoder.onnx", _outside(tmp_path))
    os.unlink(bundle / "decoder.onnx")
    os.symlink(secret, bundle / "decoder.onnx")
    with pytest.raises(BundleError, match="outside the bundle"):
        open_bundle(bundle, check_files=False)


def test_a_manifest_without_files_or_with_a_graph_left_out_is_refused(bundle):
    _edit(bundle, lambda m: m["files"].pop("decoder.onnx"))
    with pytest.raises(BundleError, match=r"decoder\.onnx is read by the runtime but not listed"):
        open_bundle(bundle)
    _edit(bundle, lambda m: m.pop("files"))
    with pytest.raises(BundleError, match="files: missing"):
        open_bundle(bundle)


def test_an_unlisted_file_in_the_bundle_is_refused(bundle):
    (bundle / "weights.data").write_bytes(b"\0" * 8)  # what a graph could read as external data
    with pytest.raises(BundleError, match=r"weights\.data: not listed"):
        open_bundle(bundle)
    os.unlink(bundle / "weights.data")
    (bundle / "README.md").write_text("a model card")  # what a Hub repository adds: fine
    open_bundle(bundle)


def test_a_bundle_in_the_hugging_face_cache_opens(tiny_bundle, tmp_path):
    """huggingface_hub's layout: snapshot files are relative links into the repository's blobs/."""
    repo = tmp_path / "hub" / "models--someone--tiny-bundle"
    snapshot = repo / "snapshots" / ("a" * 40)
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in sorted(tiny_bundle[0].iterdir()):
        blob = repo / "blobs" / sha256_file(file)
        shutil.copy(file, blob)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / file.name)
    captioner = Captioner(snapshot)
    assert captioner.caption(np.full((40, 40, 3), 128, np.uint8), max_new_tokens=3).tokens
    # ... but a link from the snapshot to another repository's blob is still outside.
    other = tmp_path / "hub" / "models--else--x" / "blobs"
    other.mkdir(parents=True)
    moved = shutil.copy(repo / "blobs" / sha256_file(snapshot / "mapper.onnx"), other / "m")
    os.unlink(snapshot / "mapper.onnx")
    os.symlink(moved, snapshot / "mapper.onnx")
    with pytest.raises(BundleError, match="outside the bundle"):
        open_bundle(snapshot)


# --- finding 5: the manifest's schema ------------------------------------------------------------


def _set(section, key, value):
    return lambda m: m[section].__setitem__(key, value)


MALFORMED = {
    "files entry a string": (_set("files", "decoder.onnx", "abc"), "files.decoder.onnx"),
    "files entry without bytes": (
        lambda m: m["files"]["decoder.onnx"].pop("bytes"),
        "files.decoder.onnx: needs bytes",
    ),
    "files a list": (lambda m: m.__setitem__("files", list(m["files"])), "files"),
    "graph file missing": (lambda m: m["graphs"]["decoder"].pop("file"), "graphs.decoder.file"),
    "graph file an int": (lambda m: m["graphs"]["decoder"].__setitem__("file", 3), "graphs.decoder.file"),
    "model missing": (lambda m: m.pop("model"), "model: missing"),
    "preprocessing missing": (lambda m: m.pop("preprocessing"), "preprocessing: missing"),
    "generation missing": (lambda m: m.pop("generation"), "generation: missing"),
    "extra preprocessing key": (_set("preprocessing", "gamma", 2.2), "preprocessing.*gamma"),
    "n_layer a string": (_set("model", "n_layer", "4"), "model.n_layer: must be an integer"),
    "max_new_tokens a string": (_set("generation", "max_new_tokens", "40"), "generation.*max_new_tokens"),
    "image_size huge": (_set("preprocessing", "image_size", 10**9), "preprocessing.*image_size"),
    "stop id huge": (_set("generation", "stop_token_ids", [10**30]), "stop_token_ids"),
    "n_layer huge": (_set("model", "n_layer", 10**6), "model.n_layer: must be between"),
    "n_positions huge": (_set("model", "n_positions", 10**6), "model.n_positions"),
    "heads inconsistent": (_set("model", "head_dim", 15), "n_head x head_dim"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_manifest_is_one_bundle_error(bundle, case):
    change, named = MALFORMED[case]
    _edit(bundle, change)
    with pytest.raises(BundleError, match=named):
        open_bundle(bundle)


def test_sizes_are_checked_against_the_graphs_shapes(bundle):
    _edit(bundle, _set("model", "vocab_size", 50000))  # the graph's logits are 50257 wide
    with pytest.raises(BundleError, match="logits has shape"):
        Captioner(bundle)


def test_a_context_larger_than_the_graphs_is_one_bundle_error(bundle):
    _edit(bundle, _set("model", "n_positions", 4096))  # the decoder's position table has 128
    captioner = Captioner(bundle)
    with pytest.raises(BundleError, match="does not match its graphs"):
        captioner.caption_embeddings(np.zeros((1, 32), np.float32), max_new_tokens=200)


def test_a_decoder_swapped_for_the_mapper_is_refused(bundle):
    os.unlink(bundle / "decoder.onnx")
    shutil.copy(bundle / "mapper.onnx", bundle / "decoder.onnx")
    _rehash(bundle, "decoder.onnx")
    with pytest.raises(BundleError, match=r"graphs\.decoder.*inputs"):
        Captioner(bundle)


def test_a_tokenizer_smaller_than_the_model_is_refused(bundle):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    os.unlink(bundle / "tokenizer.json")
    Tokenizer(WordLevel({"a": 0, "b": 1}, unk_token="a")).save(str(bundle / "tokenizer.json"))
    _rehash(bundle, "tokenizer.json")
    with pytest.raises(BundleError, match=r"2 tokens, fewer than the model.s vocab_size 50257"):
        Captioner(bundle)


# --- findings 3, 4 and issue 12.1-2: options -----------------------------------------------------


@pytest.mark.parametrize(
    "options, named",
    [
        (dict(strategy="beam", beam_size=100000), "beam_size must be >= 1 and <= 64"),
        (dict(temperature=0), "temperature must be a finite number > 0"),
        (dict(temperature=-1), "temperature"),
        (dict(strategy="top_k", temperature=float("nan")), "temperature"),
        (dict(strategy="top_k", seed=-1), "seed must be >= 0"),
        (dict(strategy="beam", length_penalty=float("inf")), "length_penalty"),
        (dict(max_new_tokens=10**6), "max_new_tokens"),
        (dict(top_k=5), r"top_k=5 \(--top-k\) is only used by the top_k strategy"),
        (dict(top_p=0.5), r"--top-p"),
        (dict(strategy="top-p", beam_size=3), r"--beam-size"),
        (dict(stop_token_ids=[60000]), "token ids are 0..50256"),
    ],
)
def test_bad_or_unused_options_are_refused(captioner, options, named):
    with pytest.raises(OptionsError, match=named):
        captioner.options(**options)


def test_strategies_in_both_spellings_with_default_parameters(captioner):
    assert captioner.options(strategy="top-k").strategy == "top_k"
    assert captioner.options(strategy="top_k").top_k == 50  # the bundle's top_k 0 means "not set"
    assert captioner.options(strategy="top-p", top_p=0.9).top_p == 0.9
    image = np.full((40, 40, 3), 90, np.uint8)
    for strategy in ("top-k", "top_p"):
        caption = captioner.caption(image, strategy=strategy, seed=1, max_new_tokens=4)
        assert np.isfinite(caption.score) and len(caption.tokens) >= 1


def test_greedy_scores_are_finite(captioner):
    caption = captioner.caption(np.full((40, 40, 3), 90, np.uint8), max_new_tokens=4)
    assert np.isfinite(caption.score)
    json.dumps(caption.score, allow_nan=False)


# --- finding 2 and 6: images ---------------------------------------------------------------------


def test_special_files_are_refused_and_the_good_images_still_captioned(captioner, tmp_path):
    Image.new("RGB", (40, 40), (200, 10, 10)).save(tmp_path / "good.png")
    Image.new("RGB", (40, 30), (10, 200, 10)).save(tmp_path / "good2.jpg")
    os.mkfifo(tmp_path / "fifo.png")
    signal.alarm(60)  # a blocking open would hang the test run: fail it instead
    try:
        inputs = [tmp_path / "good.png", tmp_path / "fifo.png", "/dev/zero", tmp_path / "good2.jpg"]
        results = captioner.caption(inputs, errors="return", max_new_tokens=3)
    finally:
        signal.alarm(0)
    assert isinstance(results[1], ImageError) and "not a regular file" in str(results[1])
    assert isinstance(results[2], ImageError) and "not a regular file" in str(results[2])
    assert results[0].tokens and results[3].tokens


def test_an_unsupported_pil_mode_fails_alone(captioner):
    results = captioner.caption(
        [Image.new("RGB", (40, 40)), Image.new("La", (40, 40))], errors="return", max_new_tokens=3
    )
    assert results[0].tokens
    assert isinstance(results[1], ImageError) and "mode La" in str(results[1])


# --- finding 3, 4 and issue 12.9: embeddings -----------------------------------------------------


@pytest.mark.parametrize(
    "array, named",
    [
        (np.full((2, 32), np.nan, np.float32), "rows 0, 1 hold NaN or Inf"),
        (np.ones((2, 32), np.int64), "dtype int64"),
        (np.ones((2, 32), np.complex64), "dtype complex64"),
        (np.ones((2, 32), bool), "dtype bool"),
        (np.float32(1.0), "shape"),
    ],
)
def test_caption_embeddings_refuses_what_is_not_finite_floats(captioner, array, named):
    with pytest.raises(OptionsError, match=named):
        captioner.caption_embeddings(array)


def _npy_with_header(path, header_shape):
    """A .npy whose header claims header_shape over 256 bytes of data (1e9 rows: 238 GiB)."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": header_shape}
        )
        f.write(b"\0" * 256)


def test_read_embeddings_npy(tmp_path):
    good = np.arange(64, dtype=np.float32).reshape(2, 32)
    np.save(tmp_path / "good.npy", good)
    np.testing.assert_array_equal(read_embeddings(tmp_path / "good.npy"), good)
    np.save(tmp_path / "f.npy", np.asfortranarray(good.astype(np.float64)))
    np.testing.assert_array_equal(read_embeddings(tmp_path / "f.npy"), good)


@pytest.mark.parametrize(
    "make, named",
    [
        (lambda p: _npy_with_header(p, (1000000000, 32)), "header says"),
        (lambda p: np.save(p, np.float32(3.0)), "shape"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: np.save(p, np.array(["a", "b"])), "not a float array"),
        (lambda p: np.save(p, np.array([object()]), allow_pickle=True), "not a float array"),
        (lambda p: np.save(p, np.ones((2, 32), np.int32)), "int32"),
        (lambda p: np.save(p, np.ones((2, 32), np.complex64)), "complex64"),
        (lambda p: np.save(p, np.array([[0.0] * 32, [np.inf] * 32], np.float32)), "rows 1 hold NaN"),
        (lambda p: p.write_bytes(b"\x93NUMPY\x01\x00\xff\xffgarbage"), "header"),
    ],
)
def test_read_embeddings_refuses(tmp_path, make, named):
    path = tmp_path / "e.npy"
    make(path)
    with pytest.raises(DataError, match=named):
        read_embeddings(path)


def test_read_embeddings_refuses_special_files(tmp_path):
    os.mkfifo(tmp_path / "fifo.npy")
    for path in (tmp_path / "fifo.npy", "/dev/zero"):
        with pytest.raises(DataError, match="not a regular file"):
            read_embeddings(path)


def test_read_embeddings_takes_this_projects_embedding_sets(tmp_path):
    pytest.importorskip("safetensors")
    from clipcap.data.embeddings import write_embeddings

    embeds = np.random.default_rng(0).normal(size=(3, 32)).astype(np.float32)
    write_embeddings(tmp_path / "set", embeds, [{"captions": ["a"]}] * 3)
    np.testing.assert_array_equal(read_embeddings(tmp_path / "set"), embeds)
    np.testing.assert_array_equal(read_embeddings(tmp_path / "set" / "embeddings.safetensors"), embeds)


def test_nan_from_a_graph_never_reaches_a_caption(tiny_bundle, monkeypatch):
    from clipcap.runtime import captioner as module
    from clipcap.runtime.decoding import Generation

    captioner = Captioner(tiny_bundle[0])
    monkeypatch.setattr(module, "decode", lambda *a: [Generation([5], float("nan"))])
    with pytest.raises(BundleError, match="NaN or Inf log-probabilities"):
        captioner.caption_embeddings(np.zeros((1, 32), np.float32))
