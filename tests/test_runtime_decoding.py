"""Runtime decoding on numpy equals the PyTorch reference token for token, through the ONNX graphs."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from clipcap.runtime.decoding import decode, log_probs, top_n  # noqa: E402
from clipcap.runtime.inference import DecoderShape, IOBindingInference, NumpyInference  # noqa: E402

from clipcap.models.generate import generate  # noqa: E402
from clipcap.options import DecodingOptions  # noqa: E402


@pytest.fixture(scope="module")
def setup(tiny_bundle):
    out, model, _ = tiny_bundle
    mapper = ort.InferenceSession(str(out / "mapper.onnx"), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(out / "decoder.onnx"), providers=["CPUExecutionProvider"])
    reorder = ort.InferenceSession(str(out / "cache_reorder.onnx"), providers=["CPUExecutionProvider"])
    shape = DecoderShape(2, 4, 16, 64, np.float32)
    embeds = torch.randn(4, 32, generator=torch.Generator().manual_seed(3)) * 0.5
    prefix = mapper.run(None, {"image_embeds": embeds.numpy()})[0]
    free = [g.tokens for g in generate(model, embeds, DecodingOptions(max_new_tokens=14, stop_token_ids=()))]
    # Stop tokens that end some captions early and not others: finished rows leave the batch.
    stops = (free[0][3], free[2][6])
    return model, decoder, shape, embeds, prefix, stops, reorder


INFERENCES = {
    "numpy": lambda decoder, shape, _: NumpyInference(decoder, shape),
    "io_binding": lambda decoder, shape, _: IOBindingInference(decoder, shape),
    "io_binding+reorder_graph": lambda decoder, shape, reorder: IOBindingInference(
        decoder, shape, reorder=reorder
    ),
}


@pytest.mark.parametrize("inference", sorted(INFERENCES))
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize(
    "options",
    [
        dict(strategy="greedy"),
        dict(strategy="greedy", min_new_tokens=5),
        dict(strategy="beam", beam_size=3),
        dict(strategy="beam", beam_size=4, length_penalty=0.5, max_new_tokens=9),
        dict(strategy="beam", beam_size=2, temperature=1.5),
    ],
    ids=["greedy", "greedy-min5", "beam3", "beam4-lp0.5", "beam2-t1.5"],
)
def test_equals_pytorch_reference(setup, inference, batch, options):
    model, decoder, shape, embeds, prefix, stops, reorder = setup
    opts = DecodingOptions(**{"max_new_tokens": 14, "stop_token_ids": stops, **options})
    expected = generate(model, embeds[:batch], opts)
    got = decode(INFERENCES[inference](decoder, shape, reorder), prefix[:batch], opts)
    assert [g.tokens for g in got] == [e.tokens for e in expected]
    assert [g.score for g in got] == pytest.approx([e.score for e in expected], abs=1e-3)


def test_some_captions_stopped_early(setup):
    model, _, _, embeds, _, stops, _ = setup
    lengths = [
        len(g.tokens)
        for g in generate(model, embeds, DecodingOptions(max_new_tokens=14, stop_token_ids=stops))
    ]
    assert min(lengths) < 14 and max(lengths) == 14  # the shrinking path ran


class CountingInference(NumpyInference):
    def __init__(self, *args):
        super().__init__(*args)
        self.rows = []

    def step(self, tokens):
        self.rows.append(len(tokens))
        return super().step(tokens)


def test_finished_captions_stop_costing_compute(setup):
    _, decoder, shape, _, prefix, stops, _ = setup
    counting = CountingInference(decoder, shape)
    decode(counting, prefix, DecodingOptions(max_new_tokens=14, stop_token_ids=stops))
    assert counting.rows[0] == 4 and counting.rows[-1] < 4
    assert counting.rows == sorted(counting.rows, reverse=True)


@pytest.mark.parametrize("strategy, extra", [("top_k", {"top_k": 20}), ("top_p", {"top_p": 0.9})])
def test_sampling_reproducible_with_seed(setup, strategy, extra):
    _, decoder, shape, _, prefix, _, _ = setup
    options = DecodingOptions(
        strategy=strategy, seed=5, temperature=3.0, max_new_tokens=10, stop_token_ids=(), **extra
    )
    first = decode(NumpyInference(decoder, shape), prefix, options)
    assert decode(NumpyInference(decoder, shape), prefix, options) == first
    # A caption does not depend on the rest of its batch.
    assert decode(NumpyInference(decoder, shape), prefix[:1], options)[0] == first[0]
    others = [decode(NumpyInference(decoder, shape), prefix, options.replace(seed=s)) for s in range(6, 10)]
    assert any(o != first for o in others)


def test_log_probs_and_top_n_match_torch():
    logits = np.random.default_rng(0).normal(size=(3, 50)).astype(np.float32) * 4
    options = DecodingOptions(temperature=0.7, min_new_tokens=2, stop_token_ids=(5,))
    got = log_probs(logits, options, step=0)
    expected = torch.log_softmax(torch.from_numpy(logits) / 0.7, -1).numpy()
    expected[:, 5] = -np.inf
    np.testing.assert_allclose(got, expected, atol=1e-5)
    values, ids = top_n(got, 4)
    t_values, t_ids = torch.from_numpy(got).topk(4)
    np.testing.assert_array_equal(ids, t_ids.numpy())
    np.testing.assert_allclose(values, t_values.numpy())
