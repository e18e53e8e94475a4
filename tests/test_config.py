"""Config and decoding options: validated in one place, round-trip through JSON."""

from __future__ import annotations

import json

import pytest

from clipcap.config import (
    OPENAI_RN50X4,
    ClipCapConfig,
    GPT2Config,
    MapperConfig,
    Preprocessing,
)
from clipcap.errors import ConfigError
from clipcap.options import ORIGINAL_DEFAULTS, SEED_DEFAULTS, DecodingOptions


def transformer_config(**changes):
    base = ClipCapConfig(
        GPT2Config(),
        MapperConfig("transformer", 640, 40, clip_length=40, num_layers=8),
        source_format="original-transformer",
        normalize_prefix=True,
        clip=OPENAI_RN50X4,
        generation=ORIGINAL_DEFAULTS,
    )
    return base.replace(**changes)


def test_json_round_trip():
    config = transformer_config()
    assert ClipCapConfig.from_json(config.to_json()) == config
    assert config.variant == "transformer" and config.to_dict()["variant"] == "transformer"


@pytest.mark.parametrize(
    "options, named",
    [
        (dict(strategy="nucleus"), "strategy"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(min_new_tokens=9, max_new_tokens=5), "min_new_tokens"),
        (dict(strategy="top_k", top_k=-1), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(strategy="top_p", temperature=0), "temperature"),
        (dict(strategy="beam", beam_size=0), "beam_size"),
        (dict(stop_token_ids=(-1,)), "stop_token_ids"),
    ],
)
def test_bad_options_are_refused_by_name(options, named):
    with pytest.raises(ConfigError, match=named):
        DecodingOptions(**options)


def test_all_problems_reported_together():
    with pytest.raises(ConfigError, match=r"max_new_tokens.*beam_size"):
        DecodingOptions(max_new_tokens=0, beam_size=0)


def test_options_from_json_lists():
    options = DecodingOptions.from_dict({"stop_token_ids": [13, 50256], "strategy": "beam"})
    assert options.stop_token_ids == (13, 50256)
    with pytest.raises(ConfigError, match="unknown decoding options: beams"):
        DecodingOptions.from_dict({"beams": 3})


def test_source_defaults():
    assert (ORIGINAL_DEFAULTS.max_new_tokens, ORIGINAL_DEFAULTS.stop_token_ids) == (67, (13,))
    assert (SEED_DEFAULTS.max_new_tokens, SEED_DEFAULTS.stop_token_ids) == (12, (50256,))


@pytest.mark.parametrize(
    "make, named",
    [
        (lambda: GPT2Config(n_embd=100, n_head=12), "not divisible"),
        (lambda: MapperConfig("conv", 512, 10), "mapper.kind"),
        (lambda: MapperConfig("mlp", 512, 10), "hidden_dim"),
        (lambda: MapperConfig("transformer", 512, 10), "clip_length"),
        (lambda: Preprocessing(std=(1.0, 0.0, 1.0)), "std"),
        (lambda: Preprocessing(resize="crop"), "resize"),
        (lambda: transformer_config(source_format="mine"), "source_format"),
        (
            lambda: transformer_config(clip=OPENAI_RN50X4.__class__("open_clip", "ViT-B-32", "openai", 512)),
            "640",
        ),
        (lambda: transformer_config(generation=DecodingOptions(max_new_tokens=1000)), "at most 984"),
    ],
)
def test_bad_configs_are_refused(make, named):
    with pytest.raises(ConfigError, match=named):
        make()


@pytest.mark.parametrize(
    "text, named",
    [
        ("[]", "must be an object"),
        ("{", "not valid JSON"),
        ('{"mapper": {}}', "missing 'gpt2'"),
        (
            '{"gpt2": {}, "mapper": {"kind": "linear", "clip_dim": 8, "prefix_length": 2}, "extra": 1}',
            "extra",
        ),
        ('{"gpt2": {"n_embdd": 3}, "mapper": {}}', "n_embdd"),
    ],
)
def test_bad_config_json(text, named):
    with pytest.raises(ConfigError, match=named):
        ClipCapConfig.from_json(text)


# --- issue 11: sizes and types bounded before anything is allocated ------------------------------


