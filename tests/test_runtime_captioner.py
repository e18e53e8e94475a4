"""clipcap.runtime.Captioner: exact captions from a bundle, every input kind, bad input, threads."""

from __future__ import annotations

import io
import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
from clipcap.runtime import BundleError, Caption, Captioner, ImageError  # noqa: E402
from clipcap.runtime.images import load_image  # noqa: E402
from clipcap.runtime.preprocess import preprocess  # noqa: E402
from PIL import Image  # noqa: E402

from clipcap.errors import ConfigError, MissingDependencyError  # noqa: E402
from clipcap.models.generate import generate  # noqa: E402


def _image(seed: int, size=(48, 40)) -> np.ndarray:
    return (np.random.default_rng(seed).random((*size, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def captioner(tiny_bundle):
    return Captioner(tiny_bundle[0])


def _reference(tiny_bundle, images, options):
    """PyTorch all the way from the same pixels: CLIP encoder, mapper, GPT-2, reference decoder."""
    _, model, encoder = tiny_bundle
    pixels = preprocess([load_image(i) for i in images], encoder.spec.preprocessing)
    with torch.no_grad():
        embeds = encoder(torch.from_numpy(pixels))
    return [g.tokens for g in generate(model, embeds, options)]


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_images_caption_as_pytorch(tiny_bundle, captioner, batch, strategy):
    images = [_image(i) for i in range(batch)]
    beams = dict(beam_size=3) if strategy == "beam" else {}  # beam_size with greedy is refused
    options = captioner.options(strategy=strategy, max_new_tokens=12, **beams)
    got = captioner.caption(images, options)
    assert [c.tokens for c in got] == _reference(tiny_bundle, images, options)
    assert all(isinstance(c, Caption) and c.text == str(c) for c in got)


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_embeddings_caption_as_pytorch(tiny_bundle, captioner, strategy):
    _, model, _ = tiny_bundle
    embeds = np.random.default_rng(1).normal(size=(4, 32)).astype(np.float32) * 0.5
    options = captioner.options(strategy=strategy, max_new_tokens=10)
    got = captioner.caption_embeddings(embeds, options, batch_size=3)  # two batches
    assert [c.tokens for c in got] == [g.tokens for g in generate(model, torch.from_numpy(embeds), options)]


def test_defaults_come_from_the_bundle(captioner):
    assert captioner.defaults.max_new_tokens == 67 and captioner.defaults.stop_token_ids == (
        13,
    )  # original-mlp
    assert captioner.options(max_new_tokens=2).stop_token_ids == (13,)


def test_every_input_kind_gives_the_same_caption(captioner, tmp_path):
    array = _image(0)
    Image.fromarray(array).save(tmp_path / "x.png")
    data = (tmp_path / "x.png").read_bytes()
    sources = [
        str(tmp_path / "x.png"),
        tmp_path / "x.png",
        data,
        io.BytesIO(data),
        Image.fromarray(array),
        array,
    ]
    captions = captioner.caption(sources, max_new_tokens=6)
    assert len({tuple(c.tokens) for c in captions}) == 1
    assert captioner.caption(array, max_new_tokens=6) == captions[0]  # one input, one Caption


def test_io_binding_path_gives_the_same_captions(tiny_bundle, captioner):
    with_binding = Captioner(tiny_bundle[0], io_binding=True)
    images = [_image(i) for i in range(3)]
    for strategy in ("greedy", "beam"):
        assert with_binding.caption(images, strategy=strategy, max_new_tokens=8) == captioner.caption(
            images, strategy=strategy, max_new_tokens=8
        )


def test_bad_inputs_in_a_batch(captioner, tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image")
    Image.fromarray(_image(0)).save(tmp_path / "ok.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "ok.png").read_bytes()[:200])
    inputs = [
        tmp_path / "ok.png",
        tmp_path / "empty.jpg",
        tmp_path / "notes.txt",
        tmp_path,
        tmp_path / "gone.png",
        tmp_path / "cut.png",
        _image(1),
    ]
    results = captioner.caption(inputs, errors="return", max_new_tokens=5)
    kinds = [type(r).__name__ for r in results]
    assert kinds == [
        "Caption",
        "ImageError",
        "ImageError",
        "ImageError",
        "ImageError",
        "ImageError",
        "Caption",
    ]
    for source, result in zip(inputs[1:6], results[1:6], strict=True):
        assert str(source) in str(result)
    assert results[0] == captioner.caption(tmp_path / "ok.png", max_new_tokens=5)
    with pytest.raises(ImageError, match=r"empty\.jpg"):
        captioner.caption(inputs, max_new_tokens=5)


@pytest.mark.parametrize(
    "options, named",
    [
        (dict(strategy="top_k", top_k=0), "top_k"),
        (dict(strategy="top_p", top_p=1.5), "top_p"),
        (dict(strategy="top_p", temperature=0.0), "temperature"),
        (dict(strategy="beam", beam_size=0), "beam_size"),
        (dict(max_new_tokens=500), "max_new_tokens=500 does not fit"),
        (dict(beams=3), "unknown decoding option"),
    ],
)
def test_out_of_range_options_are_refused_by_name(captioner, options, named):
    with pytest.raises(ConfigError, match=named):
        captioner.caption(_image(0), **options)


def test_embedding_shape_is_checked(captioner):
    with pytest.raises(ConfigError, match=r"\[batch, 32\]"):
        captioner.caption_embeddings(np.zeros((2, 31), np.float32))


def test_one_captioner_shared_by_threads(captioner):
    jobs = [
        # top_k only with its strategy: given with greedy or beam it is refused (issue 12, point 2)
        (
            [_image(i), _image(i + 10)],
            dict(strategy=s, max_new_tokens=8, seed=i, **({"top_k": 5} if s == "top_k" else {})),
        )
        for i in range(8)
        for s in ("greedy", "beam", "top_k")
    ]
    sequential = [captioner.caption(images, **options) for images, options in jobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(lambda job: captioner.caption(job[0], **job[1]), jobs))
    assert concurrent == sequential


# --- the bundle is checked at load -------------------------------------------------------------


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    return shutil.copytree(tiny_bundle[0], tmp_path / "bundle")


def test_missing_file(bundle_copy):
    (bundle_copy / "mapper.onnx").unlink()
    with pytest.raises(BundleError, match=r"mapper.onnx: missing"):
        Captioner(bundle_copy)


def test_altered_file(bundle_copy):
    data = bytearray((bundle_copy / "tokenizer.json").read_bytes())
    data[100] ^= 1
    (bundle_copy / "tokenizer.json").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"tokenizer.json: does not match its SHA-256"):
        Captioner(bundle_copy)
    Captioner(bundle_copy, check_files=False)  # hashing skipped on request


def test_newer_format_version(bundle_copy):
    manifest = json.loads((bundle_copy / "clipcap.json").read_text())
    manifest["format_version"] = 99
    (bundle_copy / "clipcap.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format version 99 is not supported"):
        Captioner(bundle_copy)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a clipcap bundle"):
        Captioner(tmp_path)
    with pytest.raises(BundleError, match="no such bundle directory"):
        Captioner(tmp_path / "nope")


def test_cuda_is_never_a_silent_cpu_run(tiny_bundle):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    with pytest.raises(MissingDependencyError, match="CUDAExecutionProvider is not available"):
        Captioner(tiny_bundle[0], provider="cuda")
    assert Captioner(tiny_bundle[0], provider="cuda", fallback_to_cpu=True).providers == [
        "CPUExecutionProvider"
    ]
    with pytest.raises(ConfigError, match="provider must be"):
        Captioner(tiny_bundle[0], provider="tpu")


def test_threads_setting(tiny_bundle):
    assert Captioner(tiny_bundle[0], threads=1).caption(_image(0), max_new_tokens=3).tokens
    with pytest.raises(ConfigError, match="threads must be >= 1"):
        Captioner(tiny_bundle[0], threads=0)


def test_only_the_decoder_spins(tiny_bundle):
    # Threads busy-waiting after the image encoder ran would take the cores from the first decode steps.
    sessions = Captioner(tiny_bundle[0], threads=2).sessions

    def spins(session) -> bool:
        try:
            return (
                session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
                != "0"
            )
        except RuntimeError:  # not set: ONNX Runtime's default, spinning
            return True

    spinning = {name: spins(s) for name, s in sessions.items()}
    assert spinning == {"image_encoder": False, "mapper": False, "decoder": True, "cache_reorder": False}


def test_sampling_repeats_with_a_seed(captioner):
    images = [_image(i) for i in range(3)]
    a = captioner.caption(images, strategy="top_p", top_p=0.8, temperature=2.0, seed=11, max_new_tokens=8)
    assert (
        captioner.caption(images, strategy="top_p", top_p=0.8, temperature=2.0, seed=11, max_new_tokens=8)
        == a
    )


def test_stop_strings_become_stop_tokens(captioner):
    options = captioner.options(stop_strings=(".",), stop_token_ids=(50256,))
    texts = [captioner.tokenizer.decode([t]) for t in options.stop_token_ids if t != 50256]
    assert 13 in options.stop_token_ids and 50256 in options.stop_token_ids
    assert texts and all("." in t for t in texts)
    free = captioner.caption(_image(0), max_new_tokens=10, stop_token_ids=())
    word = captioner.tokenizer.decode([free.tokens[2]])
    stopped = captioner.caption(_image(0), max_new_tokens=10, stop_token_ids=(), stop_strings=(word,))
    first = next(i for i, t in enumerate(free.tokens) if word in captioner.tokenizer.decode([t]))
    assert stopped.tokens == free.tokens[: first + 1]
    with pytest.raises(ConfigError, match="must not be empty"):
        captioner.options(stop_strings=("",))
