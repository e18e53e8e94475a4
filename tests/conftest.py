"""Tiny random models for the tests: nothing is downloaded."""

from __future__ import annotations

import pytest

FORMATS = ("seed", "original-mlp", "original-linear", "original-transformer")

# A tiny GPT-2 (2 layers x 64, 4 heads, GPT-2's real vocabulary) and a tiny CLIP width.
TINY = dict(
    n_embd=64, n_layer=2, n_head=4, n_positions=128, clip_dim=32, prefix_length=4, clip_length=3, layers=2
)


def make_original(kind: str, seed: int = 0, *, normalize_prefix: bool = False, **sizes):
    """An original-format model (see tests/originals.py) with spread-out random weights."""
    import torch

    from tests.originals import OriginalClipCap, hf_gpt2, spread_

    s = {**TINY, **sizes}
    torch.manual_seed(seed)
    gpt = hf_gpt2(s["n_embd"], s["n_layer"], s["n_head"], n_positions=s["n_positions"])
    model = OriginalClipCap(
        kind, gpt, s["clip_dim"], s["prefix_length"], s["clip_length"], s["layers"], normalize_prefix
    )
    return spread_(model, seed=seed).eval()


# A ViT-B-32 in miniature for open_clip: 32x32 images, 16x16 patches, 2 layers of width 64, 32-d
# embeddings (TINY's clip_dim); open_clip also needs a text tower.
TINY_CLIP_SIZE = 32
TINY_CLIP_CONFIG = {
    "embed_dim": TINY["clip_dim"],
    "vision_cfg": {
        "image_size": TINY_CLIP_SIZE,
        "layers": 2,
        "width": 64,
        "head_width": 32,
        "patch_size": 16,
    },
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_clip_files(tmp_path_factory):
    """(open_clip model config JSON, safetensors weights) of a random tiny CLIP named "clipcap-tiny-clip"."""
    import json

    torch = pytest.importorskip("torch")
    open_clip = pytest.importorskip("open_clip")
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("tiny_clip")
    config = folder / "clipcap-tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    weights = folder / "tiny-clip.safetensors"
    save_file(open_clip.create_model("clipcap-tiny-clip").state_dict(), str(weights))
    return config, weights


@pytest.fixture(scope="session")
def tiny_encoder(tiny_clip_files):
    from clipcap.models.clip import open_clip_encoder

    config, weights = tiny_clip_files
    return open_clip_encoder("clipcap-tiny-clip", str(weights), model_config=config)


@pytest.fixture(scope="session")
def tiny_hf_clip_dir(tmp_path_factory):
    """A tiny random Hugging Face CLIPModel directory (32-d embeddings) with its image processor."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    folder = tmp_path_factory.mktemp("hf_clip")
    config = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
        ),
        vision_config=dict(
            image_size=TINY_CLIP_SIZE,
            patch_size=16,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
        ),
        projection_dim=TINY["clip_dim"],
    )
    torch.manual_seed(0)
    transformers.CLIPModel(config).save_pretrained(folder)
    transformers.CLIPImageProcessor(
        size={"shortest_edge": TINY_CLIP_SIZE}, crop_size={"height": TINY_CLIP_SIZE, "width": TINY_CLIP_SIZE}
    ).save_pretrained(folder)
    return folder


@pytest.fixture(params=FORMATS)
def original(request):
    """(format name, original-format model) for every pickled format."""
    pytest.importorskip("transformers")
    return request.param, make_original(request.param)


@pytest.fixture
def tiny_model():
    """A ClipCapModel (MLP mapper) loaded from an original-mlp state dict."""
    pytest.importorskip("transformers")
    from clipcap.models.checkpoints import canonical_state_dict, infer_config
    from clipcap.models.model import ClipCapModel

    original = make_original("original-mlp")
    sd = canonical_state_dict(original.state_dict(), "original-mlp")
    model = ClipCapModel(infer_config(sd, "original-mlp", n_head=TINY["n_head"]))
    model.load_state_dict(sd, strict=False)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_bundle(tiny_encoder, tmp_path_factory):
    """(bundle dir, the ClipCapModel it came from, its encoder): a verified fp32 tiny export."""
    pytest.importorskip("onnx")
    from clipcap.export.bundle import export_bundle

    from clipcap.models.checkpoints import canonical_state_dict, infer_config
    from clipcap.models.model import ClipCapModel

    original = make_original("original-mlp")
    sd = canonical_state_dict(original.state_dict(), "original-mlp")
    model = ClipCapModel(infer_config(sd, "original-mlp", n_head=TINY["n_head"]))
    model.load_state_dict(sd, strict=False)
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    export_bundle(model.eval(), tiny_encoder, out, progress=lambda _: None)
    return out, model, tiny_encoder
