"""Precision variants of an exported fp32 graph, made with ONNX Runtime's own tools.

- fp16 (for CUDA): weights and activations in half precision; the graph's float inputs and outputs
  stay float32 except the KV cache, which is float16 so it costs half the memory traffic.
- int8 (for CPU): dynamic quantization of the MatMul weights (MatMulInteger).
- int4 (for CPU): weight-only 4-bit MatMulNBits, blocks of 32, int8 compute (accuracy level 4).

The tied token-embedding table feeds a Gather and the LM head. In the int8 and int4 graphs the head
gets its own quantized copy (a quarter or an eighth of the table's bytes: the head is the largest
weight read per token), while the lookup keeps the float32 table. fp32 and fp16 store it once.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import onnx
from clipcap.export.graphs import GraphSpec

from clipcap.logs import drop_root_records


def convert(src: Path, dst: Path, precision: str, spec: GraphSpec) -> None:
    if precision == "fp32":
        shutil.copyfile(src, dst)
    elif precision == "fp16":
        _fp16(src, dst, spec)
    elif precision == "int8":
        _int8(src, dst)
    elif precision == "int4":
        _int4(src, dst)
    else:
        raise ValueError(f"unknown precision {precision!r}")


def _fp16(src: Path, dst: Path, spec: GraphSpec) -> None:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    # LayerNormalization stays float32: its statistics lose precision in half, and ONNX Runtime's
    # CPU kernel for it in float16 crashes (segfault, onnxruntime 1.32), so fp16 bundles could not
    # be verified on a CPU-only machine.
    block = [*DEFAULT_OP_BLOCK_LIST, "LayerNormalization"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = convert_float_to_float16(model, keep_io_types=list(spec.keep_fp32), op_block_list=block)
    onnx.save(half, str(dst))


def _int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantizer logs "Please consider to run pre-processing before quantization" for every graph
    # it is given: general advice, not a problem with this graph, and noise in `clipcap export`.
    with drop_root_records("Please consider to run pre-processing"):
        quantize_dynamic(
            str(src),
            str(dst),
            op_types_to_quantize=["MatMul"],
            weight_type=QuantType.QInt8,
            extra_options={"MatMulConstBOnly": True},  # weights only; activation x activation stays float
        )


def _int4(src: Path, dst: Path) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    from onnxruntime.quantization.onnx_model import ONNXModel

    # MatMulNBits replaces MatMul only; a Linear on a 2-D input (the mapper, the LM head) exports as
    # Gemm, so turn those into MatMul + Add first, as quantize_dynamic does for int8.
    model = ONNXModel(onnx.load(str(src)))
    model.replace_gemm_with_matmul()
    quantizer = MatMulNBitsQuantizer(model.model, bits=4, block_size=32, is_symmetric=True, accuracy_level=4)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)


# ONNX Runtime's offline optimizer at the extended level (fusions such as FusedMatMul, constant
# folding) on the CPU provider. Measured on GPT-2 small: the fused graph loads in about half the time
# (0.8 s instead of 1.6 s) and decodes as fast as one fused at load, since a decode step is bound by
# reading the weights. fp16 graphs are left for the CUDA provider to fuse at load: a graph fused for
# the CPU may hold kernels the CUDA provider lacks. Graphs over 2 GB are left as they are too (one
# protobuf file cannot hold them, and ONNX Runtime fuses at load anyway).
OPTIMIZED_PRECISIONS = ("fp32", "int8", "int4")
_PROTOBUF_LIMIT = 2**31 - 2**26


def optimize(path: Path, precision: str) -> str:
    """Fuse ``path`` in place for the CPU when it helps; returns what was done, for the manifest."""
    import onnxruntime as ort

    if precision not in OPTIMIZED_PRECISIONS:
        return "none: fused by ONNX Runtime when loaded"
    if path.stat().st_size > _PROTOBUF_LIMIT:
        return "none: over 2 GB, fused by ONNX Runtime when loaded"
    fused = path.with_suffix(".fused.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(fused)
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    fused.replace(path)
    return "onnxruntime extended (CPU)"


def io_dtype(spec: GraphSpec, name: str, precision: str) -> str:
    """The element type of a graph input or output in the given precision."""
    tensor = next(t for t in (*spec.inputs, *spec.outputs) if t.name == name)
    if precision == "fp16" and tensor.dtype == "float32" and name not in spec.keep_fp32:
        return "float16"
    return tensor.dtype
