"""Config and decoding options: validated in one place, round-trip through JSON."""

from __future__ import annotations

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
