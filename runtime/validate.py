"""The one check of a bundle when it opens: the manifest's schema, the files it may read, and the
graphs' own input and output shapes against the sizes the manifest states.

Every failure is one :class:`BundleError` naming the key (``model.n_layer``, ``files``,
``graphs.decoder``) and the fix. The rules, and why, are in docs/security.md:

- the manifest's types, ranges and required keys are checked before any value is used, so a
  hostile or corrupt manifest cannot make the runtime allocate by its numbers;
- the bundle directory is the only place a bundle reads: every file a graph or the tokenizer
  names must be listed in ``files`` (with its SHA-256 and size), as a plain relative name with no
  ``..``, and must resolve inside the bundle (or, for a bundle in the Hugging Face cache, inside
  the same repository's ``blobs/`` folder, where huggingface_hub keeps what the snapshot links to);
- nothing unlisted may lie in the bundle directory but documentation, so ONNX external data, which
  ONNX Runtime reads from the graph's own folder, is always a listed and hashed file.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

from clipcap.errors import BundleError, ConfigError
from clipcap.manifest import MANIFEST_NAME, PRECISIONS, TOKENIZER_NAME
from clipcap.options import DecodingOptions

REQUIRED_GRAPHS = ("image_encoder", "mapper", "decoder")
OPTIONAL_GRAPHS = ("cache_reorder",)
_FIX = "export the bundle again (clipcap export)"

# Upper bounds far above any GPT-2 / CLIP in use, low enough that no number here allocates much.
MODEL_LIMITS = {
    "clip_dim": 1 << 16,
    "embed_dim": 1 << 16,
    "n_layer": 1024,
    "n_head": 1024,
    "head_dim": 1 << 12,
    "vocab_size": 1 << 22,
    "n_positions": 1 << 16,
    "prefix_length": 1 << 12,
}
# Files a bundle directory may hold without listing them: what a Hub repository adds.
UNLISTED_OK = {MANIFEST_NAME, "README.md", ".gitattributes"}
UNLISTED_DIRS_OK = {".git", ".cache"}
_SHA256 = re.compile(r"[0-9a-f]{64}")


def fail(key: str, problem: str, fix: str = _FIX) -> BundleError:
    return BundleError(f"clipcap.json: {key}: {problem}; {fix}")


def _section(manifest: dict[str, Any], key: str) -> dict[str, Any]:
    value = manifest.get(key)
    if not isinstance(value, dict):
        raise fail(key, "missing" if value is None else f"must be an object, got {type(value).__name__}")
    return value


def _int(section: dict[str, Any], prefix: str, name: str, low: int, high: int) -> int:
    value = section.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise fail(f"{prefix}.{name}", f"must be an integer, got {value!r}")
    if not low <= value <= high:
        raise fail(f"{prefix}.{name}", f"must be between {low} and {high}, got {value}")
    return value


def validate_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Types, ranges and required keys of every section the runtime reads."""
    if manifest.get("precision") not in PRECISIONS:
        raise fail("precision", f"must be one of {', '.join(PRECISIONS)}, got {manifest.get('precision')!r}")
    _check_model(_section(manifest, "model"))
    _check_preprocessing(_section(manifest, "preprocessing"))
    _check_generation(_section(manifest, "generation"), manifest["model"])
    _check_graphs(_section(manifest, "graphs"))
    _check_files(path, manifest)


def _check_model(model: dict[str, Any]) -> None:
    for name, high in MODEL_LIMITS.items():
        _int(model, "model", name, 1, high)
    if model["n_head"] * model["head_dim"] != model["embed_dim"]:
        raise fail(
            "model",
            f"n_head x head_dim = {model['n_head']} x {model['head_dim']} != embed_dim {model['embed_dim']}",
        )
    if model["prefix_length"] >= model["n_positions"]:
        raise fail(
            "model.prefix_length",
            f"{model['prefix_length']} leaves no room in n_positions {model['n_positions']}",
        )


def _check_preprocessing(section: dict[str, Any]) -> None:
    from clipcap.config import Preprocessing  # the one definition of its fields and ranges

    try:
        Preprocessing.from_dict(section)
    except ConfigError as e:
        raise fail("preprocessing", str(e)) from None


def _check_generation(section: dict[str, Any], model: dict[str, Any]) -> None:
    try:
        options = DecodingOptions.from_dict(section)
        options.check_context(model["prefix_length"], model["n_positions"])
    except (ConfigError, TypeError) as e:
        raise fail("generation", str(e)) from None
    if any(t >= model["vocab_size"] for t in options.stop_token_ids):
        raise fail(
            "generation.stop_token_ids",
            f"{list(options.stop_token_ids)} has ids outside the vocabulary of {model['vocab_size']}",
        )


def _check_graphs(graphs: dict[str, Any]) -> None:
    for name in REQUIRED_GRAPHS:
        if name not in graphs:
            raise fail(f"graphs.{name}", "missing")
    for name, spec in graphs.items():
        if name not in REQUIRED_GRAPHS + OPTIONAL_GRAPHS:
            raise fail(
                f"graphs.{name}", f"unknown graph (known: {', '.join(REQUIRED_GRAPHS + OPTIONAL_GRAPHS)})"
            )
        if not isinstance(spec, dict) or not isinstance(spec.get("file"), str):
            raise fail(f"graphs.{name}.file", "must be the graph's file name (a string)")
        for side in ("inputs", "outputs"):
            tensors = spec.get(side)
            if not isinstance(tensors, list) or not all(
                isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("dtype"), str)
                for t in tensors
            ):
                raise fail(f"graphs.{name}.{side}", "must be a list of {name, dtype, shape} objects")


