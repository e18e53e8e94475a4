"""Trace one GraphSpec to ONNX with torch.onnx's dynamo exporter and check its axes are symbolic."""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from pathlib import Path

import onnx
import torch
from clipcap.export.graphs import GraphSpec

from clipcap.errors import ExportError
from clipcap.logs import quiet_logger

DEFAULT_OPSET = 18


def export_graph(spec: GraphSpec, path: Path, opset: int = DEFAULT_OPSET) -> None:
    """Write ``spec``'s module to ``path`` with every named axis dynamic."""
    dims: dict[str, torch.export.Dim] = {}

    def dim(name: str) -> torch.export.Dim:
        key = re.sub(r"\W+", "_", name).strip("_")  # "past + prefix_len + seq" -> a Python name
        return dims.setdefault(key, torch.export.Dim(key))

    inputs = spec.make_inputs(spec.trace_sizes, torch.Generator().manual_seed(0))
    shapes, specs = [], iter(spec.inputs)
    for x in inputs:
        group = x if isinstance(x, list) else [x]
        axes = [{i: dim(d) for i, d in enumerate(next(specs).shape) if isinstance(d, str)} for _ in group]
        shapes.append(axes if isinstance(x, list) else axes[0])

    log = io.StringIO()
    try:
        # The exporter prints its progress and onnxscript's optimizer logs folds it skips: neither
        # is the user's concern; a failure is reported below.
        with contextlib.redirect_stdout(log), warnings.catch_warnings(), quiet_logger("onnxscript"):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                spec.module.eval(),
                inputs,
                dynamo=True,
                dynamic_shapes=tuple(shapes),
                input_names=spec.input_names,
                output_names=spec.output_names,
                opset_version=opset,
            )
            program.save(str(path))
    except Exception as e:  # the exporter raises many types; the user needs which graph and why
        raise ExportError(f"tracing {spec.name} to ONNX failed: {type(e).__name__}: {e}") from e
    check_dynamic_axes(spec, path)


def check_dynamic_axes(spec: GraphSpec, path: Path) -> None:
    """Every axis the spec names must be symbolic in the ONNX inputs (no 0/1 specialisation)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    actual = {v.name: v.type.tensor_type.shape.dim for v in graph.input}
    problems = []
    for t in spec.inputs:
        if t.name not in actual:
            problems.append(f"{t.name} is not an input")
            continue
        for i, (want, got) in enumerate(zip(t.shape, actual[t.name], strict=True)):
            if isinstance(want, str) and not got.dim_param:
                problems.append(f"{t.name} axis {i} ({want}) was fixed to {got.dim_value}")
            if isinstance(want, int) and got.dim_value != want:
                problems.append(f"{t.name} axis {i} is {got.dim_param or got.dim_value}, expected {want}")
    if problems:
        raise ExportError(
            f"{spec.name}: the traced graph's inputs are not as declared: {'; '.join(problems)}"
        )
