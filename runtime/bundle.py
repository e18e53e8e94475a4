"""Open a bundle: its manifest, every file checked against its SHA-256, and ONNX Runtime sessions.

Provider choice is explicit: asking for CUDA where ONNX Runtime cannot use it is an error, unless
a fallback to the CPU was asked for; never a silent CPU run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort
from clipcap.runtime.validate import validate_manifest

from clipcap import hub
from clipcap.config import Preprocessing
from clipcap.errors import BundleError, ConfigError, MissingDependencyError
from clipcap.manifest import read_manifest, sha256_file

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict[str, Any]

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(**self.manifest["preprocessing"])

    def graph_file(self, name: str) -> Path:
        return self.path / self.manifest["graphs"][name]["file"]

    def io_dtype(self, graph: str, name: str) -> str:
        spec = self.manifest["graphs"][graph]
        return next(t["dtype"] for t in (*spec["inputs"], *spec["outputs"]) if t["name"] == name)


def open_bundle(path: str | Path, *, check_files: bool = True) -> Bundle:
    """Read and check a bundle directory: the manifest's schema, every path confined to the bundle
    (runtime/validate.py), and each listed file's size and SHA-256 (``check_files=False`` skips
    only the hashing, never the sizes or the confinement).

    ``path`` may name a bundle on the Hugging Face Hub, ``hf:OWNER/REPO[/FOLDER][@REVISION]``: its
    files are downloaded into the Hub's cache, then checked here like any bundle's."""
    if hub.is_hub_ref(path):
        path = hub.download_bundle(str(path))
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path}: no such bundle directory; make one with `clipcap export`")
    manifest = read_manifest(path)
    try:
        validate_manifest(path, manifest)
    except BundleError as e:  # name the bundle: the messages start with the key in clipcap.json
        message = str(e)
        raise BundleError(f"{path}/{message}" if message.startswith("clipcap.json:") else message) from None
    for name, entry in manifest["files"].items():
        file = path / name
        size = file.stat().st_size
        if size != entry["bytes"]:
            raise BundleError(
                f"{file}: {size} bytes, but clipcap.json lists {entry['bytes']} (altered or corrupt); "
                "export the bundle again"
            )
        if check_files and sha256_file(file) != entry["sha256"]:
            raise BundleError(
                f"{file}: does not match its SHA-256 in clipcap.json (altered or corrupt); "
                "export the bundle again"
            )
    return Bundle(path, manifest)


def resolve_providers(provider: str | Sequence[str], *, fallback: bool = False) -> list[str]:
    """ "cpu", "cuda", or an explicit ONNX Runtime provider list."""
    available = ort.get_available_providers()
    if isinstance(provider, str):
        if provider not in ("cpu", "cuda"):
            raise ConfigError(
                f"provider must be 'cpu', 'cuda' or a list of ONNX Runtime providers, got {provider!r}"
            )
        wanted = [CUDA, CPU] if provider == "cuda" else [CPU]
    else:
        wanted = list(provider)
    missing = [p for p in wanted if p not in available]
    if missing and CUDA in missing and not fallback:
        raise MissingDependencyError(
            f"{CUDA} is not available in this onnxruntime ({', '.join(available)}). Install the GPU build "
            "alone, as the README says (pip uninstall -y onnxruntime onnxruntime-gpu && pip install "
            "onnxruntime-gpu; the two builds must never sit side by side) with a CUDA driver, or allow "
            "the CPU with fallback_to_cpu=True (--fallback-to-cpu)"
        )
    if missing and not fallback:
        raise MissingDependencyError(f"providers {missing} are not available here (available: {available})")
    chosen = [p for p in wanted if p in available] or [CPU]
    if missing:
        log.warning("providers %s unavailable; running on %s as fallback was allowed", missing, chosen)
    return chosen


def make_session(
    file: Path, providers: list[str], threads: int | None, spin: bool = True
) -> ort.InferenceSession:
    """``spin``: whether the intra-op threads busy-wait for more work after a run. Right for the
    decoder, whose steps follow each other within a millisecond (measured on 2 cores: int8 steps of
    4.6 ms spinning, 6.5 ms not); wrong for a graph run once before others (the image encoder, the
    mapper): its threads then spin on the cores the decoder needs, and the first decode steps took
    three times as long."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(file), options, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for bad graphs
        raise BundleError(f"{file}: ONNX Runtime cannot load it ({e}); export the bundle again") from None
