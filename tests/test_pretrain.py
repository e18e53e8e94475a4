"""The demo's small base models: they learn, and they are saved in the formats the real ones come in."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from clipcap.config import GPT2Config  # noqa: E402
from clipcap.demo.pretrain import (  # noqa: E402
    DEMO_CLIP_NAME,
    EOS,
    build_word_tokenizer,
    demo_clip_config,
    heldout_perplexity,
    pretrain_clip,
    pretrain_gpt2,
    save_clip,
    save_hf_gpt2,
)

CORPUS = [
    "a small red circle on the left",
    "two large blue squares on the top",
    "there is a small red circle on the left",
    "three small green triangles in the bottom half of the picture",
]
DOCUMENTS = [CORPUS[:1], CORPUS[1:2], CORPUS[2:3], CORPUS[3:], [CORPUS[0], CORPUS[2]]]  # EOS a EOS b EOS


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer(CORPUS)


def test_word_tokenizer_round_trip(tokenizer):
    assert tokenizer.token_to_id(EOS) == 0
    ids = tokenizer.encode("two large blue squares on the top").ids
    assert len(ids) == 7 and 0 not in ids
    assert tokenizer.decode([*ids, 0], skip_special_tokens=True) == "two large blue squares on the top"
    assert tokenizer.encode("a purple hexagon").ids[1:] == [1, 1]  # unknown words: <unk>


def _gpt2(tokenizer):
    return GPT2Config(vocab_size=tokenizer.get_vocab_size(), n_positions=32, n_embd=32, n_layer=2, n_head=2)


def test_gpt2_learns_the_corpus(tokenizer):
    losses = []
    model = pretrain_gpt2(
        tokenizer,
        DOCUMENTS,
        _gpt2(tokenizer),
        steps=60,
        batch_size=8,
        progress=lambda s, loss: losses.append(loss),
    )
    assert not model.training
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert heldout_perplexity(model, tokenizer, DOCUMENTS[:2]) < 6.0  # uniform over the words: 24


def test_saved_gpt2_is_a_hugging_face_gpt2(tokenizer, tmp_path):
    transformers = pytest.importorskip("transformers")
    model = pretrain_gpt2(tokenizer, DOCUMENTS, _gpt2(tokenizer), steps=2, batch_size=4)
    directory = save_hf_gpt2(model, tokenizer, tmp_path / "gpt2")
    assert {p.name for p in directory.iterdir()} == {"config.json", "model.safetensors", "tokenizer.json"}
    hf = transformers.GPT2LMHeadModel.from_pretrained(directory).eval()
    ids = torch.tensor([tokenizer.encode("a small red circle").ids])
    with torch.no_grad():
        ours, _ = model(model.embed_tokens(ids), all_logits=True)
        theirs = hf(ids).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_clip_learns_and_loads_as_an_open_clip_encoder(tmp_path):
    from clipcap.models.clip import open_clip_encoder

    torch.manual_seed(0)
    pixels = torch.randn(8, 3, 32, 32)
    captions = [CORPUS[i % 4] for i in range(8)]
    config = demo_clip_config(32, embed_dim=16, width=8)
    losses = []
    model = pretrain_clip(
        pixels,
        captions,
        config,
        steps=30,
        batch_size=8,
        lr=3e-3,
        progress=lambda s, loss: losses.append(loss),
    )
    assert losses[-1] < losses[0]
    config_file, weights = save_clip(model, config, tmp_path)
    encoder = open_clip_encoder(DEMO_CLIP_NAME, weights, model_config=config_file, quick_gelu=False)
    assert encoder.spec.embed_dim == 16 and encoder.spec.preprocessing.image_size == 32
    with torch.no_grad():
        torch.testing.assert_close(encoder(pixels), model.encode_image(pixels))
