"""The PyTorch reference generation: cached decoding equals the sources' no-cache loops."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from clipcap.config import ClipCapConfig, GPT2Config, MapperConfig  # noqa: E402
from clipcap.errors import ConfigError  # noqa: E402
from clipcap.models.generate import (  # noqa: E402
    BeamSearch,
    generate,
    generate_nocache,
    original_generate2,
    seed_greedy_decoding,
)
from clipcap.options import DecodingOptions  # noqa: E402
from tests.conftest import TINY  # noqa: E402


@pytest.fixture(scope="module")
def clip():
    return torch.randn(3, TINY["clip_dim"], generator=torch.Generator().manual_seed(7))


def greedy(model, clip, **options):
    return [g.tokens for g in generate(model, clip, DecodingOptions(**options))]


def test_greedy_with_cache_equals_the_originals_loop(tiny_model, clip):
    expected = original_generate2(tiny_model, clip, max_new_tokens=30)
    assert greedy(tiny_model, clip, max_new_tokens=30, stop_token_ids=(13,)) == expected
    assert all(len(t) == 30 for t in expected)  # random weights never say "."


def test_stop_token_ends_and_is_kept(tiny_model, clip):
    free = greedy(tiny_model, clip, max_new_tokens=20, stop_token_ids=())
    stop = free[0][5]
    first = free[0].index(stop)
    got = greedy(tiny_model, clip, max_new_tokens=20, stop_token_ids=(stop,))
    assert got[0] == free[0][: first + 1]
    # The source loops agree: kept (the original's ".") or dropped (the seed's EOS).
    kept = generate_nocache(tiny_model, clip[:1], max_new_tokens=20, stop_token_id=stop, keep_stop=True)
    dropped = generate_nocache(tiny_model, clip[:1], max_new_tokens=20, stop_token_id=stop, keep_stop=False)
    assert kept[0] == got[0] and dropped[0] == got[0][:-1]
    # Other rows are unaffected by row 0 finishing early.
    for row, tokens in zip(free[1:], got[1:], strict=True):
        cut = row.index(stop) + 1 if stop in row else len(row)
        assert tokens == row[:cut]


def test_seed_loop_runs_to_its_limit(tiny_model, clip):
    assert [len(t) for t in seed_greedy_decoding(tiny_model, clip)] == [12, 12, 12]


def test_min_new_tokens_holds_the_stop_back(tiny_model, clip):
    stop = greedy(tiny_model, clip[:1], max_new_tokens=20, stop_token_ids=())[0][0]
    assert greedy(tiny_model, clip[:1], max_new_tokens=20, stop_token_ids=(stop,))[0] == [stop]
    held = greedy(tiny_model, clip[:1], max_new_tokens=20, stop_token_ids=(stop,), min_new_tokens=5)[0]
    assert len(held) > 5 and stop not in held[:5]


def test_greedy_scores_are_summed_log_probs(tiny_model, clip):
    out = generate(tiny_model, clip[:1], DecodingOptions(max_new_tokens=4, stop_token_ids=()))[0]
    embeds = tiny_model.prefix(clip[:1])
    total = 0.0
    with torch.no_grad():
        for t in out.tokens:
            logits, _ = tiny_model.gpt(embeds)
            total += float(torch.log_softmax(logits, -1)[0, t])
            embeds = torch.cat((embeds, tiny_model.gpt.embed_tokens(torch.tensor([[t]]))), 1)
    assert out.score == pytest.approx(total, abs=1e-4)


def test_beam_of_one_is_greedy(tiny_model, clip):
    free = greedy(tiny_model, clip, max_new_tokens=15, stop_token_ids=())
    stop = free[1][3]
    options = dict(max_new_tokens=15, stop_token_ids=(stop,))
    beam = generate(
        tiny_model, clip, DecodingOptions(strategy="beam", beam_size=1, length_penalty=0, **options)
    )
    assert [b.tokens for b in beam] == greedy(tiny_model, clip, **options)


@pytest.mark.parametrize("beam_size", [2, 4])
def test_beam_batch_equals_one_at_a_time(tiny_model, clip, beam_size):
    free = greedy(tiny_model, clip, max_new_tokens=12, stop_token_ids=())
    options = DecodingOptions(
        strategy="beam", beam_size=beam_size, max_new_tokens=12, stop_token_ids=(free[0][2],)
    )
    together = generate(tiny_model, clip, options)
    alone = [generate(tiny_model, clip[i : i + 1], options)[0] for i in range(3)]
    assert [g.tokens for g in together] == [g.tokens for g in alone]
    assert [g.score for g in together] == pytest.approx([g.score for g in alone], abs=1e-5)


class MarkovLM(torch.nn.Module):
    """A fake decoder whose next-token distribution depends only on the last token."""

    def __init__(self, table: dict[int | None, dict[int, float]], vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.logits = {
            k: torch.tensor([math.log(v.get(t, 1e-9)) for t in range(vocab)]) for k, v in table.items()
        }
        self.config = ClipCapConfig(
            GPT2Config(vocab_size=vocab, n_positions=64, n_embd=vocab, n_layer=1, n_head=1),
            MapperConfig("linear", 2, 1),
        )
        self.gpt = self

    def embed_tokens(self, ids):
        return torch.nn.functional.one_hot(ids, self.vocab).float() + 1  # +1: never all zeros

    def step(self, embeds, mask=None, cache=None):
        last = embeds[:, -1]
        keys = [None if float(row.sum()) == 0 else int(row.argmax()) for row in last]
        logits = torch.stack([self.logits[k] for k in keys])
        state = last[:, None, None, :]
        return logits, ((state, state),)


def test_beam_finds_the_better_caption_that_greedy_misses():
    STOP, A, B, C = 0, 1, 2, 3
    lm = MarkovLM(
        {
            None: {A: 0.55, B: 0.45},
            A: {C: 0.4, A: 0.3, B: 0.3},
            C: {STOP: 0.6, A: 0.4},
            B: {STOP: 0.9, C: 0.1},
        },
        vocab=4,
    )
    prefix = torch.zeros(1, 1, 4)
    options = DecodingOptions(strategy="beam", beam_size=2, max_new_tokens=5, stop_token_ids=(STOP,))
    out = BeamSearch(lm, options).run(prefix)[0]
    assert out.tokens == [B, STOP]
    assert out.score == pytest.approx((math.log(0.45) + math.log(0.9)) / 2)
    greedy_out = BeamSearch(lm, options.replace(beam_size=1)).run(prefix)[0]
    assert greedy_out.tokens == [A, C, STOP]


def test_beam_length_limit_ranks_live_sequences():
    lm = MarkovLM({None: {1: 0.6, 2: 0.4}, 1: {1: 0.9, 2: 0.1}, 2: {2: 0.99, 1: 0.01}}, vocab=3)
    options = DecodingOptions(strategy="beam", beam_size=2, max_new_tokens=3, stop_token_ids=(0,))
    out = BeamSearch(lm, options).run(torch.zeros(1, 1, 3))[0]
    # 1,1,1: .6*.9*.9 = .486 beats 2,2,2: .4*.99*.99 = .392
    assert out.tokens == [1, 1, 1]


@pytest.mark.parametrize("strategy, extra", [("top_k", {"top_k": 5}), ("top_p", {"top_p": 0.9})])
def test_sampling_is_reproducible_with_a_seed(tiny_model, clip, strategy, extra):
    options = DecodingOptions(
        strategy=strategy, max_new_tokens=10, stop_token_ids=(), seed=3, temperature=2.0, **extra
    )
    first = generate(tiny_model, clip, options)
    assert generate(tiny_model, clip, options) == first
    others = [generate(tiny_model, clip, options.replace(seed=s)) for s in range(4, 8)]
    assert any(o != first for o in others)  # the seed matters


@pytest.mark.parametrize("strategy, extra", [("top_k", {"top_k": 1}), ("top_p", {"top_p": 1e-9})])
def test_narrowest_sampling_is_greedy(tiny_model, clip, strategy, extra):
    options = DecodingOptions(strategy=strategy, max_new_tokens=10, stop_token_ids=(), seed=0, **extra)
    got = [g.tokens for g in generate(tiny_model, clip, options)]
    assert got == greedy(tiny_model, clip, max_new_tokens=10, stop_token_ids=())


def test_too_many_new_tokens_are_refused(tiny_model, clip):
    with pytest.raises(ConfigError, match="at most 124 new tokens"):
        generate(tiny_model, clip, DecodingOptions(max_new_tokens=125))


def test_prefix_embeds_entry_point(tiny_model, clip):
    options = DecodingOptions(max_new_tokens=5)
    assert generate(tiny_model, prefix_embeds=tiny_model.prefix(clip), options=options) == generate(
        tiny_model, clip, options
    )
    with pytest.raises(ValueError, match="exactly one"):
        generate(tiny_model, options=options)


def test_bad_embedding_shape_is_named(tiny_model):
    with pytest.raises(ValueError, match=r"shape \[batch, 32\], got \[2, 31\]"):
        tiny_model.prefix(torch.zeros(2, 31))


@pytest.mark.parametrize("max_new_tokens", [1, 9])
def test_greedy_equals_transformers_generate(tiny_model, clip, max_new_tokens):
    """An oracle outside this project: transformers' own generate on the same GPT-2 weights."""
    from clipcap.benchmarks.models import hf_gpt2

    hf = hf_gpt2(tiny_model).eval()
    with torch.no_grad():
        prefix = tiny_model.prefix(clip)
        out = hf.generate(
            inputs_embeds=prefix,
            attention_mask=torch.ones(prefix.shape[:2], dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
        )
    expected = out[:, -max_new_tokens:].tolist()
    assert greedy(tiny_model, clip, max_new_tokens=max_new_tokens, stop_token_ids=()) == expected
