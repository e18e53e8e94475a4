"""Transformer fusions for ONNX Runtime, made by onnxscript's rewriter on the traced graph.

torch.onnx's dynamo exporter spells GPT-2 out in small operators: per layer, attention is about
fifteen (reshapes and transposes of q, k and v, a scaled MatMul, the mask, Softmax, ...), the
residual adds and LayerNorms two more pairs, the tanh GELU five. On the CPU a decode step of GPT-2
small is ~560 operators, and ONNX Runtime spends a fixed cost on each whatever its size: in an int8
step, where the weights take ~5 ms to read, the small operators took another third of the time.

onnxscript's ``optimize_for_ort`` (the rewriter written for graphs this exporter makes) folds them
into ONNX Runtime's contrib operators: scaled_dot_product_attention -> MultiHeadAttention, add +
LayerNorm -> SkipLayerNormalization, tanh GELU -> FastGelu. The result has ~330 operators. The
fused graph is verified against PyTorch like any other (fp32: the same captions, token for token).

Fusion is an optimisation, never a requirement: when the rewriter fails (an onnxscript release
whose patterns differ), the traced graph is kept and the manifest says why.
"""

from __future__ import annotations

import logging
from pathlib import Path

from clipcap.export.onnx_export import quiet_logger

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
        with quiet_logger(
            "onnxscript"
        ):  # its optimizer warns about folds it skips, which change nothing here
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
