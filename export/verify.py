"""Check exported graphs against the PyTorch model they came from.

1. Every graph, on input sizes other than the trace sizes (batch 1 and 3, past 0 and > 0, empty
   prefix or tokens): max |onnx - torch| per output within the precision's tolerance.
2. Greedy captions through the ONNX graphs equal PyTorch's reference token for token (fp32); a
   quantized or half-precision bundle reports its agreement with the fp32 reference instead.
All results are collected and reported together, failures included.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from clipcap.export.graphs import TOLERANCES, GraphSpec
from clipcap.export.precision import io_dtype

from clipcap.models.generate import generate
from clipcap.models.model import ClipCapModel

GREEDY_TOKENS = 20  # per caption; enough to show divergence, short enough for full-size models


@dataclass(frozen=True)
class GraphCheck:
    graph: str
    case: str
    output: str  # the output farthest from its limit
    max_abs_diff: float
    limit: float

    @property
    def ratio(self) -> float:
        """How much of its limit the difference uses (0 for an exact match, also with a zero limit)."""
        if self.max_abs_diff == 0:
            return 0.0
        return self.max_abs_diff / self.limit if self.limit > 0 else float("inf")

    @property
    def passed(self) -> bool:
        return bool(self.max_abs_diff <= self.limit)  # NaN fails

    def to_dict(self) -> dict[str, Any]:
        return {
            "graph": self.graph,
            "case": self.case,
            "output": self.output,
            "max_abs_diff": self.max_abs_diff,
            "limit": self.limit,
            "passed": self.passed,
        }


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_graph(spec: GraphSpec, path: Path, precision: str) -> list[GraphCheck]:
    sess = session(path)
    tolerance = TOLERANCES[precision]
    checks = []
    for n, case in enumerate(spec.cases):
        inputs = spec.make_inputs(case, torch.Generator().manual_seed(100 + n))
        with torch.no_grad():
            expected = spec.module(*inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        feeds = {
            name: t.numpy().astype(_np_dtype(io_dtype(spec, name, precision)))
            for name, t in spec.flat(inputs).items()
        }
        got = sess.run(spec.output_names, feeds)
        per_output = []
        for name, ref, out in zip(spec.output_names, expected, got, strict=True):
            ref = ref.numpy()
            diff = float(np.max(np.abs(out.astype(np.float32) - ref))) if ref.size else 0.0
            limit = tolerance.limit(float(np.max(np.abs(ref))) if ref.size else 0.0)
            per_output.append(GraphCheck(spec.name, _case(case), name, diff, limit))
        worst = max(per_output, key=lambda c: (not c.passed, c.ratio))
        checks.append(worst)
    return checks


def ort_greedy(
    mapper: ort.InferenceSession,
    decoder: ort.InferenceSession,
    image_embeds: np.ndarray,
    model: ClipCapModel,
    stop_token_ids: tuple[int, ...],
    max_new_tokens: int,
    kv_dtype: type,
) -> list[list[int]]:
    """A plain greedy loop over the ONNX graphs with the KV cache (the runtime has the real one)."""
    g = model.config.gpt2
    B = image_embeds.shape[0]
    prefix = mapper.run(None, {"image_embeds": image_embeds.astype(np.float32)})[0]
    names = [f"past_key_values.{i}.{k}" for i in range(g.n_layer) for k in ("key", "value")]
    past = {n: np.zeros((B, g.n_head, 0, g.head_dim), dtype=kv_dtype) for n in names}
    feeds = {
        "prefix_embeds": prefix,
        "input_ids": np.zeros((B, 0), dtype=np.int64),
        "attention_mask": np.ones((B, prefix.shape[1]), dtype=np.int64),
        **past,
    }
    tokens: list[list[int]] = [[] for _ in range(B)]
    done = np.zeros(B, dtype=bool)
    for _ in range(max_new_tokens):
        logits, *present = decoder.run(None, feeds)
        next_ids = logits.astype(np.float32).argmax(-1)
        for b in np.flatnonzero(~done):
            tokens[b].append(int(next_ids[b]))
        done |= np.isin(next_ids, stop_token_ids)
        if done.all():
            break
        total = feeds["attention_mask"].shape[1] + 1
        feeds = {
            "prefix_embeds": np.zeros((B, 0, g.n_embd), dtype=np.float32),
            "input_ids": next_ids[:, None].astype(np.int64),
            "attention_mask": np.ones((B, total), dtype=np.int64),
            **dict(zip(names, present, strict=True)),
        }
    return tokens


def check_greedy(
    model: ClipCapModel,
    encoder: torch.nn.Module,
    sessions: dict[str, ort.InferenceSession],
    kv_dtype: type,
    image_size: int,
    n_embeddings: int = 3,
    n_images: int = 2,
) -> dict[str, Any]:
    """Greedy captions of random embeddings and random images, ONNX vs the PyTorch reference."""
    g = torch.Generator().manual_seed(7)
    embeds = torch.randn(n_embeddings, model.config.mapper.clip_dim, generator=g) * 0.5
    pixels = torch.randn(n_images, 3, image_size, image_size, generator=g)
    options = model.config.generation.replace(
        strategy="greedy",
        max_new_tokens=min(GREEDY_TOKENS, model.config.generation.max_new_tokens),
        min_new_tokens=0,
    )
    with torch.no_grad():
        torch_embeds = torch.cat((embeds, encoder(pixels)))
    reference = [r.tokens for r in generate(model, torch_embeds, options)]
    onnx_embeds = np.concatenate(
        (embeds.numpy(), sessions["image_encoder"].run(None, {"pixel_values": pixels.numpy()})[0])
    )
    got = ort_greedy(
        sessions["mapper"],
        sessions["decoder"],
        onnx_embeds,
        model,
        options.stop_token_ids,
        options.max_new_tokens,
        kv_dtype,
    )
    agree = [
        sum(a == b for a, b in zip(r, o, strict=False)) / max(len(r), len(o), 1)
        for r, o in zip(reference, got, strict=True)
    ]
    return {
        "sequences": len(reference),
        "max_new_tokens": options.max_new_tokens,
        "exact_sequences": sum(r == o for r, o in zip(reference, got, strict=True)),
        "token_agreement": float(np.mean(agree)),
    }


def format_table(checks: list[GraphCheck], greedy: dict[str, Any] | None) -> str:
    lines = [f"{'graph':<14}{'case':<44}{'worst output':<26}{'max |diff|':>12}{'limit':>12}  ok"]
    for c in checks:
        lines.append(
            f"{c.graph:<14}{c.case:<44}{c.output:<26}{c.max_abs_diff:>12.3g}{c.limit:>12.3g}  "
            + ("yes" if c.passed else "NO")
        )
    if greedy is not None:
        lines.append(
            f"greedy captions: {greedy['exact_sequences']}/{greedy['sequences']} identical to PyTorch, "
            f"token agreement {greedy['token_agreement']:.3f} ({greedy['max_new_tokens']} new tokens each)"
        )
    return "\n".join(lines)


def _case(sizes: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sizes.items())


def _np_dtype(name: str) -> type:
    return {"float32": np.float32, "float16": np.float16, "int64": np.int64}[name]
