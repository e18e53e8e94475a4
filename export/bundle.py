"""The export flow: trace, convert, verify, write the bundle, all or nothing.

One template for every graph (CTranslate2's habit): each is declared in export/graphs.py,
traced by export/onnx_export.py, converted to the asked precision by export/precision.py and
checked by export/verify.py. The bundle is built in a temporary directory beside the target and
renamed into place only when everything passed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from clipcap.export.fusion import fuse_transformer
from clipcap.export.graphs import GraphSpec, cache_reorder_spec, decoder_spec, image_encoder_spec, mapper_spec
from clipcap.export.onnx_export import DEFAULT_OPSET, ExportError, export_graph
from clipcap.export.precision import convert, io_dtype, optimize
from clipcap.export.verify import check_graph, check_greedy, format_table, session

from clipcap import __version__
from clipcap.errors import ConfigError
from clipcap.machine import package_version
from clipcap.manifest import (
    BUNDLE_FORMAT,
    BUNDLE_FORMAT_VERSION,
    MANIFEST_NAME,
    PRECISIONS,
    TOKENIZER_NAME,
    sha256_file,
    write_manifest,
)
from clipcap.models.clip import ImageEncoder
from clipcap.models.model import ClipCapModel
from clipcap.tokenizer import load_tokenizer

Progress = Callable[[str], None]


def export_bundle(
    model: ClipCapModel,
    encoder: ImageEncoder,
    out: str | Path,
    *,
    precision: str = "fp32",
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    force: bool = False,
    tokenizer: str | Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Export ``model`` with its CLIP ``encoder`` to the bundle directory ``out``; returns the manifest.

    Raises ConfigError for bad input (nothing is written) and ExportError when tracing or
    verification fails (nothing is left behind either).
    """
    out = Path(out)
    say = progress or _stderr_progress()
    _check_inputs(model, encoder, out, precision, force)
    tok = load_tokenizer(tokenizer)
    if tok.get_vocab_size() != model.config.gpt2.vocab_size:
        raise ConfigError(
            f"the tokenizer has {tok.get_vocab_size()} tokens but GPT-2's vocabulary has "
            f"{model.config.gpt2.vocab_size}: pass the checkpoint's own tokenizer (--tokenizer)"
        )
    try:
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as e:
        raise ConfigError(
            f"{out}: cannot write the bundle there ({e.strerror}); choose another directory"
        ) from None

    # SIGTERM (a job scheduler, `kill`, a container stopping) cleans up like Ctrl-C does.
    with _terminate_as_interrupt():
        try:
            specs = [
                image_encoder_spec(encoder),
                mapper_spec(model),
                decoder_spec(model),
                cache_reorder_spec(model),
            ]
            scratch = work / "fp32"
            scratch.mkdir()
            fusion: dict[str, str] = {}
            optimization: dict[str, str] = {}
            for n, spec in enumerate(specs, 1):
                say(f"[{n}/{len(specs) + 2}] tracing {spec.name} to ONNX (opset {opset})")
                export_graph(spec, scratch / spec.file, opset)
                fusion[spec.name] = (
                    fuse_transformer(scratch / spec.file) if spec.fuse else "none: not a transformer"
                )
                if precision != "fp32":
                    say(f"      converting {spec.name} to {precision}")
                convert(scratch / spec.file, work / spec.file, precision, spec)
                optimization[spec.name] = optimize(work / spec.file, precision)
            shutil.rmtree(scratch)
            tok.save(str(work / TOKENIZER_NAME), pretty=False)

            verification: dict[str, Any] = {"passed": None, "skipped": True}
            if verify:
                say(f"[{len(specs) + 1}/{len(specs) + 2}] verifying the graphs against PyTorch")
                verification, table = _verify(model, encoder, specs, work, precision)
                say(table)
            # Through JSON and back, so the returned manifest equals what a reader of the file gets.
            manifest = _manifest(
                model, encoder, specs, work, precision, opset, tok, fusion, optimization, verification
            )
            manifest = json.loads(json.dumps(manifest))
            write_manifest(work, manifest)
            if verify and not verification["passed"]:
                raise ExportError(
                    f"verification failed: the {precision} graphs do not match the PyTorch model "
                    f"(table above); no bundle was written to {out}"
                )
            say(f"[{len(specs) + 2}/{len(specs) + 2}] writing {out}")
            _move_into_place(work, out)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    for name, entry in manifest["files"].items():
        say(f"      {name:<22}{entry['bytes'] / 2**20:>10.1f} MiB")
    return manifest


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """For the duration of the block, SIGTERM raises KeyboardInterrupt, so the cleanup that runs
    for Ctrl-C (removing the partial bundle) runs for it too; the previous handler is restored.
    Signal handlers can only be set from the main thread: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _check_inputs(model: ClipCapModel, encoder: ImageEncoder, out: Path, precision: str, force: bool) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if encoder.embed_dim != model.config.mapper.clip_dim:
        raise ConfigError(
            f"the CLIP image encoder ({encoder.spec.model}) gives {encoder.embed_dim}-d embeddings but "
            f"the checkpoint's mapper takes {model.config.mapper.clip_dim}-d ones: it was trained on "
            "another CLIP (the originals: ViT-B/32 for D=512, RN50x4 for D=640)"
        )
    check_destination(out, force)


def check_destination(out: str | Path, force: bool = False) -> Path:
    """Refuse an existing ``out`` (unless ``force``) and make its missing parents, as optimum-cli
    does: the command line calls this before loading anything, so a wrong -o fails at once."""
    out = Path(out)
    if out.exists() and not force:
        raise ConfigError(f"{out} already exists; pass --force (force=True) to replace it")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{out.parent}: cannot make the directory to write the bundle into ({e})") from None
    return out


def _verify(model, encoder, specs: list[GraphSpec], work: Path, precision: str) -> tuple[dict[str, Any], str]:
    checks = [c for spec in specs for c in check_graph(spec, work / spec.file, precision)]
    sessions = {spec.name: session(work / spec.file) for spec in specs}
    kv_dtype = (
        np.float16 if io_dtype(specs[2], "past_key_values.0.key", precision) == "float16" else np.float32
    )
    greedy = check_greedy(model, encoder, sessions, kv_dtype, encoder.spec.preprocessing.image_size)
    graphs_ok = all(c.passed for c in checks)
    # fp32 must caption exactly as PyTorch; other precisions report how close they come.
    greedy_ok = precision != "fp32" or greedy["exact_sequences"] == greedy["sequences"]
    result = {
        "passed": graphs_ok and greedy_ok,
        "precision": precision,
        "graphs": [c.to_dict() for c in checks],
        "greedy": greedy,
        "greedy_reference": "PyTorch fp32 model, greedy, the bundle's stop tokens",
    }
    return result, format_table(checks, greedy)


def _manifest(
    model, encoder, specs, work, precision, opset, tok, fusion, optimization, verification
) -> dict[str, Any]:
    config, g, m = model.config, model.config.gpt2, model.config.mapper
    special = {t.content: i for i, t in tok.get_added_tokens_decoder().items() if t.special}
    clip = dataclasses.asdict(encoder.spec)
    preprocessing = clip.pop("preprocessing")
    return {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "created_by": f"clipcap-onnx {__version__}",
        "variant": config.variant,
        "source_format": config.source_format,
        "precision": precision,
        "opset": opset,
        "model": {
            "clip_dim": m.clip_dim,
            "embed_dim": g.n_embd,
            "n_layer": g.n_layer,
            "n_head": g.n_head,
            "head_dim": g.head_dim,
            "vocab_size": g.vocab_size,
            "n_positions": g.n_positions,
            "prefix_length": m.prefix_length,
            "clip_length": m.clip_length or None,
            "mapper": m.kind,
            "normalize_prefix": config.normalize_prefix,
        },
        "clip": clip,
        "preprocessing": preprocessing,
        "tokens": {
            "special_tokens": special,
            "eos_token_id": special.get("<|endoftext|>"),
            "stop_token_ids": list(config.generation.stop_token_ids),
        },
        "generation": config.generation.to_dict(),
        "graphs": {
            spec.name: {
                "file": spec.file,
                "inputs": [dict(t.to_dict(), dtype=io_dtype(spec, t.name, precision)) for t in spec.inputs],
                "outputs": [dict(t.to_dict(), dtype=io_dtype(spec, t.name, precision)) for t in spec.outputs],
                "fusion": fusion[spec.name],
                "optimization": optimization[spec.name],
            }
            for spec in specs
        },
        "versions": {
            name: package_version(name)
            for name in ("torch", "transformers", "open_clip_torch", "onnx", "onnxruntime", "onnxscript")
        },
        "files": {
            p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(work.iterdir())
            if p.is_file() and p.name != MANIFEST_NAME
        },
        "verification": verification,
    }


def _move_into_place(work: Path, out: Path) -> None:
    if out.exists():  # --force: swap, then delete the old bundle
        old = out.with_name(f".{out.name}.old-{time.time_ns()}")
        out.rename(old)
        work.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        work.rename(out)


def _stderr_progress() -> Progress:
    start = time.perf_counter()

    def say(message: str) -> None:
        first, *rest = message.splitlines() or [""]
        print(f"{time.perf_counter() - start:6.1f}s  {first}", file=sys.stderr)
        for line in rest:
            print(f"        {line}", file=sys.stderr)
        sys.stderr.flush()

    return say
