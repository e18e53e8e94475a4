"""clipcap.models.gpt2 computes what Hugging Face's GPT2LMHeadModel computes, with the same weights."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from clipcap.config import GPT2Config  # noqa: E402
from clipcap.models.gpt2 import GPT2LMHead, gelu_new_reference, num_parameters  # noqa: E402
from tests.originals import hf_gpt2, spread_  # noqa: E402

ATOL = 2e-5


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    hf = spread_(hf_gpt2(64, 2, 4, vocab=1000, n_positions=64), std=0.1)
    ours = GPT2LMHead(GPT2Config(vocab_size=1000, n_positions=64, n_embd=64, n_layer=2, n_head=4))
    result = ours.load_state_dict(hf.state_dict(), strict=False)
    assert not result.unexpected_keys and not result.missing_keys
    return hf, ours.eval()


def test_parameter_names_are_hugging_faces():
    ours = GPT2LMHead(GPT2Config(vocab_size=100, n_positions=16, n_embd=32, n_layer=1, n_head=2))
    hf = hf_gpt2(32, 1, 2, vocab=100, n_positions=16)
    assert set(ours.state_dict()) == {
        k for k in hf.state_dict() if not k.endswith((".attn.bias", ".masked_bias"))
    }
    assert ours.lm_head.weight is ours.transformer.wte.weight
    assert num_parameters(ours) == sum(p.numel() for p in hf.parameters())


@pytest.mark.parametrize("batch", [1, 3])
def test_full_sequence_logits_equal(pair, batch):
    hf, ours = pair
    embeds = torch.randn(batch, 7, 64)
    with torch.no_grad():
        expected = hf(inputs_embeds=embeds).logits
        got, _ = ours(embeds, all_logits=True)
        last, _ = ours(embeds)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(last, expected[:, -1], atol=ATOL, rtol=0)


@pytest.mark.parametrize("split", [1, 4, 6])
def test_cached_steps_equal_one_pass(pair, split):
    _, ours = pair
    embeds = torch.randn(2, 7, 64)
    with torch.no_grad():
        full, _ = ours(embeds, all_logits=True)
        _, cache = ours(embeds[:, :split])
        logits = []
        for t in range(split, 7):
            step, cache = ours(embeds[:, t : t + 1], past_key_values=cache)
            logits.append(step)
    torch.testing.assert_close(torch.stack(logits, 1), full[:, split:], atol=ATOL, rtol=0)
    assert cache[0][0].shape == (2, 4, 7, 16)


def test_left_padding_matches_unpadded_row(pair):
    hf, ours = pair
    embeds = torch.randn(1, 5, 64)
    padded = torch.cat((torch.randn(1, 2, 64), embeds), dim=1)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        alone, _ = ours(embeds)
        got, _ = ours(padded, mask)
        # Hugging Face, told the same positions and mask, agrees too.
        expected = hf(
            inputs_embeds=padded, attention_mask=mask, position_ids=torch.tensor([[0, 0, 0, 1, 2, 3, 4]])
        )
    torch.testing.assert_close(got, alone, atol=ATOL, rtol=0)
    torch.testing.assert_close(got, expected.logits[:, -1], atol=ATOL, rtol=0)


def test_tanh_gelu_is_gpt2s_gelu_new():
    x = torch.linspace(-8, 8, 1001)
    torch.testing.assert_close(torch.nn.functional.gelu(x, approximate="tanh"), gelu_new_reference(x))
