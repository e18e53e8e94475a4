"""Every checkpoint format loads without loss; bad files get one clear error naming them."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from clipcap.config import HF_VIT_B_32, OPENAI_VIT_B_32  # noqa: E402
from clipcap.errors import CheckpointError  # noqa: E402
from clipcap.models.checkpoints import (  # noqa: E402
    canonical_state_dict,
    detect_format,
    load_checkpoint,
    save_checkpoint,
)
from clipcap.options import DecodingOptions  # noqa: E402
from tests.conftest import TINY, make_original  # noqa: E402
from tests.originals import add_legacy_buffers  # noqa: E402

ATOL = 5e-5


def _inputs(clip_dim=TINY["clip_dim"], batch=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, clip_dim, generator=g), torch.randint(0, 50257, (batch, 5), generator=g)


def _save(model, path, legacy=True):
    sd = model.state_dict()
    if legacy and model.kind != "seed":  # the seed used transformers 4.53: no legacy buffers
        sd = add_legacy_buffers(sd, model.gpt.config.n_layer, model.gpt.config.n_positions)
    torch.save(sd, path)
    return path


def test_each_format_round_trips_with_the_same_logits(original, tmp_path):
    kind, model = original
    path = _save(model, tmp_path / f"{kind}.pt")
    loaded = load_checkpoint(path, n_head=TINY["n_head"])
    clip, tokens = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(clip, tokens), model(clip, tokens), atol=ATOL, rtol=0)
    assert loaded.config.source_format == kind
    assert not loaded.training


def test_sizes_are_read_off_the_shapes(original, tmp_path):
    kind, model = original
    config = load_checkpoint(_save(model, tmp_path / "m.pt"), n_head=4).config
    g, m = config.gpt2, config.mapper
    assert (g.vocab_size, g.n_embd, g.n_layer, g.n_head, g.n_positions) == (50257, 64, 2, 4, 128)
    assert (m.clip_dim, m.prefix_length) == (TINY["clip_dim"], TINY["prefix_length"])
    expected_kind = {"seed": "mlp", "original-mlp": "mlp", "original-linear": "linear"}.get(
        kind, "transformer"
    )
    assert m.kind == expected_kind
    assert config.variant == ("transformer" if kind == "original-transformer" else "mlp")
    if m.kind == "mlp":
        assert m.hidden_dim == 64 * TINY["prefix_length"] // 2
    if m.kind == "transformer":
        assert (m.clip_length, m.num_layers, m.num_heads) == (TINY["clip_length"], TINY["layers"], 8)


def test_source_generation_defaults(tmp_path):
    seed = load_checkpoint(_save(make_original("seed"), tmp_path / "s.pt"), n_head=4).config
    orig = load_checkpoint(_save(make_original("original-mlp"), tmp_path / "o.pt"), n_head=4).config
    assert (seed.generation.max_new_tokens, seed.generation.stop_token_ids) == (12, (50256,))
    assert (orig.generation.max_new_tokens, orig.generation.stop_token_ids) == (67, (13,))
    assert seed.clip is None and orig.clip is None  # D = 32: no known CLIP has that width
    seed512 = make_original("seed", clip_dim=512)
    assert load_checkpoint(_save(seed512, tmp_path / "s512.pt"), n_head=4).config.clip == HF_VIT_B_32


def test_normalize_prefix_is_a_setting(tmp_path, caplog):
    model = make_original("original-transformer", normalize_prefix=True)
    path = _save(model, tmp_path / "t.pt")
    clip, tokens = _inputs()
    with torch.no_grad():
        expected = model(clip, tokens)
        right = load_checkpoint(path, n_head=4, normalize_prefix=True)(clip, tokens)
        wrong = load_checkpoint(path, n_head=4)(clip, tokens)
    torch.testing.assert_close(right, expected, atol=ATOL, rtol=0)
    assert not torch.allclose(wrong, expected, atol=1e-3)
    assert "normalize_prefix not given" in caplog.text


def test_nonstandard_width_needs_n_head(tmp_path):
    model = make_original("original-mlp", n_embd=96, n_head=12, clip_dim=512, prefix_length=2)
    path = _save(model, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="n_head"):
        load_checkpoint(path)
    config = load_checkpoint(path, n_head=12).config
    assert config.clip == OPENAI_VIT_B_32  # D = 512: the originals' ViT-B/32


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "module."])
def test_wrapped_state_dicts(tmp_path, wrapper):
    model = make_original("original-mlp")
    sd = model.state_dict()
    obj = {f"module.{k}": v for k, v in sd.items()} if wrapper == "module." else {wrapper: sd, "epoch": 3}
    if wrapper != "module.":
        obj["epoch"] = torch.tensor(3)
    torch.save(obj, tmp_path / "w.pt")
    clip, tokens = _inputs()
    with torch.no_grad():
        got = load_checkpoint(tmp_path / "w.pt", n_head=4)(clip, tokens)
        torch.testing.assert_close(got, model(clip, tokens), atol=ATOL, rtol=0)


@pytest.mark.parametrize("layout", ["directory", "file", "file-with-json-beside"])
def test_own_format_round_trip(original, tmp_path, layout):
    _, model = original
    loaded = load_checkpoint(
        _save(model, tmp_path / "m.pt"), n_head=4, generation=DecodingOptions(max_new_tokens=9)
    )
    out = save_checkpoint(loaded, tmp_path / "own")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    if layout == "file":
        (out / "config.json").unlink()
        path = out / "model.safetensors"
    elif layout == "file-with-json-beside":
        path = out / "model.safetensors"
    else:
        path = out
    again = load_checkpoint(path)
    assert again.config == loaded.config.replace(source_format="clipcap-onnx")
    assert again.config.generation.max_new_tokens == 9
    for k, v in loaded.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    assert again.gpt.lm_head.weight is again.gpt.transformer.wte.weight


def test_own_format_stores_the_embedding_once(tmp_path, tiny_model):
    from safetensors import safe_open

    save_checkpoint(tiny_model, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert "gpt.lm_head.weight" not in set(f.keys())
        assert json.loads(f.metadata()["clipcap_config"])["variant"] == "mlp"


def test_own_format_overrides(tmp_path, tiny_model):
    save_checkpoint(tiny_model, tmp_path)
    loaded = load_checkpoint(tmp_path, normalize_prefix=True, generation=DecodingOptions(strategy="beam"))
    assert loaded.config.normalize_prefix and loaded.config.generation.strategy == "beam"


def test_legacy_buffers_are_dropped_and_seed_keys_renamed():
    sd = add_legacy_buffers(make_original("original-mlp").state_dict(), 2, 128)
    assert not [
        k for k in canonical_state_dict(sd, "original-mlp") if k.endswith((".attn.bias", ".masked_bias"))
    ]
    seed = canonical_state_dict(make_original("seed").state_dict(), "seed")
    assert "clip_project.model.0.weight" in seed and not [k for k in seed if k.startswith("mapping.")]
    assert "gpt.lm_head.weight" not in seed


def test_detect_format_names_unknown_keys():
    with pytest.raises(CheckpointError, match=r"not a ClipCap checkpoint.*encoder\.weight"):
        detect_format({"encoder.weight": torch.zeros(1)}, "x.pt")
    with pytest.raises(CheckpointError, match="without GPT-2"):
        detect_format({"clip_project.weight": torch.zeros(1)}, "x.pt")


# --- bad input: one clear CheckpointError (a ValueError) naming the file ----------------------


class _Evil:
    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(_Evil.marker),))


def test_a_pickle_that_needs_code_is_refused_not_run(tmp_path):
    _Evil.marker = str(tmp_path / "was-executed")
    path = tmp_path / "evil.pt"
    torch.save({"gpt.transformer.wte.weight": torch.zeros(2, 2), "payload": _Evil()}, path)
    with pytest.raises(CheckpointError, match="refused: this pickle needs code") as e:
        load_checkpoint(path)
    assert str(path) in str(e.value)
    assert not (tmp_path / "was-executed").exists()
    assert isinstance(e.value, ValueError)


def _truncated(tmp_path, name, fraction=0.5):
    model = make_original("original-mlp")
    full = _save(model, tmp_path / f"full-{name}")
    data = full.read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def _mutated(tmp_path, change):
    sd = make_original("original-mlp").state_dict()
    change(sd)
    torch.save(sd, tmp_path / "m.pt")
    return tmp_path / "m.pt"


BAD_FILES = {
    "missing file": (lambda p: p / "nope.pt", "no such file"),
    "empty directory": (lambda p: p, "needs model.safetensors"),
    "text file": (lambda p: _write(p / "notes.txt", b"hello, not weights"), "not a"),
    "zero bytes": (lambda p: _write(p / "empty.pt", b""), "not a"),
    "truncated pickle": (lambda p: _truncated(p, "cut.pt"), "truncated or corrupt"),
    "not a dict": (lambda p: _torch_save(p / "list.pt", [torch.zeros(1)]), "expected a state dict"),
    "dict of non-tensors": (lambda p: _torch_save(p / "d.pt", {"a": 1}), "not tensors"),
    "unknown keys": (
        lambda p: _mutated(p, lambda sd: sd.update({"gpt.extra.weight": torch.zeros(1)})),
        "unknown keys: gpt.extra.weight",
    ),
    "missing keys": (
        lambda p: _mutated(p, lambda sd: sd.pop("gpt.transformer.h.1.mlp.c_fc.bias")),
        "missing keys: gpt.transformer.h.1.mlp.c_fc.bias",
    ),
    "shape mismatch": (
        lambda p: _mutated(p, lambda sd: sd.update({"gpt.transformer.ln_f.bias": torch.zeros(65)})),
        r"shape mismatch: gpt.transformer.ln_f.bias \[65\] \(expected \[64\]\)",
    ),
    "mapper not a multiple of E": (
        lambda p: _mutated(p, lambda sd: sd.update({"clip_project.model.2.weight": torch.zeros(100, 128)})),
        "not a multiple of GPT-2's width 64",
    ),
    "untied head": (
        lambda p: _mutated(p, lambda sd: sd.update({"gpt.lm_head.weight": torch.zeros(50257, 64)})),
        "untied",
    ),
    "truncated safetensors": (lambda p: _truncated_safetensors(p), "not a readable safetensors"),
    "safetensors without config": (lambda p: _bare_safetensors(p), "needs its config"),
    "bad config json": (lambda p: _bad_config(p), "bad ClipCap config"),
}


def _write(path, data):
    path.write_bytes(data)
    return path


def _torch_save(path, obj):
    torch.save(obj, path)
    return path


def _own(tmp_path):
    from clipcap.models.checkpoints import load_checkpoint as load

    model = load(_save(make_original("original-mlp"), tmp_path / "src.pt"), n_head=4)
    return save_checkpoint(model, tmp_path / "own")


def _truncated_safetensors(tmp_path):
    f = _own(tmp_path) / "model.safetensors"
    f.write_bytes(f.read_bytes()[:5000])
    return f.parent


def _bare_safetensors(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(1)}, str(tmp_path / "bare.safetensors"))
    return tmp_path / "bare.safetensors"


def _bad_config(tmp_path):
    d = _own(tmp_path)
    (d / "config.json").write_text('{"gpt2": {"n_embd": 64}, "mapper": {"kind": "mlp"}}')
    return d


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_get_one_clear_error(tmp_path, case):
    make, message = BAD_FILES[case]
    path = make(tmp_path)
    with pytest.raises(CheckpointError, match=message) as e:
        load_checkpoint(path, n_head=4)
    assert str(path) in str(e.value)
    assert isinstance(e.value, ValueError)


# --- full size: GPT-2 small, CLIP ViT-B/32 width ------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["seed", "original-mlp", "original-linear", "original-transformer", "own"])
def test_full_size_checkpoints_load(tmp_path, kind):
    sizes = dict(
        n_embd=768,
        n_layer=12,
        n_head=12,
        n_positions=1024,
        clip_dim=512,
        prefix_length=10,
        clip_length=10,
        layers=8,
    )
    if kind == "original-linear":
        sizes["prefix_length"] = 40  # the original uses the linear mapper when P > 10
    if kind == "original-transformer":
        sizes.update(clip_dim=640, prefix_length=40, clip_length=40)
    source = "original-mlp" if kind == "own" else kind
    model = make_original(source, **sizes)
    for p in model.parameters():  # GPT-2's own init scale keeps a 12-layer stack finite
        p.data.mul_(0.02 / 0.3)
    path = _save(model, tmp_path / "full.pt")
    loaded = load_checkpoint(path, normalize_prefix=False)
    if kind == "own":
        path = save_checkpoint(loaded, tmp_path / "own")
        loaded = load_checkpoint(path)
    g = loaded.config.gpt2
    assert (g.n_embd, g.n_layer, g.n_head, g.n_positions, g.vocab_size) == (768, 12, 12, 1024, 50257)
    assert loaded.config.mapper.prefix_length == sizes["prefix_length"]
    clip, tokens = _inputs(sizes["clip_dim"], batch=2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(clip, tokens), model(clip, tokens), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 32, "a PNG image"),
        (b"\xff\xd8\xff\xe0" + b"\0" * 32, "a JPEG image"),
        (b'{"n_layer": 4}', "a JSON file"),
        (b"%PDF-1.7", "a PDF document"),
    ],
)
def test_files_that_are_not_checkpoints_are_named_for_what_they_are(tmp_path, data, kind):
    """`clipcap info photo.png` says it is a PNG and what info takes, not "a pickle needs code"."""
    from clipcap.models.checkpoints import load_checkpoint

    path = tmp_path / "photo.pt"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=f"{kind}, not a checkpoint: a checkpoint is a .pt"):
        load_checkpoint(path)
