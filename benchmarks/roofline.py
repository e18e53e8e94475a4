"""How fast a decode step could be: the bytes of weights it must read over the memory bandwidth.

A decode step at a small batch does little arithmetic per weight, so it is bound by reading the
weights from memory once. ``bound = bytes read per step / read bandwidth``; a backend's
``roofline_fraction = bound / measured time per step`` (1.0 = at the hardware's limit). When the
weights fit in the last-level cache the DRAM bound can be beaten (a fraction above 1).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

GiB = 2**30

# ONNX TensorProto element types -> bytes per element (4-bit types: half a byte, rounded up per tensor).
_ITEMSIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}
_FOUR_BIT = {21, 22}  # UINT4, INT4


def read_bandwidth(threads: int, size_bytes: int | None = None, repeats: int = 5) -> dict[str, float]:
    """Memory read bandwidth in GB/s (1e9 bytes/s) with ``threads`` threads.

    Reduces a float32 array of ``size_bytes`` (default: 1 GiB or 4x the last-level cache, whichever
    is larger, so it streams from DRAM) with ``np.max``, one slice per thread; numpy releases the
    GIL while it reduces. Best of ``repeats`` passes after one untimed pass. ``np.max`` rather than
    ``np.sum``: numpy's float32 sum (pairwise summation) is bound by arithmetic on one core (about
    9 GB/s even from the cache on this project's Xeon), so it would understate the bandwidth;
    ``np.max`` runs at the memory's speed.
    """
    size_bytes = size_bytes or max(GiB, 4 * (last_level_cache_bytes() or 0))
    data = np.ones(size_bytes // 4, dtype=np.float32)  # written once, so every page is mapped
    parts = np.array_split(data, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for i in range(repeats + 1):
            start = time.perf_counter()
            list(pool.map(np.max, parts))
            took = time.perf_counter() - start
            if i:
                best = min(best, took)
    return {
        "read_gbps": data.nbytes / best / 1e9,
        "array_bytes": data.nbytes,
        "threads": threads,
        "method": f"numpy max over float32, {threads} threads, best of {repeats}",
    }


def last_level_cache_bytes() -> int | None:
    """The largest CPU cache (Linux sysfs), or None where it cannot be read."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * unit)
    return max(sizes) if sizes else None


def onnx_weight_bytes(model_or_path) -> int:
    """Bytes of weights one decode step of an ONNX decoder reads.

    Every initializer is read once per step, except a table used only by Gather nodes (the token
    and position lookups), of which a step reads one row. So the tied token table of an fp32 graph
    counts in full once (the LM head reads it), while an int8 or int4 graph's float32 lookup table
    counts one row and its quantized head copy in full. Quantized weights count at their stored
    size, their scales and zero points included. Sizes come from the shapes: nothing is loaded.
    """
    import onnx

    if isinstance(model_or_path, (str, os.PathLike)):
        model = onnx.load(str(model_or_path), load_external_data=False)
    else:
        model = model_or_path
    graph = model.graph
    consumers: dict[str, set[str]] = {}
    for node in _nodes(graph):
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    total = 0
    for init in graph.initializer:
        size = tensor_bytes(init.data_type, list(init.dims))
        if consumers.get(init.name) == {"Gather"} and init.dims:
            size //= max(int(init.dims[0]), 1)  # one row per lookup
        elif init.name not in consumers:
            size = 0  # unused
        total += size
    return total


def tensor_bytes(data_type: int, dims: Iterable[int]) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    if data_type in _FOUR_BIT:
        return (n + 1) // 2
    return n * _ITEMSIZE.get(data_type, 4)


def _nodes(graph):
    """Every node, those of subgraphs (If, Loop) included."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                yield from _nodes(attr.g)
            for sub in attr.graphs:
                yield from _nodes(sub)


def torch_weight_bytes(module) -> int:
    """float32 parameter bytes, a tied parameter counted once: what a PyTorch decode step reads."""
    unique = {id(p): p for p in module.parameters()}.values()
    return sum(p.numel() * p.element_size() for p in unique)


def bound_ms(weight_bytes: int, read_gbps: float | None, reads_per_step: int = 1) -> float | None:
    """The fastest a decode step can be, in ms: the weights read ``reads_per_step`` times."""
    if not read_gbps:
        return None
    return weight_bytes * reads_per_step / (read_gbps * 1e9) * 1000


def fraction(bound: float | None, measured_ms: float | None) -> float | None:
    if bound is None or not measured_ms:
        return None
    return bound / measured_ms


def cuda_read_bandwidth(size_bytes: int = GiB, repeats: int = 5) -> float | None:
    """The GPU's read bandwidth in GB/s (a float32 sum with PyTorch), or None without CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    data = torch.ones(size_bytes // 4, dtype=torch.float32, device="cuda")
    best = float("inf")
    for i in range(repeats + 1):
        torch.cuda.synchronize()
        start = time.perf_counter()
        data.sum()
        torch.cuda.synchronize()
        if i:
            best = min(best, time.perf_counter() - start)
    del data
    torch.cuda.empty_cache()
    return size_bytes / best / 1e9