@pytest.mark.parametrize(
    "make, named",
    [
        (lambda: GPT2Config(n_layer=4.5), "gpt2.n_layer must be an integer"),
        (lambda: GPT2Config(n_layer="4"), "gpt2.n_layer must be an integer"),
        (lambda: GPT2Config(vocab_size=10**9), "gpt2.vocab_size must be between"),
        (lambda: GPT2Config(n_positions=True), "gpt2.n_positions must be an integer"),
        (lambda: GPT2Config(layer_norm_epsilon=float("nan")), "layer_norm_epsilon"),
        (lambda: MapperConfig("mlp", 10**9, 4, hidden_dim=8), "mapper.clip_dim"),
        (lambda: Preprocessing(image_size=10**9), "preprocessing.image_size"),
        (lambda: Preprocessing(mean=("a", 0, 0)), "preprocessing.mean"),
        (
            lambda: Preprocessing.from_dict({"image_size": 32, "gamma": 1}),
            "unknown Preprocessing fields: gamma",
        ),
    ],
)
def test_sizes_and_types_are_refused_before_use(make, named):
    with pytest.raises(ConfigError, match=named):
        make()


@pytest.mark.parametrize(
    "options, named",
    [
        (dict(temperature=float("nan")), "temperature"),
        (dict(temperature=0), "temperature"),  # greedy too: its score divides by the temperature
        (dict(seed=-1), "seed"),
        (dict(length_penalty=float("nan")), "length_penalty"),
        (dict(beam_size=65), "beam_size must be >= 1 and <= 64"),
        (dict(max_new_tokens="40"), "max_new_tokens must be an integer"),
        (dict(stop_token_ids=[2**40]), "stop_token_ids"),
        (dict(stop_token_ids="13"), "stop_token_ids"),
    ],
)
def test_every_option_is_checked_whatever_the_strategy(options, named):
    with pytest.raises(ConfigError, match=named):
        DecodingOptions(**options)


def test_strategy_spellings_and_defaults():
    assert DecodingOptions(strategy="top-k").strategy == "top_k"
    assert DecodingOptions(strategy="top-p").strategy == "top_p"
    assert DecodingOptions(strategy="top_k").top_k == 50
    assert DecodingOptions(strategy="top_k", top_k=7).top_k == 7
    assert DecodingOptions(strategy="top_p").top_p == 1.0
    assert DecodingOptions().override(strategy="top-k").top_k == 50
    with pytest.raises(ConfigError, match="top_k must be >= 1 with the top_k strategy"):
        DecodingOptions().override(strategy="top_k", top_k=0)
    for name, flag in (("top_k", "--top-k"), ("top_p", "--top-p"), ("beam_size", "--beam-size")):
        with pytest.raises(ConfigError, match=flag):
            DecodingOptions().override(**{name: 3 if name != "top_p" else 0.5})


# --- a checkpoint directory's config.json (clipcap/models/checkpoints.py reads it through here) ---


def _own_checkpoint(tiny_model, tmp_path, change=None, raw=None):
    from clipcap.models.checkpoints import save_checkpoint

    out = save_checkpoint(tiny_model, tmp_path / "ckpt")
    config = out / "config.json"
    if raw is not None:
        config.write_bytes(raw)
    elif change is not None:
        data = json.loads(config.read_text())
        change(data)
        config.write_text(json.dumps(data))
    return out


@pytest.mark.parametrize(
    "change, named",
    [
        (lambda d: d["gpt2"].__setitem__("n_layer", 4.5), "gpt2.n_layer must be an integer"),
        (lambda d: d["gpt2"].__setitem__("vocab_size", 10**9), "gpt2.vocab_size must be between"),
        (lambda d: d["gpt2"].__setitem__("vocab_size", 4000000), "does not belong to these weights"),
        (lambda d: d["gpt2"].__setitem__("n_layer", 7), "n_layer 7 but the weights have 2"),
    ],
)
def test_a_checkpoint_config_is_checked_before_the_model_is_built(tiny_model, tmp_path, change, named):
    from clipcap.errors import CheckpointError
    from clipcap.models.checkpoints import load_checkpoint

    with pytest.raises(CheckpointError, match=named):
        load_checkpoint(_own_checkpoint(tiny_model, tmp_path, change))


def test_checkpoint_files_that_are_not_what_they_claim(tiny_model, tmp_path):
    from clipcap.errors import CheckpointError
    from clipcap.models.checkpoints import load_checkpoint

    with pytest.raises(CheckpointError, match="not a text file"):
        load_checkpoint(_own_checkpoint(tiny_model, tmp_path, raw=b"\xff\xfe\x00binary"))
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty \(0 bytes\)"):
        load_checkpoint(tmp_path / "empty.pt")
    (tmp_path / "text.pt").write_text("hello, not a checkpoint\n")
    with pytest.raises(CheckpointError, match="or another kind of file") as e:
        load_checkpoint(tmp_path / "text.pt")
    assert not str(e.value).endswith(('"")', "101)"))
