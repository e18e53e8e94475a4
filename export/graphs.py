"""The bundle's graphs, declared as data (optimum's habit): the module to trace, its inputs
and outputs with named dynamic axes, inputs to trace with, verification cases and tolerances.

Trace sizes are all >= 2 so no dynamic axis is specialised to 0 or 1; verification then runs
other sizes, 0 and 1 included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from clipcap.manifest import TensorSpec
from clipcap.models.clip import ImageEncoder
from clipcap.models.model import ClipCapModel

Inputs = tuple  # positional inputs of a graph's module, in TensorSpec order (the decoder's past as a list)


@dataclass(frozen=True)
class Tolerance:
    """Pass when max|onnx - torch| <= atol + rtol * max|torch| for every output."""

    atol: float
    rtol: float

    def limit(self, reference_max: float) -> float:
        return self.atol + self.rtol * reference_max


# fp32 differs from PyTorch only by kernel rounding; fp16 by half precision. The quantized graphs
# differ by their weight rounding, which depends on the weights, so their bounds only catch a broken
# graph (wrong wiring, NaN, a scale off); how well they caption is their greedy agreement with fp32.
TOLERANCES = {
    "fp32": Tolerance(1e-4, 1e-4),
    "fp16": Tolerance(2e-2, 2e-2),
    "int8": Tolerance(0.05, 0.5),
    "int4": Tolerance(0.05, 1.0),
}


@dataclass(frozen=True)
class GraphSpec:
    name: str  # also the file stem: "decoder" -> decoder.onnx
    module: nn.Module
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    make_inputs: Callable[[dict[str, int], torch.Generator], Inputs]  # sizes of the dynamic axes -> inputs
    trace_sizes: dict[str, int]
    cases: tuple[dict[str, int], ...]  # verification sizes, none equal to the trace sizes
    keep_fp32: tuple[str, ...] = field(default=())  # I/O that stays float32 in an fp16 graph
    fuse: bool = False  # rewrite attention, LayerNorm and GELU into ONNX Runtime's fused operators

    @property
    def file(self) -> str:
        return f"{self.name}.onnx"

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def flat(self, inputs: Inputs) -> dict[str, torch.Tensor]:
        """Positional module inputs -> {ONNX input name: tensor}."""
        tensors = [t for x in inputs for t in (x if isinstance(x, list) else [x])]
        return dict(zip(self.input_names, tensors, strict=True))


class MapperGraph(nn.Module):
    """CLIP embedding -> prefix, with the prefix normalisation inside when the model uses it."""

    def __init__(self, model: ClipCapModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.model.prefix(image_embeds)


class DecoderGraph(nn.Module):
    """GPT-2 with past key values: one graph for the prefill and every decode step.

    The prefix embeddings (prefill) and the token ids (steps) are concatenated, so either may be
    empty; positions come from the attention mask inside GPT-2.
    """

    def __init__(self, model: ClipCapModel) -> None:
        super().__init__()
        self.gpt = model.gpt
        self.n_layer = model.config.gpt2.n_layer

    def forward(self, prefix_embeds, input_ids, attention_mask, past: list[torch.Tensor]):
        embeds = torch.cat((prefix_embeds, self.gpt.embed_tokens(input_ids)), dim=1)  # [B, Pp+S, E]
        cache = tuple((past[2 * i], past[2 * i + 1]) for i in range(self.n_layer))
        logits, presents = self.gpt(embeds, attention_mask, cache)
        return (logits, *[t for kv in presents for t in kv])


class CacheReorderGraph(nn.Module):
    """Pick KV-cache rows by index: beams moving, finished captions leaving the batch.

    A graph of its own so a runtime with I/O binding reorders the cache where it lives (the GPU)
    instead of copying it through the host.
    """

    def forward(self, beam_idx: torch.Tensor, past: list[torch.Tensor]):
        return tuple(t.index_select(0, beam_idx) for t in past)


def image_encoder_spec(encoder: ImageEncoder) -> GraphSpec:
    size = encoder.spec.preprocessing.image_size
    return GraphSpec(
        name="image_encoder",
        module=encoder,
        inputs=(TensorSpec("pixel_values", "float32", ("batch", 3, size, size)),),
        outputs=(TensorSpec("image_embeds", "float32", ("batch", encoder.embed_dim)),),
        make_inputs=lambda s, g: (torch.randn(s["batch"], 3, size, size, generator=g),),
        trace_sizes={"batch": 2},
        cases=({"batch": 1}, {"batch": 3}),
        keep_fp32=("pixel_values", "image_embeds"),
    )


def mapper_spec(model: ClipCapModel) -> GraphSpec:
    D, P, E = model.config.mapper.clip_dim, model.prefix_length, model.config.gpt2.n_embd
    return GraphSpec(
        name="mapper",
        module=MapperGraph(model),
        inputs=(TensorSpec("image_embeds", "float32", ("batch", D)),),
        outputs=(TensorSpec("prefix_embeds", "float32", ("batch", P, E)),),
        # CLIP embeddings are not unit vectors: scale like ViT-B/32's (norm ~ 10).
        make_inputs=lambda s, g: (torch.randn(s["batch"], D, generator=g) * 0.5,),
        trace_sizes={"batch": 2},
        cases=({"batch": 1}, {"batch": 3}),
        keep_fp32=("image_embeds", "prefix_embeds"),
    )


def decoder_spec(model: ClipCapModel) -> GraphSpec:
    g2 = model.config.gpt2
    E, H, Dh, L, V = g2.n_embd, g2.n_head, g2.head_dim, g2.n_layer, g2.vocab_size
    kv = [(i, k) for i in range(L) for k in ("key", "value")]
    past = tuple(TensorSpec(f"past_key_values.{i}.{k}", "float32", ("batch", H, "past", Dh)) for i, k in kv)
    present = tuple(
        TensorSpec(f"present.{i}.{k}", "float32", ("batch", H, "past + prefix_len + seq", Dh)) for i, k in kv
    )

    def make_inputs(s: dict[str, int], g: torch.Generator) -> Inputs:
        B, Pp, S, P = s["batch"], s["prefix_len"], s["seq"], s["past"]
        mask = torch.ones(B, P + Pp + S, dtype=torch.long)
        if B > 1 and P > 1:
            mask[0, :2] = 0  # a left-padded row
        return (
            torch.randn(B, Pp, E, generator=g),
            torch.randint(0, V, (B, S), generator=g),
            mask,
            [torch.randn(B, H, P, Dh, generator=g) for _ in kv],
        )

    return GraphSpec(
        name="decoder",
        module=DecoderGraph(model),
        inputs=(
            TensorSpec("prefix_embeds", "float32", ("batch", "prefix_len", E)),
            TensorSpec("input_ids", "int64", ("batch", "seq")),
            TensorSpec("attention_mask", "int64", ("batch", "past + prefix_len + seq")),
            *past,
        ),
        outputs=(TensorSpec("logits", "float32", ("batch", V)), *present),
        make_inputs=make_inputs,
        trace_sizes={"batch": 2, "prefix_len": 3, "seq": 2, "past": 4},
        cases=(
            {"batch": 1, "prefix_len": min(g2.n_positions, 10), "seq": 0, "past": 0},  # prefill
            {"batch": 3, "prefix_len": 5, "seq": 0, "past": 0},
            {"batch": 1, "prefix_len": 0, "seq": 1, "past": 7},  # a decode step
            {"batch": 3, "prefix_len": 0, "seq": 1, "past": 12},
            {"batch": 3, "prefix_len": 1, "seq": 3, "past": 1},
        ),
        keep_fp32=("prefix_embeds", "input_ids", "attention_mask", "logits"),
        fuse=True,
    )


def cache_reorder_spec(model: ClipCapModel) -> GraphSpec:
    g2 = model.config.gpt2
    H, Dh = g2.n_head, g2.head_dim
    kv = [(i, k) for i in range(g2.n_layer) for k in ("key", "value")]

    def make_inputs(s: dict[str, int], g: torch.Generator) -> Inputs:
        return (
            torch.randint(0, s["batch"], (s["rows"],), generator=g),
            [torch.randn(s["batch"], H, s["past"], Dh, generator=g) for _ in kv],
        )

    return GraphSpec(
        name="cache_reorder",
        module=CacheReorderGraph(),
        inputs=(
            TensorSpec("beam_idx", "int64", ("rows",)),
            *(TensorSpec(f"past_key_values.{i}.{k}", "float32", ("batch", H, "past", Dh)) for i, k in kv),
        ),
        outputs=tuple(TensorSpec(f"reordered.{i}.{k}", "float32", ("rows", H, "past", Dh)) for i, k in kv),
        make_inputs=make_inputs,
        trace_sizes={"batch": 3, "rows": 4, "past": 5},
        cases=(
            {"batch": 2, "rows": 6, "past": 3},
            {"batch": 4, "rows": 1, "past": 9},
            {"batch": 1, "rows": 1, "past": 1},
        ),
        keep_fp32=("beam_idx",),
    )
