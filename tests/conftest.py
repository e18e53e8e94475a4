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


@pytest.fixture(params=FORMATS)
def original(request):
    """(format name, original-format model) for every pickled format."""
    pytest.importorskip("transformers")
    return request.param, make_original(request.param)


@pytest.fixture
def tiny_model():
    """A ClipCapModel (MLP mapper) loaded from an original-mlp state dict."""
    pytest.importorskip("transformers")
    from clipcap.checkpoints import canonical_state_dict, infer_config
    from clipcap.model import ClipCapModel

    original = make_original("original-mlp")
    sd = canonical_state_dict(original.state_dict(), "original-mlp")
    model = ClipCapModel(infer_config(sd, "original-mlp", n_head=TINY["n_head"]))
    model.load_state_dict(sd, strict=False)
    return model.eval()
