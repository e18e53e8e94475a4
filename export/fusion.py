"""Transformer fusions for ONNX Runtime, made by onnxscript's rewriter on the traced graph.

torch.onnx's dynamo exporter spells GPT-2 out in small operators: per layer, attention is about
fifteen (reshapes and transposes of q, k and v, the KV-cache concatenation, a scaled MatMul, the
mask, Softmax, ...), the residual adds and LayerNorms two more pairs, the tanh GELU five: 589
operators a step for GPT-2 small. ONNX Runtime spends a fixed cost on each whatever its size, which
matters where the weights are small: an int8 step took 5.1 ms where reading its weights takes ~4.

onnxscript's ``optimize_for_ort`` (the rewriter written for graphs this exporter makes) folds them
into ONNX Runtime's contrib operators: attention with its cache -> MultiHeadAttention (taking
``past_key_values.*``, writing ``present.*``), add + LayerNorm -> SkipLayerNormalization, tanh GELU
-> FastGelu: 167 operators. Measured on 2 cores, one decode step: int8 5.1 -> 3.9 ms, int4 4.9 ->
3.7 ms, fp32 18.3 -> 17.5 ms. The fused graph is verified against PyTorch like any other (fp32: the
same captions, token for token).

Fusion is an optimisation, never a requirement: when the rewriter fails (an onnxscript release
whose patterns differ), the traced graph is kept and the manifest says why.
"""

from __future__ import annotations

import logging
from pathlib import Path

from clipcap.logs import quiet_logger

log = logging.getLogger(__name__)

# One protobuf file holds at most 2 GB; larger graphs are left as traced.
_PROTOBUF_LIMIT = 2**31 - 2**26


def fuse_transformer(path: Path) -> str:
    """Rewrite the ONNX graph at ``path`` in place; returns what was done, for the manifest."""
    if path.stat().st_size > _PROTOBUF_LIMIT:
        return "none: over 2 GB"
    try:
        import onnx_ir as ir
        from onnxscript.rewriter.ort_fusions import optimize_for_ort

        model = ir.load(path)
        # onnxscript's optimizer warns about constant folds it skips; they change nothing here.
        with quiet_logger("onnxscript"):
            model, counts = optimize_for_ort(model)
        fused = path.with_suffix(".fusing.onnx")
        ir.save(model, fused)
        fused.replace(path)
    except Exception as e:  # the rewriter's internals vary between releases; the traced graph still works
        log.warning(
            "onnxscript's transformer fusions failed on %s (%s); keeping the traced graph", path.name, e
        )
        return f"none: onnxscript's fusions failed ({type(e).__name__}: {e})"
    done = {name: n for name, n in counts.items() if n}
    if not done:
        return "none: no pattern matched"
    return "onnxscript " + ", ".join(f"{name} x{n}" for name, n in sorted(done.items()))
