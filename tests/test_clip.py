"""clipcap.models.clip: each encoder gives exactly its library's own image embedding, on tiny random CLIPs."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from clipcap.config import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ClipSpec  # noqa: E402
from clipcap.errors import CheckpointError, ConfigError  # noqa: E402
from clipcap.models.clip import (  # noqa: E402 - after the importorskip
    HFClipEncoder,
    OpenClipEncoder,
    hf_clip_encoder,
    is_torchscript_archive,
    load_image_encoder,
    open_clip_encoder,
)
from tests.conftest import TINY_CLIP_CONFIG, TINY_CLIP_SIZE  # noqa: E402

TINY = "clipcap-test-tiny-vit"  # registered with open_clip under this name, process-wide
TINY_SIZE = TINY_CLIP_SIZE
TINY_DIM = TINY_CLIP_CONFIG["embed_dim"]

TINY_CONFIG = TINY_CLIP_CONFIG  # the shared tiny architecture (tests/conftest.py)


def _pixels(batch: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, TINY_SIZE, TINY_SIZE, generator=generator)


def _write_json(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------
# open_clip fixtures


@pytest.fixture(scope="module")
def open_clip():
    return pytest.importorskip("open_clip")


@pytest.fixture(scope="module")
def tiny_config(open_clip, tmp_path_factory) -> Path:
    """The tiny architecture's config file, and a "-quickgelu" variant registered beside it."""
    folder = tmp_path_factory.mktemp("open_clip_configs")
    path = _write_json(folder / f"{TINY}.json", TINY_CONFIG)
    open_clip.add_model_config(
        _write_json(folder / f"{TINY}-quickgelu.json", {**TINY_CONFIG, "quick_gelu": True})
    )
    open_clip.add_model_config(path)
    return path


def _reference(open_clip, *, quick_gelu: bool, seed: int = 0) -> torch.nn.Module:
    """A random tiny open_clip model, the ground truth the encoders must reproduce."""
    torch.manual_seed(seed)
    return open_clip.create_model(TINY, quick_gelu=quick_gelu).eval()


@pytest.fixture(scope="module")
def gelu_model(open_clip, tiny_config) -> torch.nn.Module:
    return _reference(open_clip, quick_gelu=False)


@pytest.fixture(scope="module")
def quickgelu_model(open_clip, tiny_config) -> torch.nn.Module:
    return _reference(open_clip, quick_gelu=True, seed=1)


@pytest.fixture(scope="module")
def gelu_safetensors(gelu_model, tmp_path_factory) -> Path:
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_file(gelu_model.state_dict(), str(path))
    return path


@pytest.fixture(scope="module")
def quickgelu_safetensors(quickgelu_model, tmp_path_factory) -> Path:
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("weights") / "tiny-quickgelu.safetensors"
    save_file(quickgelu_model.state_dict(), str(path))
    return path


