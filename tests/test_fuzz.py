"""Property tests of the three parsers that take outside data (issue 11): the bundle manifest, image
loading, and the embeddings readers. Any input gives a result or a ClipCapError, never another
exception. Bounded (max_examples) so the whole file runs in well under a minute."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import shutil
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipcap.errors import ClipCapError
from clipcap.manifest import MANIFEST_NAME

FAST = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


# --- the manifest --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifest_bundle(tiny_bundle, tmp_path_factory):
    """A bundle copy whose manifest the tests rewrite (graphs hard-linked, never modified)."""
    pytest.importorskip("onnxruntime")
    out = tmp_path_factory.mktemp("fuzz") / "b"
    shutil.copytree(tiny_bundle[0], out, copy_function=os.link)
    os.unlink(out / MANIFEST_NAME)
    shutil.copy(tiny_bundle[0] / MANIFEST_NAME, out / MANIFEST_NAME)
    return out, json.loads((tiny_bundle[0] / MANIFEST_NAME).read_text())


def _paths(manifest, prefix=()):
    """Every (section, ..., key) path of the manifest's nested objects."""
    for key, value in manifest.items():
        yield (*prefix, key)
        if isinstance(value, dict):
            yield from _paths(value, (*prefix, key))


def _open(path):
    from clipcap.runtime.bundle import open_bundle

    with contextlib.suppress(ClipCapError):
        open_bundle(path, check_files=False)


@FAST
@given(data=st.data())
def test_any_manifest_value_gives_a_bundle_or_a_clipcap_error(manifest_bundle, data):
    path, original = manifest_bundle
    manifest = copy.deepcopy(original)
    for _ in range(data.draw(st.integers(1, 3))):
        keys = data.draw(st.sampled_from(sorted(_paths(manifest), key=str)))
        parent = manifest
        for k in keys[:-1]:
            parent = parent[k]
        if data.draw(st.booleans()):
            parent[keys[-1]] = data.draw(json_values)
        else:
            parent.pop(keys[-1], None)
    (path / MANIFEST_NAME).write_text(json.dumps(manifest))
    _open(path)


@FAST
@given(raw=st.binary(max_size=300))
def test_any_manifest_bytes_give_a_clipcap_error(manifest_bundle, raw):
    path, _ = manifest_bundle
    (path / MANIFEST_NAME).write_bytes(raw)
    _open(path)


# --- images --------------------------------------------------------------------------------------


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (10, 20, 30)).save(buffer, "PNG")
    return buffer.getvalue()


PNG = _png()


@FAST
@given(
    raw=st.one_of(
        st.binary(max_size=200),
        st.builds(
            lambda cut, flip: bytes(b ^ (i == flip) for i, b in enumerate(PNG[:cut])),
            st.integers(0, len(PNG)),
            st.integers(0, len(PNG)),
        ),
    ),
    how=st.sampled_from(["bytes", "file", "path"]),
)
def test_any_image_bytes_give_an_image_or_a_clipcap_error(tmp_path_factory, raw, how):
    from clipcap.runtime.images import load_image

    if how == "path":
        source = tmp_path_factory.mktemp("img") / "x.png"
        source.write_bytes(raw)
    else:
        source = raw if how == "bytes" else io.BytesIO(raw)
    with contextlib.suppress(ClipCapError):
        load_image(source)


@FAST
@given(
    dtype=st.sampled_from(["uint8", "float32", "int64", "bool", "complex64"]),
    shape=st.lists(st.integers(0, 5), max_size=4),
)
def test_any_array_gives_an_image_or_a_clipcap_error(dtype, shape):
    from clipcap.runtime.images import load_image

    with contextlib.suppress(ClipCapError):
        load_image(np.zeros(shape, dtype=dtype))


# --- embeddings ----------------------------------------------------------------------------------


def _read(path):
    from clipcap.runtime.arrays import read_embeddings

    try:
        out = read_embeddings(path)
    except ClipCapError:
        return
    assert out.dtype == np.float32 and out.ndim == 2 and np.isfinite(out).all()


@FAST
@given(
    descr=st.sampled_from(["<f4", "<f8", "<f2", ">f4", "<i8", "|b1", "<c8", "|O", "<U3", "|V4"]),
    shape=st.lists(st.integers(0, 2**40), max_size=3),
    fortran=st.booleans(),
    body=st.binary(max_size=256),
)
def test_any_npy_header_gives_embeddings_or_a_clipcap_error(tmp_path_factory, descr, shape, fortran, body):
    path = tmp_path_factory.mktemp("npy") / "e.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": descr, "fortran_order": fortran, "shape": tuple(shape)}
        )
        f.write(body)
    _read(path)


@FAST
@given(raw=st.binary(max_size=300))
def test_any_npy_bytes_give_a_clipcap_error(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("npy") / "e.npy"
    path.write_bytes(b"\x93NUMPY" + raw)
    _read(path)


@FAST
@given(header=json_values, claimed=st.integers(0, 2**64 - 1), body=st.binary(max_size=128))
def test_any_safetensors_gives_embeddings_or_a_clipcap_error(tmp_path_factory, header, claimed, body):
    path = tmp_path_factory.mktemp("st") / "embeddings.safetensors"
    text = json.dumps({"image_embeds": header}).encode()
    length = claimed if claimed % 2 else len(text)  # half the time a lying length
    path.write_bytes(struct.pack("<Q", length) + text + body)
    _read(path)
