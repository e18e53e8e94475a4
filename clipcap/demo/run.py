"""`clipcap demo`: the whole chain on a fresh machine, offline — train, export, caption, measure.

CLIP and GPT-2 weights cannot be downloaded here, so the demo makes small ones (clipcap.demo.pretrain)
on a synthetic captioned image set (clipcap.demo.synthetic); everything after that is the real thing,
through the same functions the commands use:

    synthetic images + captions -> pre-train a small CLIP (open_clip) and a small GPT-2
    -> clipcap embed -> clipcap train (mlp, transformer) -> clipcap export (verified fp32 bundles)
    -> clipcap.runtime captions the held-out images -> scores, timings, a contact sheet.

Writes ``OUT/report.json``, ``OUT/contact-sheet.png``, the bundles ``OUT/bundle-VARIANT/`` and
everything in between (data, base models, checkpoints), and prints a summary table.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from clipcap.demo.progress import Say, _bar, _print, _Stages

# The report (table, contact sheet, machine) lives in clipcap.demo.report; re-exported for callers and tests.
from clipcap.demo.report import _contact_sheet, _machine, summary_table
from clipcap.errors import OptionsError

VARIANTS = ("mlp", "transformer")


@dataclass(frozen=True)
class DemoPlan:
    """How much of everything: the full demo (~5 min on 2 cores) or --quick (~90 s, for CI)."""

    n_train: int
    n_val: int
    n_test: int
    clip_steps: int
    lm_steps: int
    train_epochs: dict[str, int]  # per variant
    timing_images: int  # held-out images captioned one by one for the latency figures
    sheet_images: int  # on the contact sheet


FULL = DemoPlan(
    n_train=4000,
    n_val=200,
    n_test=300,
    clip_steps=250,
    lm_steps=300,
    train_epochs={"mlp": 3, "transformer": 3},
    timing_images=40,
    sheet_images=48,
)
QUICK = DemoPlan(
    n_train=1000,
    n_val=50,
    n_test=100,
    clip_steps=60,
    lm_steps=60,
    train_epochs={"mlp": 2, "transformer": 2},
    timing_images=12,
    sheet_images=24,
)

# The small models. GPT-2: 4 layers of width 128 over a word-level vocabulary (clipcap.demo.pretrain
# says why); the mappers are the paper's with prefix 10, the transformer mapper has 4 layers.
GPT2_SIZES = dict(n_positions=64, n_embd=128, n_layer=4, n_head=4)
TRAIN_RECIPES: dict[str, dict[str, Any]] = {
    # A small model learns in minutes with a larger step than the paper's 2e-5 for GPT-2 small.
    "mlp": dict(lr=2e-3, warmup_steps=100, batch_size=64, dropout=0.0),
    "transformer": dict(lr=2e-3, warmup_steps=100, batch_size=64, mapper_layers=4, clip_length=10),
}


def run_demo(
    out: str | Path,
    *,
    quick: bool = False,
    variants: Sequence[str] = VARIANTS,
    seed: int = 0,
    say: Say | None = None,
) -> dict[str, Any]:
    """Run the demo into ``out``; returns the report (also written to ``out/report.json``)."""
    variants = _checked_variants(variants)
    import torch

    out = _output_directory(out)
    plan = QUICK if quick else FULL
    say = say or _print
    clock = _Stages(say)
    torch.manual_seed(seed)
    n_stages = 5 + 2 * len(variants)

    with clock.stage(
        "synthesise",
        f"[1/{n_stages}] synthesising {plan.n_train + plan.n_val + plan.n_test} captioned images",
    ):
        data = _synthesise(out / "data", plan, seed)

    with clock.stage(
        "pretrain_clip", f"[2/{n_stages}] pre-training a small CLIP (open_clip, {plan.clip_steps} steps)"
    ):
        encoder, clip_files = _pretrain_clip(out / "clip", data, plan, seed)

    with clock.stage("embed", f"[3/{n_stages}] clipcap embed: CLIP embeddings of every image"):
        embeddings = _embed(out / "embeddings", data, encoder)

    with clock.stage("pretrain_gpt2", f"[4/{n_stages}] pre-training a small GPT-2 on the training captions"):
        gpt2_dir, perplexity = _pretrain_gpt2(out / "gpt2", data, plan, seed)

    results = _train_and_export(variants, plan, clock, n_stages, out, embeddings, gpt2_dir, encoder, seed)
    n = 5 + 2 * len(variants)

    with clock.stage(
        "caption_and_score", f"[{n}/{n_stages}] captioning the {plan.n_test} held-out images; scores, timings"
    ):
        test = [r for r in _records(data) if r["split"] == "test"]
        rows = [_measure(v, results[v], test, encoder, plan) for v in variants]

    sheet = _contact_sheet(out / "contact-sheet.png", test[: plan.sheet_images], rows, data.parent)
    for row in rows:  # the captions behind the numbers, as `clipcap eval --predictions` writes them
        row["predictions"] = str(_write_predictions(out / f"predictions-{row['variant']}.jsonl", test, row))
    report = {
        "variants": [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows],
        "mode": "quick" if quick else "full",
        "seconds": round(clock.total, 1),
        "stages_s": clock.seconds,
        "machine": _machine(),
        "plan": asdict(plan),
        "base_models": {
            "clip": {"config": str(clip_files[0]), "weights": str(clip_files[1])},
            "gpt2": {"dir": str(gpt2_dir), **GPT2_SIZES, "val_perplexity": round(perplexity, 3)},
        },
        "contact_sheet": str(sheet),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    say("\n" + summary_table(report))
    say(f"\nreport: {out / 'report.json'}   contact sheet: {sheet}   bundles: {out}/bundle-*")
    return report


# --------------------------------------------------------------------------------------------------
# The stages


def _checked_variants(variants: Sequence[str]) -> tuple[str, ...]:
    variants = tuple(variants)
    if not variants or any(v not in VARIANTS for v in variants):
        raise OptionsError(
            f"variants must be among {', '.join(VARIANTS)}, got {', '.join(variants) or 'none'}"
        )
    return variants


def _output_directory(out: str | Path) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OptionsError(f"{out}: exists and is not a directory; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _train_and_export(
    variants: tuple[str, ...],
    plan: DemoPlan,
    clock: _Stages,
    n_stages: int,
    out: Path,
    embeddings: Path,
    gpt2_dir: Path,
    encoder,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """Stages 5 onwards, two per variant: clipcap train, then a verified fp32 bundle of the model."""
    results: dict[str, dict[str, Any]] = {}
    n = 5
    for variant in variants:
        epochs = plan.train_epochs[variant]
        with clock.stage(
            f"train_{variant}", f"[{n}/{n_stages}] clipcap train --variant {variant} ({epochs} epochs)"
        ):
            trained = _train(variant, epochs, embeddings, gpt2_dir, out / f"train-{variant}", seed)
        with clock.stage(
            f"export_{variant}",
            f"[{n + 1}/{n_stages}] clipcap export: a verified fp32 bundle of the {variant} model",
        ):
            bundle = _export(trained.model, encoder, gpt2_dir, out / f"bundle-{variant}")
        results[variant] = {"trained": trained, "bundle": bundle}
        n += 2
    return results


def _synthesise(directory: Path, plan: DemoPlan, seed: int) -> Path:
    from clipcap.demo.synthetic import write_dataset

    return write_dataset(directory, plan.n_train, plan.n_val, plan.n_test, seed=seed)


def _records(captions_file: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in captions_file.read_text().splitlines() if line.strip()]


def _pretrain_clip(directory: Path, captions_file: Path, plan: DemoPlan, seed: int):
    import torch

    from clipcap.config import Preprocessing
    from clipcap.demo.pretrain import DEMO_CLIP_NAME, demo_clip_config, pretrain_clip, save_clip
    from clipcap.demo.synthetic import IMAGE_SIZE
    from clipcap.models.clip import open_clip_encoder
    from clipcap.runtime.images import load_image
    from clipcap.runtime.preprocess import preprocess

    train = [r for r in _records(captions_file) if r["split"] == "train"]
    images = [load_image(captions_file.parent / r["image"]) for r in train]
    pixels = torch.from_numpy(preprocess(images, Preprocessing(IMAGE_SIZE)))
    config = demo_clip_config(IMAGE_SIZE)
    with _bar(plan.clip_steps, "CLIP") as bar:
        model = pretrain_clip(
            pixels, [r["captions"][0] for r in train], config, steps=plan.clip_steps, seed=seed, progress=bar
        )
    files = save_clip(model, config, directory)
    return open_clip_encoder(DEMO_CLIP_NAME, files[1], model_config=files[0], quick_gelu=False), files


def _embed(directory: Path, captions_file: Path, encoder) -> Path:
    from clipcap.data.datasets import read_dataset
    from clipcap.data.embed import embed_dataset

    examples = read_dataset(captions_file).examples
    embed_dataset(
        examples, encoder, directory, progress=False, force=True, source={"demo": str(captions_file)}
    )
    return directory


def _pretrain_gpt2(directory: Path, captions_file: Path, plan: DemoPlan, seed: int) -> tuple[Path, float]:
    from clipcap.config import GPT2Config
    from clipcap.demo.pretrain import build_word_tokenizer, heldout_perplexity, pretrain_gpt2, save_hf_gpt2

    records = _records(captions_file)
    documents = [r["captions"] for r in records if r["split"] == "train"]
    held_out = [r["captions"] for r in records if r["split"] == "val"]
    tokenizer = build_word_tokenizer([c for d in documents for c in d])
    config = GPT2Config(vocab_size=tokenizer.get_vocab_size(), **GPT2_SIZES)
    with _bar(plan.lm_steps, "GPT-2") as bar:
        model = pretrain_gpt2(tokenizer, documents, config, steps=plan.lm_steps, seed=seed, progress=bar)
    return save_hf_gpt2(model, tokenizer, directory), heldout_perplexity(model, tokenizer, held_out)


def _train(variant: str, epochs: int, embeddings: Path, gpt2_dir: Path, out: Path, seed: int):
    import shutil

    from clipcap.train.loop import train
    from clipcap.train.options import TrainOptions

    shutil.rmtree(out, ignore_errors=True)  # a rerun of the demo starts its training afresh
    options = TrainOptions(variant=variant, epochs=epochs, seed=seed, **TRAIN_RECIPES[variant])
    return train(options, embeddings, gpt2=gpt2_dir, out=out, tokenizer=gpt2_dir / "tokenizer.json")


def _export(model, encoder, gpt2_dir: Path, out: Path) -> Path:
    from clipcap.export.bundle import export_bundle

    export_bundle(
        model, encoder, out, force=True, tokenizer=gpt2_dir / "tokenizer.json", progress=lambda _: None
    )
    return out


def _measure(variant: str, result: dict[str, Any], test: list[dict[str, Any]], encoder, plan: DemoPlan):
    """Caption the held-out images with the runtime (and PyTorch), score them, time both one by one."""
    import torch

    from clipcap.eval.metrics import exact_match, score_captions
    from clipcap.models.generate import generate
    from clipcap.runtime import Captioner, load_image
    from clipcap.runtime.preprocess import preprocess

    bundle, trained = result["bundle"], result["trained"]
    root = bundle.parent / "data"
    paths = [root / r["image"] for r in test]
    references = [r["captions"] for r in test]
    captioner = Captioner(bundle)
    captions = captioner.caption(paths, batch_size=64)
    predictions = [c.text for c in captions]
    scores = score_captions(predictions, references, java=False)

    model = trained.model.eval()
    options = model.config.generation
    tokenizer = captioner.tokenizer

    def torch_caption(path: Path) -> list[int]:
        pixels = torch.from_numpy(preprocess([load_image(path)], encoder.spec.preprocessing))
        with torch.inference_mode():
            return generate(model, encoder(pixels), options)[0].tokens

    with torch.inference_mode():
        pixels = torch.from_numpy(preprocess([load_image(p) for p in paths], encoder.spec.preprocessing))
        reference_tokens = [g.tokens for g in generate(model, encoder(pixels), options)]
    identical = sum(c.tokens == t for c, t in zip(captions, reference_tokens, strict=True)) / len(paths)

    timed = paths[: plan.timing_images]
    ort_ms = _latencies(lambda p: captioner.caption(p), timed)
    torch_ms = _latencies(torch_caption, timed)
    files = json.loads((bundle / "clipcap.json").read_text())["files"]
    return {
        "variant": variant,
        "exact_match": round(exact_match(predictions, references), 4),
        "bleu4": _round(scores.bleu4),
        "cider": _round(scores.cider),
        "bleu1": _round(scores.bleu1),
        "rouge_l": _round(scores.rouge_l),
        "n_heldout": len(paths),
        "ort_ms_p50": round(statistics.median(ort_ms), 2),
        "torch_ms_p50": round(statistics.median(torch_ms), 2),
        "bundle_mb": round(sum(f["bytes"] for f in files.values()) / 2**20, 2),
        "identical_to_pytorch": round(identical, 4),
        "train_steps": trained.step,
        "val_loss": _round(trained.val_loss),
        "checkpoint": str(trained.out),
        "bundle": str(bundle),
        "_predictions": predictions,
        "_tokenizer": tokenizer,
    }


def _write_predictions(path: Path, test: list[dict[str, Any]], row: dict[str, Any]) -> Path:
    from clipcap.eval.metrics import normalize_caption

    lines = []
    for record, caption in zip(test, row["_predictions"], strict=True):
        right = normalize_caption(caption) in {normalize_caption(c) for c in record["captions"]}
        entry = {
            "image": record["image"],
            "caption": caption,
            "exact": right,
            "references": record["captions"],
        }
        lines.append(json.dumps(entry) + "\n")
    path.write_text("".join(lines))
    return path


def _latencies(caption: Callable[[Path], Any], paths: Sequence[Path]) -> list[float]:
    """Per-image wall time in ms, one image at a time (load, preprocess, encode, decode), after a warm-up."""
    for p in paths[:2]:
        caption(p)
    times = []
    for p in paths:
        start = time.perf_counter()
        caption(p)
        times.append((time.perf_counter() - start) * 1000)
    return times


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)