def _open_clip_embedding(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.encode_image(pixels, normalize=False)


def _embed(encoder: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return encoder(pixels)


# --------------------------------------------------------------------------------------------------
# open_clip


@pytest.mark.parametrize("batch", [1, 3])
def test_open_clip_safetensors_gives_encode_image_exactly(gelu_model, gelu_safetensors, tiny_config, batch):
    encoder = open_clip_encoder(TINY, gelu_safetensors, model_config=tiny_config)
    pixels = _pixels(batch)
    embedding = _embed(encoder, pixels)
    assert embedding.shape == (batch, TINY_DIM)
    assert embedding.dtype == torch.float32
    assert torch.equal(embedding, _open_clip_embedding(gelu_model, pixels))


def test_open_clip_pt_state_dict(gelu_model, tiny_config, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(gelu_model.state_dict(), path)
    encoder = open_clip_encoder(TINY, str(path), model_config=tiny_config)
    pixels = _pixels(2)
    assert torch.equal(_embed(encoder, pixels), _open_clip_embedding(gelu_model, pixels))


def test_open_clip_spec(gelu_safetensors, tiny_config):
    encoder = open_clip_encoder(TINY, gelu_safetensors, model_config=tiny_config)
    assert isinstance(encoder, OpenClipEncoder)
    spec = encoder.spec
    assert (spec.backend, spec.model, spec.pretrained) == ("open_clip", TINY, str(gelu_safetensors))
    assert spec.embed_dim == encoder.embed_dim == TINY_DIM
    pre = spec.preprocessing
    assert (pre.image_size, pre.resize, pre.interpolation, pre.convention) == (
        TINY_SIZE,
        "shortest",
        "bicubic",
        "torchvision",
    )
    assert pre.mean == OPENAI_CLIP_MEAN
    assert pre.std == OPENAI_CLIP_STD


def test_open_clip_keeps_only_the_image_tower(gelu_safetensors, tiny_config):
    encoder = open_clip_encoder(TINY, gelu_safetensors, model_config=tiny_config)
    names = [name for name, _ in encoder.named_parameters()]
    assert names and all(name.startswith("visual.") for name in names)


def test_encoder_stays_frozen_in_eval_mode(gelu_safetensors, tiny_config):
    encoder = open_clip_encoder(TINY, gelu_safetensors, model_config=tiny_config)
    encoder.train()
    assert not any(module.training for module in encoder.modules())
    assert not any(p.requires_grad for p in encoder.parameters())
    assert all(p.dtype == torch.float32 for p in encoder.parameters())


# QuickGELU: the trap this module exists to close.


def test_quick_gelu_weights_need_quick_gelu(quickgelu_model, quickgelu_safetensors, tiny_config):
    pixels = _pixels(3)
    expected = _open_clip_embedding(quickgelu_model, pixels)

    right = open_clip_encoder(TINY, quickgelu_safetensors, quick_gelu=True, model_config=tiny_config)
    assert torch.equal(_embed(right, pixels), expected)

    # The same weights in a GELU model load without a word and give other embeddings.
    wrong = open_clip_encoder(TINY, quickgelu_safetensors, model_config=tiny_config)
    assert not torch.allclose(_embed(wrong, pixels), expected, atol=1e-4)


def test_inferred_activation_is_recorded(gelu_safetensors, tiny_config):
    assert open_clip_encoder(TINY, gelu_safetensors, model_config=tiny_config).spec.quick_gelu is False
    assert open_clip_encoder(f"{TINY}-quickgelu", gelu_safetensors).spec.quick_gelu is True


@pytest.mark.parametrize(
    ("model_name", "quick_gelu"),
    [
        (TINY, True),  # QuickGELU weights in a GELU-named architecture
        (f"{TINY}-quickgelu", False),  # GELU weights in a QuickGELU-named architecture
    ],
)
def test_forced_quick_gelu_is_recorded_and_rebuilt(
    request, model_name, quick_gelu, gelu_model, quickgelu_model, tiny_config
):
    weights = request.getfixturevalue("quickgelu_safetensors" if quick_gelu else "gelu_safetensors")
    reference = quickgelu_model if quick_gelu else gelu_model
    encoder = open_clip_encoder(model_name, weights, quick_gelu=quick_gelu)
    assert (encoder.spec.model, encoder.spec.quick_gelu) == (model_name, quick_gelu)
    pixels = _pixels(2)
    expected = _open_clip_embedding(reference, pixels)
    assert torch.equal(_embed(encoder, pixels), expected)
    # The spec alone rebuilds the same encoder.
    rebuilt = load_image_encoder(encoder.spec)
    assert rebuilt.spec == encoder.spec
    assert torch.equal(_embed(rebuilt, pixels), expected)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:.*torch.jit.trace:FutureWarning")
def test_torchscript_archive_gets_quick_gelu(quickgelu_model, quickgelu_safetensors, tiny_config, tmp_path):
    # OpenAI's release format: a TorchScript archive. A trace of the tiny model stands in for it.
    archive = torch.jit.trace_module(quickgelu_model, {"encode_image": _pixels(1)}, check_trace=False)
    path = tmp_path / "tiny-openai.pt"
    archive.save(str(path))
    state_dict_path = tmp_path / "state.pt"
    torch.save(quickgelu_model.state_dict(), state_dict_path)
    assert is_torchscript_archive(path)
    assert not is_torchscript_archive(state_dict_path)
    assert not is_torchscript_archive(quickgelu_safetensors)

    encoder = open_clip_encoder(TINY, path, model_config=tiny_config)  # no quick_gelu argument
    pixels = _pixels(3)
    assert torch.equal(_embed(encoder, pixels), _open_clip_embedding(quickgelu_model, pixels))
    assert (encoder.spec.model, encoder.spec.quick_gelu) == (TINY, True)


# open_clip errors


def test_missing_weights_file(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="weights file not found"):
        open_clip_encoder(TINY, tmp_path / "absent.safetensors", model_config=tiny_config)


def test_unknown_pretrained_tag(tiny_config):
    with pytest.raises(ConfigError, match="neither a pretrained tag"):
        open_clip_encoder(TINY, "no_such_tag", model_config=tiny_config)


def test_unknown_model_name(open_clip):
    with pytest.raises(ConfigError, match="unknown open_clip model"):
        open_clip_encoder("clipcap-test-no-such-model")


def test_model_config_must_be_named_after_the_model(tiny_config):
    with pytest.raises(ConfigError, match="defines"):
        open_clip_encoder("clipcap-test-other-name", model_config=tiny_config)


def test_model_config_must_be_an_open_clip_config(open_clip, tmp_path):
    config = _write_json(tmp_path / "clipcap-test-bad.json", {"embed_dim": 8})
    with pytest.raises(ConfigError, match="not an open_clip model config"):
        open_clip_encoder("clipcap-test-bad", model_config=config)


def test_weights_of_another_architecture(open_clip, tiny_config, tmp_path):
    wider = {**TINY_CONFIG, "vision_cfg": {**TINY_CONFIG["vision_cfg"], "width": 96}}
    config = _write_json(tmp_path / "clipcap-test-wider.json", wider)
    open_clip.add_model_config(config)
    path = tmp_path / "wider.pt"
    torch.save(open_clip.create_model("clipcap-test-wider").state_dict(), path)
    with pytest.raises(CheckpointError, match="cannot be loaded into open_clip"):
        open_clip_encoder(TINY, path, model_config=tiny_config)


# load_image_encoder with open_clip


def test_load_image_encoder_rebuilds_from_spec(gelu_model, gelu_safetensors, tiny_config):
    spec = ClipSpec("open_clip", TINY, str(gelu_safetensors), TINY_DIM)
    encoder = load_image_encoder(spec, model_config=tiny_config)
    pixels = _pixels(3)
    assert torch.equal(_embed(encoder, pixels), _open_clip_embedding(gelu_model, pixels))


def test_load_image_encoder_embed_dim_mismatch(gelu_safetensors, tiny_config):
    spec = ClipSpec("open_clip", TINY, str(gelu_safetensors), embed_dim=512)
    with pytest.raises(ConfigError, match=r"gives 32-d embeddings but the spec says 512-d"):
        load_image_encoder(spec, model_config=tiny_config)


def test_spec_quick_gelu_round_trips_through_the_config(gelu_safetensors):
    from clipcap.config import ClipCapConfig, GPT2Config, MapperConfig

    for quick_gelu in (None, True, False):
        spec = ClipSpec("open_clip", TINY, str(gelu_safetensors), 512, quick_gelu=quick_gelu)
        config = ClipCapConfig(GPT2Config(), MapperConfig("mlp", 512, 10, hidden_dim=3840), clip=spec)
        assert config.to_dict()["clip"]["quick_gelu"] is quick_gelu
        assert ClipCapConfig.from_json(config.to_json()).clip == spec
    # A config written before the field existed reads as None.
    data = config.to_dict()
    del data["clip"]["quick_gelu"]
    assert ClipCapConfig.from_dict(data).clip.quick_gelu is None


def test_load_image_encoder_needs_open_clip_weights(tiny_config):
    with pytest.raises(ConfigError, match="pretrained is not set"):
        load_image_encoder(ClipSpec("open_clip", TINY, None, TINY_DIM), model_config=tiny_config)


# --------------------------------------------------------------------------------------------------
# Hugging Face transformers

HF_DIM = 24  # differs from the vision sub-config's default projection_dim (512) on purpose
HF_MEAN = (0.5, 0.25, 0.125)
HF_STD = (0.2, 0.3, 0.4)


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


def _tiny_hf_config(transformers) -> Any:
    return transformers.CLIPConfig(
        text_config={
            "vocab_size": 64,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
        },
        vision_config={
            "image_size": TINY_SIZE,
            "patch_size": 16,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        },
        projection_dim=HF_DIM,
    )


@pytest.fixture(scope="module")
def hf_dir(transformers, tmp_path_factory) -> Path:
    """A tiny random CLIPModel saved with its CLIPImageProcessor, as a hub download would be."""
    folder = tmp_path_factory.mktemp("hf_clip")
    torch.manual_seed(0)
    transformers.CLIPModel(_tiny_hf_config(transformers)).save_pretrained(folder)
    transformers.CLIPImageProcessor(
        size={"shortest_edge": TINY_SIZE},
        crop_size={"height": TINY_SIZE, "width": TINY_SIZE},
        image_mean=list(HF_MEAN),
        image_std=list(HF_STD),
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def hf_reference(transformers, hf_dir) -> torch.nn.Module:
    return transformers.CLIPModel.from_pretrained(hf_dir).eval()


def _hf_embedding(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        features = model.get_image_features(pixel_values=pixels)
    # A tensor in transformers 4.x, a BaseModelOutputWithPooling (projection in pooler_output) in 5.x.
    return features if isinstance(features, torch.Tensor) else features.pooler_output


@pytest.mark.parametrize("batch", [1, 3])
def test_hf_gives_get_image_features_exactly(hf_dir, hf_reference, batch):
    encoder = hf_clip_encoder(hf_dir)
    pixels = _pixels(batch)
    embedding = _embed(encoder, pixels)
    assert embedding.shape == (batch, HF_DIM)
    assert embedding.dtype == torch.float32
    assert torch.equal(embedding, _hf_embedding(hf_reference, pixels))


def test_hf_spec_reads_the_image_processor(hf_dir):
    encoder = hf_clip_encoder(str(hf_dir))
    assert isinstance(encoder, HFClipEncoder)
    spec = encoder.spec
    assert (spec.backend, spec.model, spec.pretrained) == ("hf", str(hf_dir), None)
    assert spec.embed_dim == encoder.embed_dim == HF_DIM
    pre = spec.preprocessing
    assert (pre.image_size, pre.resize, pre.interpolation, pre.convention) == (
        TINY_SIZE,
        "shortest",
        "bicubic",
        "hf",
    )
    assert pre.mean == HF_MEAN
    assert pre.std == HF_STD


def test_hf_loads_only_the_image_tower_quietly(hf_dir):
    # transformers' loggers do not propagate to the root logger (so not to caplog): listen directly.
    messages: list[str] = []
    listener = logging.Handler()
    listener.emit = lambda record: messages.append(record.getMessage())
    library_logger = logging.getLogger("transformers")
    library_logger.addHandler(listener)
    try:
        encoder = hf_clip_encoder(hf_dir)
    finally:
        library_logger.removeHandler(listener)
    assert not any("text" in name for name, _ in encoder.named_parameters())
    # Unused text-tower weights are expected, not worth a report of every one.
    assert not any("text_model" in message for message in messages)


def test_hf_without_image_processor_uses_clip_defaults(transformers, tmp_path):
    transformers.CLIPModel(_tiny_hf_config(transformers)).save_pretrained(tmp_path)
    pre = hf_clip_encoder(tmp_path).spec.preprocessing
    assert (pre.image_size, pre.interpolation, pre.convention) == (TINY_SIZE, "bicubic", "hf")
    assert (pre.mean, pre.std) == (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)


def test_hf_vision_model_without_projection_is_refused(transformers, tmp_path):
    vision_config = _tiny_hf_config(transformers).vision_config
    transformers.CLIPVisionModel(vision_config).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="lacks"):
        hf_clip_encoder(tmp_path)


def test_hf_missing_directory(transformers, tmp_path):
    with pytest.raises(ConfigError, match="directory not found"):
        hf_clip_encoder(tmp_path / "absent")


def test_hf_spec_refuses_quick_gelu():
    with pytest.raises(ConfigError, match="quick_gelu"):
        ClipSpec("hf", "openai/clip-vit-base-patch32", None, 512, quick_gelu=True)
    with pytest.raises(ConfigError, match="quick_gelu"):
        ClipSpec("open_clip", TINY, "openai", 512, quick_gelu="yes")


def test_load_image_encoder_hf(hf_dir, hf_reference):
    encoder = load_image_encoder(ClipSpec("hf", str(hf_dir), None, HF_DIM))
    pixels = _pixels(2)
    assert torch.equal(_embed(encoder, pixels), _hf_embedding(hf_reference, pixels))
    with pytest.raises(ConfigError, match=r"gives 24-d embeddings but the spec says 512-d"):
        load_image_encoder(ClipSpec("hf", str(hf_dir), None, 512))


# Preprocessor configs other than the tiny one's (pure Python: no model needed).


def _preprocessing(cfg: dict[str, Any] | None, image_size: int = 224):
    from clipcap.models.clip import _hf_preprocessing

    return _hf_preprocessing(cfg, image_size)


def test_hf_preprocessing_legacy_int_sizes():
    pre = _preprocessing({"size": 288, "crop_size": 288, "resample": 2})
    assert (pre.image_size, pre.resize, pre.interpolation) == (288, "shortest", "bilinear")


def test_hf_preprocessing_squash_without_crop():
    pre = _preprocessing({"size": {"height": 256, "width": 256}, "do_center_crop": False})
    assert (pre.image_size, pre.resize) == (256, "squash")


@pytest.mark.parametrize(
    "cfg",
    [
        {"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}},
        {"size": {"shortest_edge": 224}, "do_center_crop": False},
        {"do_normalize": False},
        {"rescale_factor": 1.0},
    ],
)
def test_hf_preprocessing_that_cannot_be_expressed(cfg):
    with pytest.raises(ConfigError, match="cannot express"):
        _preprocessing(cfg)


_OFFLINE_SCRIPT = """
import time
from clipcap.models.clip import hf_clip_encoder, open_clip_encoder
start = time.monotonic()
makers = (
    lambda: open_clip_encoder("ViT-B-32", "openai"),
    lambda: hf_clip_encoder("openai/clip-vit-base-patch32"),
)
for make in makers:
    try:
        make()
    except Exception as e:
        print(type(e).__name__, "|", e)
print("seconds", time.monotonic() - start)
"""


@pytest.mark.parametrize("offline", ["1", "0"])
def test_downloads_that_cannot_happen_fail_at_once_fix_first(tmp_path, offline):
    """Offline (HF_HUB_OFFLINE, or no network as here) and not cached: one error, the fix first."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": offline, "HF_HUB_CACHE": str(tmp_path / "hub")}
    if offline == "0":
        import socket

        try:
            socket.create_connection(("huggingface.co", 443), timeout=2).close()
            pytest.skip("this machine reaches huggingface.co")
        except OSError:
            pass
    out = subprocess.run(
        [sys.executable, "-c", _OFFLINE_SCRIPT], env=env, capture_output=True, text=True, timeout=120
    ).stdout
    lines = out.splitlines()
    assert lines[0].startswith("OptionsError | use local CLIP weights: pass --clip-weights FILE"), out
    assert lines[1].startswith("OptionsError | use a local CLIP: pass --clip hf:DIR"), out
    why = "HF_HUB_OFFLINE is set" if offline == "1" else "cannot be reached"
    assert why in lines[0] and why in lines[1]
    assert float(lines[2].split()[1]) < 20  # not a minute of retries


def test_weights_in_the_hub_cache_are_not_refused(tmp_path):
    """A cache laid out as huggingface_hub lays it out: the check lets the load go on."""
    pytest.importorskip("huggingface_hub")
    from clipcap.models import clip

    snapshot = tmp_path / "models--timm--vit_base_patch32_clip_224.openai" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_model.safetensors").write_bytes(b"x")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    assert clip._in_hub_cache("timm/vit_base_patch32_clip_224.openai/", tmp_path)
    assert not clip._in_hub_cache("timm/some-other-model/", tmp_path)


def test_a_spec_carries_its_architecture_and_rebuilds_anywhere(gelu_safetensors, tiny_config, tmp_path):
    """A checkpoint's clip spec rebuilds its encoder in a fresh process, from another folder, with no
    --clip-config (what `clipcap export` of the demo's checkpoint needs)."""
    import subprocess
    import sys

    encoder = open_clip_encoder(TINY, gelu_safetensors, model_config=tiny_config)
    assert encoder.spec.model_config == json.loads(tiny_config.read_text())
    assert Path(encoder.spec.pretrained).is_absolute()
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(dataclasses.asdict(encoder.spec)))
    pixels = torch.rand(2, 3, TINY_SIZE, TINY_SIZE, generator=torch.Generator().manual_seed(0))
    torch.save(pixels, tmp_path / "pixels.pt")
    code = (
        "import json, sys, torch\n"
        "from clipcap.config import ClipSpec, Preprocessing\n"
        "from clipcap.models.clip import load_image_encoder\n"
        "d = json.load(open('spec.json')); d['preprocessing'] = Preprocessing(**d['preprocessing'])\n"
        "encoder = load_image_encoder(ClipSpec(**d))\n"
        "with torch.no_grad():\n"
        "    torch.save(encoder(torch.load('pixels.pt')), 'embeds.pt')\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, capture_output=True)
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "embeds.pt"), encoder(pixels))


def test_clip_weights_that_need_code_are_refused_naming_the_file(tiny_config, tmp_path):
    """A pickle that would run code, given as CLIP weights: refused by its own name, never run."""
    import os
    import pickle

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"visual.proj": Evil()}))
    with pytest.raises(CheckpointError, match=r"evil\.pt: refused as CLIP weights: this pickle needs code"):
        open_clip_encoder(TINY, str(evil), model_config=tiny_config)
    assert not marker.exists()