def _check_files(path: Path, manifest: dict[str, Any]) -> None:
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise fail("files", "missing or not an object of {name: {sha256, bytes}}: nothing could be checked")
    for name, entry in files.items():
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("sha256"), str)
            and _SHA256.fullmatch(entry["sha256"])
        ):
            raise fail(f"files.{name}", "needs sha256, 64 lowercase hex digits")
        size = entry.get("bytes")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise fail(f"files.{name}", f"needs bytes, the file's size (an integer >= 0), got {size!r}")
        _confined(path, name)
    needed = [spec["file"] for spec in manifest["graphs"].values()] + [TOKENIZER_NAME]
    for name in needed:
        if name not in files:
            raise fail("files", f"{name} is read by the runtime but not listed with its SHA-256")
    _no_unlisted_files(path, set(files))


def _confined(bundle: Path, name: str) -> Path:
    """The file ``name`` stands for, refused unless it is a regular file inside the bundle."""
    parts = Path(name).parts
    if not name or os.path.isabs(name) or "\\" in name or ".." in parts or name != Path(name).as_posix():
        raise fail(f"files.{name}", "must be a relative name inside the bundle (no absolute path, no ..)")
    file = bundle / name
    try:
        real = file.resolve(strict=True)
        mode = real.stat().st_mode
    except (OSError, RuntimeError):
        raise BundleError(f"{file}: missing from the bundle; {_FIX}") from None
    allowed = [bundle.resolve()]
    blobs = hub_blobs(bundle)
    if blobs is not None:
        allowed.append(blobs.resolve())
    if not any(real.is_relative_to(root) for root in allowed):
        raise BundleError(f"{file}: links to {real}, outside the bundle; a bundle reads only its own files")
    if not stat.S_ISREG(mode):
        raise BundleError(f"{file}: not a regular file; {_FIX}")
    return file


def hub_blobs(bundle: Path) -> Path | None:
    """``models--OWNER--REPO/blobs`` when ``bundle`` lies in a snapshot of the Hugging Face cache
    (``models--OWNER--REPO/snapshots/REVISION/...``), whose files are links into that folder."""
    parts = bundle.absolute().parts
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] == "snapshots" and parts[i - 1].startswith("models--"):
            return Path(*parts[:i]) / "blobs"
    return None


def _no_unlisted_files(bundle: Path, listed: set[str]) -> None:
    for root, dirs, names in os.walk(bundle):
        rel_root = Path(root).relative_to(bundle)
        dirs[:] = [d for d in dirs if not (rel_root == Path(".") and d in UNLISTED_DIRS_OK)]
        for n in names:
            rel = (rel_root / n).as_posix()
            if rel not in listed and rel not in UNLISTED_OK:
                raise BundleError(
                    f"{bundle / rel}: not listed in clipcap.json's files, so not checked; a graph could read "
                    "it as external data: remove it or export the bundle again"
                )


def check_sessions(manifest: dict[str, Any], sessions: dict[str, Any]) -> None:
    """The graphs' own shapes, as ONNX Runtime reports them, against the manifest's sizes."""
    m = manifest["model"]
    size = manifest["preprocessing"]["image_size"]
    layers = m["n_layer"]
    past = {f"past_key_values.{i}.{k}" for i in range(layers) for k in ("key", "value")}
    expect = {
        "image_encoder": ({"pixel_values": [None, 3, size, size]}, {"image_embeds": [None, m["clip_dim"]]}),
        "mapper": (
            {"image_embeds": [None, m["clip_dim"]]},
            {"prefix_embeds": [None, m["prefix_length"], m["embed_dim"]]},
        ),
        "decoder": (
            {
                "prefix_embeds": [None, None, m["embed_dim"]],
                "input_ids": [None, None],
                "attention_mask": [None, None],
                **{p: [None, m["n_head"], None, m["head_dim"]] for p in past},
            },
            {"logits": [None, m["vocab_size"]]},
        ),
    }
    for graph, (inputs, outputs) in expect.items():
        session = sessions[graph]
        for side, wanted, got in (
            ("inputs", inputs, session.get_inputs()),
            ("outputs", outputs, session.get_outputs()),
        ):
            have = {t.name: t.shape for t in got}
            if side == "inputs" and set(have) != set(wanted):
                raise fail(
                    f"graphs.{graph}",
                    f"the graph's inputs are {sorted(have)}, not this graph's "
                    f"{sorted(wanted)} (another graph, or a model of another size)",
                )
            for name, shape in wanted.items():
                if name not in have or not _shape_matches(have[name], shape):
                    raise fail(
                        f"model / graphs.{graph}",
                        f"{name} has shape {have.get(name)} in the graph, "
                        f"but the manifest's sizes say {shape}",
                    )


def _shape_matches(actual: list[Any], expected: list[int | None]) -> bool:
    if len(actual) != len(expected):
        return False
    return all(e is None or not isinstance(a, int) or a == e for a, e in zip(actual, expected, strict=True))
