"""Do quantized bundles keep a trained model's captions?

The speed runs use random weights, whose next-token distributions are nearly flat: there, any
rounding flips tokens, and agreement says nothing about a real model. This part takes the models
`clipcap demo` trained (weights that mean something), exports each at every quantized precision
asked for, captions the demo's held-out pictures with each bundle and with the fp32 bundle, and
reports the greedy agreement with fp32 and the exact-match accuracy of both.

A demo folder is made with `clipcap demo --out DIR` (about 4 minutes on 2 cores); `clipcap bench`
makes one in its cache when none is given.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from clipcap.errors import OptionsError

Say = Callable[[str], None]


def ensure_demo(directory: Path, say: Say) -> Path:
    """The demo folder at ``directory``, made by a full `clipcap demo` run when it has no report."""
    if (directory / "report.json").is_file():
        return directory
    from clipcap.demo.run import run_demo

    say(f"trained models for the quantization check: clipcap demo --out {directory} (about 4 minutes)")
    run_demo(directory, say=lambda line: say(f"      {line}") if line.strip() else None)
    return directory


def read_demo(directory: Path) -> dict[str, Any]:
    path = directory / "report.json"
    try:
        report = json.loads(path.read_text())
        variants = report["variants"]
        report["base_models"]["clip"]["weights"], report["base_models"]["gpt2"]["dir"]
    except FileNotFoundError:
        raise OptionsError(
            f"--trained {directory}: no report.json there; make one with `clipcap demo --out {directory}`"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise OptionsError(
            f"--trained {directory}: {path} is not a `clipcap demo` report ({type(e).__name__}: {e}); "
            f"run `clipcap demo --out {directory}` again"
        ) from None
    if report.get("mode") == "quick":
        raise OptionsError(
            f"--trained {directory}: a `clipcap demo --quick` run, whose models are barely trained; "
            "use a full demo (`clipcap demo --out DIR`)"
        )
    for row in variants:
        for key in ("checkpoint", "bundle", "predictions"):
            if not Path(row[key]).exists():
                raise OptionsError(
                    f"--trained {directory}: the demo's {key} {row[key]} is gone; run `clipcap demo` again"
                )
    return report


def trained_agreement(directory: Path, precisions: Sequence[str], threads: int, say: Say) -> dict[str, Any]:
    """{variant: {...}} for every variant the demo trained, at each precision in ``precisions``."""
    from clipcap.export.bundle import export_bundle

    from clipcap.eval.metrics import exact_match
    from clipcap.models.checkpoints import load_checkpoint
    from clipcap.models.clip import open_clip_encoder

    demo = read_demo(directory)
    clip = demo["base_models"]["clip"]
    # The demo's CLIP is an open_clip architecture of its own, registered under its config file's stem.
    name = Path(clip["config"]).stem
    encoder = open_clip_encoder(name, clip["weights"], model_config=clip["config"], quick_gelu=False)
    tokenizer = Path(demo["base_models"]["gpt2"]["dir"]) / "tokenizer.json"
    out: dict[str, Any] = {}
    for row in demo["variants"]:
        variant = row["variant"]
        held_out = [json.loads(line) for line in Path(row["predictions"]).read_text().splitlines()]
        paths = [directory / "data" / r["image"] for r in held_out]
        references = [r["references"] for r in held_out]
        reference = _caption(Path(row["bundle"]), paths, threads)
        entry: dict[str, Any] = {
            "reference": "onnxruntime fp32 (the demo's bundle)",
            "captions": len(paths),
            "exact_match_fp32": exact_match([c.text for c in reference], references),
            "precisions": {},
        }
        model = load_checkpoint(row["checkpoint"])
        for precision in precisions:
            say(f"[{variant}] trained model at {precision}: export, caption {len(paths)} held-out pictures")
            with tempfile.TemporaryDirectory(prefix="clipcap-bench-trained-", dir=directory) as tmp:
                bundle = Path(tmp) / "bundle"
                export_bundle(
                    model,
                    encoder,
                    bundle,
                    precision=precision,
                    tokenizer=tokenizer,
                    progress=lambda _: None,
                )
                got = _caption(bundle, paths, threads)
                size = sum(p.stat().st_size for p in bundle.iterdir())
            result = compare([c.tokens for c in reference], [c.tokens for c in got])
            result["exact_match"] = exact_match([c.text for c in got], references)
            result["bundle_bytes"] = size
            entry["precisions"][precision] = result
            say(
                f"      {result['exact_captions']}/{result['captions']} captions identical to fp32, "
                f"token agreement {result['token_agreement']:.3f}; exact match {result['exact_match']:.3f} "
                f"(fp32 {entry['exact_match_fp32']:.3f})"
            )
        out[variant] = entry
    return out


def compare(reference: list[list[int]], got: list[list[int]]) -> dict[str, Any]:
    """Identical captions, and the share of identical tokens position by position (a caption of
    another length counts its extra positions as different)."""
    pairs = list(zip(reference, got, strict=True))
    per_caption = [sum(a == b for a, b in zip(r, g, strict=False)) / max(len(r), len(g), 1) for r, g in pairs]
    return {
        "token_agreement": sum(per_caption) / max(len(per_caption), 1),
        "exact_captions": sum(r == g for r, g in pairs),
        "captions": len(pairs),
    }


def _caption(bundle: Path, paths: list[Path], threads: int):
    from clipcap.runtime import Captioner

    captioner = Captioner(bundle, threads=threads)
    return captioner.caption(paths, batch_size=64)
