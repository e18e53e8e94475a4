"""The ``clipcap`` command line.

Importing this module is torch-free: each subcommand imports what it needs when it runs, so
``clipcap --help`` and the runtime's commands work in the plain (runtime-only) install.
Errors the user can fix end as one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

from clipcap import __version__
from clipcap.errors import ClipCapError, ConfigError

EPILOG = """\
Checkpoint formats (detected from the weights): the seed's (mapping.proj1/proj2), the
original MLP (clip_project.model.0/2), linear (clip_project.weight) and Transformer
(clip_project.linear + prefix_const) pickles, and this project's safetensors + config.json.

Run `clipcap COMMAND --help` for each command's options.
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="clipcap: %(levelname)s: %(message)s")
    if not hasattr(args, "run"):
        parser.print_help()
        return 0
    try:
        return args.run(args)
    except ClipCapError as e:  # every error we raise on purpose names its input and the fix
        print(f"clipcap {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"clipcap {args.command}: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipcap",
        description="Export ClipCap image captioners to ONNX and caption with ONNX Runtime.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"clipcap-onnx {__version__}")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")

    info = _command(commands, "info", cmd_info, "show what a checkpoint holds: format, sizes, defaults")
    info.add_argument("checkpoint", help="a checkpoint file (.pt/.pth/.safetensors) or directory")
    info.add_argument("--json", action="store_true", help="print the full config as JSON")
    _add_checkpoint_settings(info)

    convert = _command(
        commands,
        "convert",
        cmd_convert,
        "convert any checkpoint to this project's format (safetensors + config.json)",
        description=(
            "Read a checkpoint of any supported format and write it as model.safetensors + "
            "config.json: no pickle, and the settings the weights cannot tell (prefix "
            "normalisation, CLIP, generation defaults) recorded with it."
        ),
    )
    convert.add_argument("checkpoint", help="a checkpoint file (.pt/.pth/.safetensors) or directory")
    convert.add_argument("--out", required=True, metavar="DIR", help="directory to write (made if missing)")
    _add_checkpoint_settings(convert)

    caption = _command(
        commands,
        "caption",
        cmd_caption,
        "caption images with an exported bundle (ONNX Runtime; no PyTorch needed)",
        description=(
            "Caption images (or CLIP embeddings) with a bundle from `clipcap export`. Decoding defaults "
            "come from the bundle: each source's checkpoint generates as its source did. Every input "
            "is answered in order; one that cannot be read gets an error line and the others are still "
            "captioned; the exit status is 1 when any input failed."
        ),
    )
    caption.add_argument("images", nargs="*", metavar="IMAGE", help="image files (JPEG, PNG, WebP, ...)")
    caption.add_argument("--bundle", required=True, metavar="DIR", help="the bundle directory")
    caption.add_argument(
        "--embeddings", metavar="FILE.npy", help="caption CLIP embeddings [N, D] instead of images"
    )
    d = _add_decoding_flags(caption.add_argument_group("decoding (default: the bundle's)"))
    d.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="STRING",
        help="also stop at any token whose text contains STRING (repeatable)",
    )
    r = caption.add_argument_group("running")
    r.add_argument("--provider", choices=("cpu", "cuda"), default="cpu")
    r.add_argument("--fallback-cpu", action="store_true", help="run on the CPU when CUDA is unavailable")
    r.add_argument("--threads", type=int, metavar="N", help="ONNX Runtime threads (default: all cores)")
    r.add_argument("--batch-size", type=int, default=16, metavar="N", help="images per batch (default 16)")
    r.add_argument("--json", action="store_true", help="one JSON object per input, per line")

    export = _command(
        commands,
        "export",
        cmd_export,
        "export a checkpoint to a verified ONNX bundle for clipcap.runtime",
        description=(
            "Trace the CLIP image encoder, the mapper and GPT-2 (with its KV cache) to ONNX, check every "
            "graph and greedy captions against PyTorch, and write the bundle directory: the graphs, "
            "tokenizer.json and the clipcap.json manifest. Nothing is written unless it all passes."
        ),
        epilog=EXPORT_EPILOG,
    )
    export.add_argument("checkpoint", help="a checkpoint file (.pt/.pth/.safetensors) or directory")
    export.add_argument("-o", "--out", required=True, metavar="DIR", help="the bundle directory to write")
    clip = export.add_argument_group("CLIP (default: the one the checkpoint's width implies)")
    clip.add_argument(
        "--clip",
        metavar="MODEL[:TAG] | hf:ID_OR_DIR",
        help="open_clip architecture with an optional pretrained tag (ViT-B-32:openai, RN50x4:openai), "
        "or a Hugging Face CLIP hub id or local directory (hf:openai/clip-vit-base-patch32)",
    )
    clip.add_argument(
        "--clip-weights",
        metavar="FILE",
        help="local open_clip weights for --clip MODEL (a state dict, or OpenAI's TorchScript .pt): "
        "works offline. OpenAI weights as a plain state dict need a -quickgelu MODEL",
    )
    clip.add_argument(
        "--clip-config", metavar="JSON", help="open_clip model config for an architecture it lacks"
    )
    _add_checkpoint_settings(export)
    out = export.add_argument_group("output")
    out.add_argument(
        "--tokenizer",
        metavar="FILE_OR_DIR",
        help="tokenizer (default: tokenizer.json beside the checkpoint, as `clipcap train` writes it, "
        "else the packaged GPT-2 one)",
    )
    out.add_argument(
        "--precision",
        choices=("fp32", "fp16", "int8", "int4"),
        default="fp32",
        help="fp32 (default, exact), fp16 (for CUDA), int8 (dynamic MatMul quantization, for CPU), "
        "int4 (weight-only MatMulNBits, for CPU)",
    )
    out.add_argument("--opset", type=int, default=18, metavar="N", help="ONNX opset (default 18)")
    out.add_argument("--no-verify", dest="verify", action="store_false", help="skip checking against PyTorch")
    out.add_argument("--force", action="store_true", help="replace an existing bundle")

    embed = _command(
        commands,
        "embed",
        cmd_embed,
        "compute the CLIP image embeddings of a captioned image set, for training and evaluation",
        description=(
            "Embed every image of a COCO, Conceptual Captions or plain-folder dataset with CLIP, "
            "preprocessed exactly as the ONNX runtime does, and write the embedding set to --out: "
            "embeddings.safetensors, captions.jsonl and meta.json (no pickle), plus skipped.jsonl "
            "listing the images that were missing or unreadable (skipped and counted, never fatal). "
            "The work is saved in shards as it goes: after an interruption, the same command resumes. "
            "CLIP weights can be a local file (--clip-weights) or directory (--clip hf:DIR), so it "
            "works offline."
        ),
        epilog=EMBED_EPILOG,
    )
    embed.add_argument(
        "data",
        metavar="DATA",
        help="the dataset file: COCO .json, Conceptual Captions .tsv, or a captions .jsonl / .csv "
        "(or a folder holding captions.jsonl or captions.csv)",
    )
    embed.add_argument(
        "-o", "--out", required=True, metavar="DIR", help="the embedding-set directory to write"
    )
    embed.add_argument(
        "--images",
        metavar="DIR",
        help="the image root (default: the dataset file's folder); COCO: the folder holding train2014/ "
        "and val2014/",
    )
    embed.add_argument(
        "--format",
        choices=("auto", "coco", "conceptual", "folder"),
        default="auto",
        help="dataset format (default: from the extension: .json coco, .tsv conceptual, .jsonl/.csv folder)",
    )
    embed.add_argument(
        "--split", metavar="NAME", help="the split of every Conceptual Captions row (default: train)"
    )
    embed_clip = embed.add_argument_group("CLIP")
    embed_clip.add_argument(
        "--clip",
        required=True,
        metavar="MODEL[:TAG] | hf:ID_OR_DIR",
        help="open_clip architecture with an optional pretrained tag (ViT-B-32:openai, the original "
        "ClipCap's), or a Hugging Face CLIP hub id or local directory (hf:openai/clip-vit-base-patch32)",
    )
    embed_clip.add_argument(
        "--clip-weights",
        metavar="FILE",
        help="local open_clip weights for --clip MODEL (a state dict, or OpenAI's TorchScript .pt): "
        "works offline. OpenAI weights as a plain state dict need a -quickgelu MODEL",
    )
    embed_clip.add_argument(
        "--clip-config", metavar="JSON", help="open_clip model config for an architecture it lacks"
    )
    embed_run = embed.add_argument_group("running")
    embed_run.add_argument("--device", default="cpu", metavar="DEVICE", help="cpu (default), cuda, cuda:N")
    embed_run.add_argument(
        "--batch-size", type=int, default=64, metavar="N", help="images per batch (default 64)"
    )
    embed_run.add_argument(
        "--workers", type=int, metavar="N", help="threads loading images (default: up to 8; 0: none)"
    )
    embed_run.add_argument(
        "--shard-size",
        type=int,
        default=1024,
        metavar="N",
        help="images saved per resumable shard (default 1024)",
    )
    embed_run.add_argument(
        "--limit", type=int, metavar="N", help="only the first N examples, for a quick try"
    )
    embed_run.add_argument(
        "--force",
        action="store_true",
        help="start over: discard an interrupted run and replace a complete set",
    )
    evaluation = _command(
        commands,
        "eval",
        cmd_eval,
        "caption an embedding set and score it: BLEU, METEOR, ROUGE-L, CIDEr-D, SPICE",
        description=(
            "Caption the images of an embedding set (from `clipcap embed`) with a bundle (ONNX Runtime) "
            "or a checkpoint (PyTorch) and score the captions against the set's reference captions with "
            "pycocoevalcap, as the COCO caption benchmark does: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D "
            "(what coco-caption and papers call CIDEr) and SPICE, plus exact match. METEOR and SPICE "
            "need Java; so does coco-caption's tokenizer, and without Java a pure-Python imitation "
            "tokenises instead (close scores, not identical; the output says which). SPICE also needs "
            "the Stanford CoreNLP models, which are never downloaded here: without them it is skipped, "
            "with the reason. Prints the scores x100, as papers print them."
        ),
        epilog=EVAL_EPILOG,
    )
    ev_source = evaluation.add_argument_group("what to evaluate (one of the two)")
    ev_source.add_argument("--bundle", metavar="DIR", help="a bundle from `clipcap export` (ONNX Runtime)")
    ev_source.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="a checkpoint (PyTorch, the reference decoder); a pickled original that needs settings "
        "(--normalize-prefix, ...) is best converted first with `clipcap convert`",
    )
    ev_data = evaluation.add_argument_group("the data")
    ev_data.add_argument("--data", metavar="EMBED_DIR", help="an embedding set from `clipcap embed`")
    ev_data.add_argument(
        "--split", default="test", metavar="NAME", help="the split to caption (default test; all: every row)"
    )
    ev_data.add_argument("--limit", type=int, metavar="N", help="only the split's first N images")
    _add_decoding_flags(evaluation.add_argument_group("decoding (default: the bundle's or checkpoint's)"))
    ev_run = evaluation.add_argument_group("running")
    ev_run.add_argument(
        "--provider", choices=("cpu", "cuda"), help="ONNX Runtime's, for --bundle (default cpu)"
    )
    ev_run.add_argument("--device", metavar="DEVICE", help="PyTorch's, for --checkpoint: cpu (default), cuda")
    ev_run.add_argument(
        "--tokenizer",
        metavar="FILE_OR_DIR",
        help="for --checkpoint (default: tokenizer.json beside the checkpoint, else GPT-2's)",
    )
    ev_run.add_argument(
        "--batch-size", type=int, default=64, metavar="N", help="images per batch (default 64)"
    )
    ev_out = evaluation.add_argument_group("scoring and output")
    ev_out.add_argument(
        "--no-java", action="store_true", help="never run Java: no METEOR or SPICE, the Python tokenizer"
    )
    ev_out.add_argument(
        "--predictions", metavar="FILE.jsonl", help="write each image's caption and references, one per line"
    )
    ev_out.add_argument("--json", metavar="FILE", help="write the scores, source, data and decoding options")

    from clipcap.train.options import VARIANTS, TrainOptions  # torch-free

    trainer = _command(
        commands,
        "train",
        cmd_train,
        "train a ClipCap model on an embedding set (the paper's recipe; resumable; torchrun for GPUs)",
        description=(
            "Train a ClipCap mapper (and, for --variant mlp, GPT-2) on the CLIP embeddings and captions "
            "of an embedding set from `clipcap embed`: AdamW, linear warm-up then linear decay, the "
            "paper's defaults. Captions end with GPT-2's EOS, so the model learns to stop. Writes "
            "resumable checkpoints and, at the end, a model `clipcap export` takes."
        ),
        epilog=TRAIN_EPILOG,
    )
    tr_io = trainer.add_argument_group("data, model and output")
    tr_io.add_argument(
        "--data", required=True, metavar="EMBED_DIR", help="an embedding set from `clipcap embed`"
    )
    tr_io.add_argument(
        "--gpt2",
        metavar="NAME_OR_DIR_OR_CHECKPOINT",
        help="GPT-2 to start from: a Hugging Face GPT-2 directory (config.json + model.safetensors), a "
        "ClipCap checkpoint (its GPT-2, e.g. coco_weights.pt), or a hub name (gpt2; needs the network). "
        "Required unless resuming",
    )
    tr_io.add_argument("-o", "--out", required=True, metavar="DIR", help="output directory (made if missing)")
    tr_io.add_argument(
        "--tokenizer", metavar="FILE_OR_DIR", help="the captions' tokenizer (default: the packaged GPT-2 one)"
    )
    tr_io.add_argument(
        "--resume",
        metavar="auto|CHECKPOINT_DIR",
        help="auto: continue from the newest checkpoint in --out (fresh when none); or a checkpoint",
    )
    tr_opts = trainer.add_argument_group("training (defaults: the paper's)")
    types = {"int": int, "int | None": int, "float": float, "str": str, "str | None": str}
    for f in dataclasses.fields(TrainOptions):
        flag, text = "--" + f.name.replace("_", "-"), f.metadata["help"]
        if f.name == "variant":
            tr_opts.add_argument(flag, required=True, choices=VARIANTS, help=text)
        elif f.type == "bool | None":
            tr_opts.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            shown = "" if f.default is None else f" (default: {f.default})"
            kind = types[f.type]
            metavar = {int: "N", float: "X", str: "NAME"}[kind]
            tr_opts.add_argument(flag, type=kind, default=f.default, metavar=metavar, help=text + shown)
    tr_run = trainer.add_argument_group("running")
    tr_run.add_argument("--device", default="cpu", metavar="DEVICE", help="cpu (default), cuda, cuda:N")
    tr_run.add_argument("--no-progress", dest="progress", action="store_false", help="no progress output")

    demo = _command(
        commands,
        "demo",
        cmd_demo,
        "the whole chain offline: train small ClipCap models, export, caption, score, time",
        description=(
            "Synthesise a captioned image set of coloured shapes, pre-train a small CLIP (open_clip) and a "
            "small GPT-2 on it (no weights can be downloaded), then run the real commands' code: embed, "
            "train both ClipCap variants, export verified fp32 bundles, caption the held-out images with "
            "the ONNX runtime and score them. Writes OUT/report.json, OUT/contact-sheet.png and the "
            "bundles. About 5 minutes on 2 CPU cores; --quick about 90 s."
        ),
        epilog=DEMO_EPILOG,
    )
    demo.add_argument("--out", default="demo-out", metavar="DIR", help="output directory (default demo-out)")
    demo.add_argument("--quick", action="store_true", help="fewer images and steps (~90 s, lower accuracy)")
    demo.add_argument(
        "--variant",
        choices=("mlp", "transformer", "both"),
        default="both",
        help="mlp: MLP mapper + GPT-2 fine-tuned; transformer: transformer mapper, GPT-2 frozen "
        "(default: both)",
    )
    demo.add_argument(
        "--seed", type=int, default=0, metavar="S", help="seeds the data and every model (default 0)"
    )

    bench = _command(
        commands,
        "bench",
        cmd_bench,
        "benchmark the runtime against PyTorch, the original loop and optimum, on the same weights",
        description=(
            "Caption the same pictures with every backend on the same full-size random-weight models "
            "(GPT-2 small + CLIP ViT-B/32; an MLP mapper with prefix 10 and a transformer mapper with "
            "prefix 40), exactly --new-tokens greedy tokens each: latency per caption (p50/p90/p99, by "
            "stage) at batch 1, throughput at each batch size, each decode step against the memory "
            "bandwidth's bound (the roofline), cold start, and token agreement between backends. "
            "Writes JSON, markdown and a plot; models and bundles are cached in --cache."
        ),
        epilog=BENCH_EPILOG,
    )
    bench.add_argument(
        "--quick",
        action="store_true",
        help="a tiny model (mlp), batch sizes 1,4, 8 tokens, 5 runs: does it all run? (about a minute)",
    )
    b_out = bench.add_argument_group("output")
    b_out.add_argument("--out", metavar="FILE.json", help="the report as JSON")
    b_out.add_argument("--markdown", metavar="FILE.md", help="the report as markdown, targets included")
    b_out.add_argument("--plot", metavar="FILE.png", help="latency by stage and throughput (matplotlib)")
    b_what = bench.add_argument_group("what to measure")
    b_what.add_argument(
        "--backends",
        metavar="LIST",
        help="comma-separated: onnxruntime, pytorch, pytorch-nocache, optimum (default: all)",
    )
    b_what.add_argument(
        "--precisions",
        metavar="LIST",
        help="the runtime's: fp32,int8,int4 on cpu (default), fp32,fp16 on cuda",
    )
    b_what.add_argument("--batch-sizes", metavar="LIST", help="default 1,4,16,64 (--quick: 1,4)")
    b_what.add_argument(
        "--new-tokens", type=int, metavar="N", help="tokens per caption (default 20, --quick 8)"
    )
    b_what.add_argument(
        "--runs", type=int, metavar="N", help="timed runs at batch 1 after warm-up (default 20, --quick 5)"
    )
    b_what.add_argument("--variants", metavar="LIST", help="mlp, transformer (default: both; --quick: mlp)")
    trained = b_what.add_mutually_exclusive_group()
    trained.add_argument(
        "--trained",
        metavar="DIR",
        help="a `clipcap demo` folder: its trained models are exported at each quantized precision and "
        "their captions of its held-out pictures compared with fp32 (default, without --quick: the "
        "cache's demo, made on first use, about 4 minutes)",
    )
    trained.add_argument(
        "--no-trained", action="store_true", help="skip that check of quantized captions on trained models"
    )
    b_run = bench.add_argument_group("running")
    b_run.add_argument(
        "--threads", type=int, metavar="N", help="PyTorch and ONNX Runtime threads (default: all cores)"
    )
    b_run.add_argument("--provider", choices=("cpu", "cuda"), default="cpu")
    b_run.add_argument(
        "--cache",
        metavar="DIR",
        help="exported bundles and model files, keyed by config (default ~/.cache/clipcap-onnx/bench)",
    )
    b_run.add_argument(
        "--optimum-python",
        metavar="PATH",
        help="the optimum venv's python (default benchmarks/.venv-optimum/bin/python)",
    )
    return parser


EXPORT_EPILOG = """
Offline: every checkpoint holds GPT-2's weights and the GPT-2 tokenizer ships with this
package, so only CLIP may need a download; a local file avoids it:
  clipcap export coco_weights.pt -o coco-bundle \\
      --clip ViT-B-32-quickgelu --clip-weights vit-b-32.pt

The originals: coco_weights.pt / conceptual_weights.pt use CLIP ViT-B/32 (openai); the
Transformer checkpoint transformer_weights.pt uses RN50x4 (openai) with --normalize-prefix;
the seed uses hf:openai/clip-vit-base-patch32.
"""

EMBED_EPILOG = """
Examples, with the original ClipCap's CLIP (ViT-B/32, OpenAI's weights):
  # COCO, Karpathy's split (restval counts as train); coco/ holds train2014/ and val2014/
  clipcap embed dataset_coco.json --images coco --out coco-embeds --clip ViT-B-32:openai
  # Conceptual Captions: Google's TSV, images downloaded as cc3m/00000000.jpg, 00000001.jpg, ...
  clipcap embed Train_GCC-training.tsv --images cc3m --out cc3m-embeds \\
      --clip ViT-B-32:openai --device cuda --batch-size 256
  # offline: OpenAI's ViT-B-32.pt as a local file
  clipcap embed dataset_coco.json --images coco --out coco-embeds \\
      --clip ViT-B-32-quickgelu --clip-weights ViT-B-32.pt
  # a quick look first: the first 100 examples
  clipcap embed dataset_coco.json --images coco --out try --clip ViT-B-32:openai --limit 100

Formats (--format auto goes by the extension):
  coco        Karpathy's dataset_coco.json, or ClipCap's train_caption.json (COCO ids,
              found under train2014/ or val2014/)
  conceptual  caption<TAB>url lines, no header; row i (from 0) is the image {i:08d}.jpg
              (or .jpeg/.png/.webp); an optional third column names the file instead
  folder      captions.jsonl: {"image": "a.jpg", "caption": "..."} or "captions": [...],
              optional "split" and "image_id"; or a CSV with image,caption[,split,image_id]
              columns. Paths are relative to the captions file (or --images).

Interrupted? Run the same command again: finished shards are kept. --force starts over.
"""


def _command(commands, name: str, run: Callable, help: str, description: str | None = None, epilog=None):
    p = commands.add_parser(
        name,
        help=help,
        description=textwrap.fill(description or help, 88),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(run=run)
    return p


def _add_decoding_flags(group):
    """The decoding options' flags, shared by `caption` and `eval` (read back by _decoding_overrides)."""
    group.add_argument("--strategy", choices=("greedy", "top-k", "top-p", "beam"))
    group.add_argument("--top-k", type=int, metavar="K")
    group.add_argument("--top-p", type=float, metavar="P")
    group.add_argument("--temperature", type=float, metavar="T")
    group.add_argument("--beam-size", type=int, metavar="N")
    group.add_argument(
        "--length-penalty", type=float, metavar="A", help="beam ranking: sum(log p) / length ** A"
    )
    group.add_argument("--max-new-tokens", type=int, metavar="N")
    group.add_argument("--min-new-tokens", type=int, metavar="N")
    group.add_argument("--seed", type=int, metavar="S", help="makes top-k / top-p sampling reproducible")
    return group


def _decoding_overrides(args) -> dict:
    """The decoding options the user gave on the command line, as DecodingOptions field names."""
    given = {
        "strategy": args.strategy and args.strategy.replace("-", "_"),
        "top_k": args.top_k,
        "top_p": args.top_p,
        "temperature": args.temperature,
        "beam_size": args.beam_size,
        "length_penalty": args.length_penalty,
        "max_new_tokens": args.max_new_tokens,
        "min_new_tokens": args.min_new_tokens,
        "seed": args.seed,
    }
    return {name: value for name, value in given.items() if value is not None}


def _add_checkpoint_settings(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("the checkpoint, and what its weights cannot tell")
    g.add_argument(
        "--format",
        choices=("auto", "seed", "original", "clipcap"),
        default="auto",
        help="expected checkpoint format (default: detect it from the weights; a mismatch is an error)",
    )
    g.add_argument(
        "--normalize-prefix",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="L2-normalise the CLIP embedding before the mapper (default: off, the original training "
        "default; the released transformer_weights.pt (CLIP RN50x4) needs it on)",
    )
    g.add_argument(
        "--gpt2-config",
        metavar="NAME_OR_JSON",
        help="GPT-2's head count is not in the weights: gpt2, gpt2-medium, gpt2-large, gpt2-xl, "
        "distilgpt2, or a GPT-2 config.json (default: from the width, for the standard sizes)",
    )
    g.add_argument("--mapper-heads", type=int, metavar="N", help="transformer mapper heads (default 8)")


def _load(args):
    from clipcap.models.checkpoints import load_checkpoint

    model = load_checkpoint(
        args.checkpoint,
        normalize_prefix=args.normalize_prefix,
        n_head=_gpt2_heads(args.gpt2_config),
        mapper_heads=args.mapper_heads,
    )
    found = model.config.source_format
    family = {"clipcap-onnx": "clipcap"}.get(found, found.split("-")[0])
    if args.format not in ("auto", family):
        raise ConfigError(f"{args.checkpoint}: --format {args.format} given, but the weights are {found}")
    return model


GPT2_HEADS = {"gpt2": 12, "distilgpt2": 12, "gpt2-medium": 16, "gpt2-large": 20, "gpt2-xl": 25}


def _gpt2_heads(value: str | None) -> int | None:
    if value is None:
        return None
    if value in GPT2_HEADS:
        return GPT2_HEADS[value]
    path = Path(value)
    if not path.is_file():
        raise ConfigError(
            f"--gpt2-config {value!r}: neither a GPT-2 name ({', '.join(GPT2_HEADS)}) nor a config.json file"
        )
    try:
        config = json.loads(path.read_text())
        return int(config.get("n_head", config.get("num_attention_heads")))
    except (OSError, ValueError, TypeError, AttributeError):
        raise ConfigError(f"{path}: not a GPT-2 config.json with n_head") from None


def cmd_info(args) -> int:
    _require_torch()
    from clipcap.models.checkpoints import describe
    from clipcap.models.gpt2 import num_parameters

    model = _load(args)
    if args.json:
        print(model.config.to_json(), end="")
        return 0
    facts = describe(model.config)
    facts["parameters"] = f"{num_parameters(model) / 1e6:.1f} M"
    width = max(map(len, facts))
    for key, value in facts.items():
        print(f"{key:<{width}}  {'-' if value is None else value}")
    return 0


def cmd_convert(args) -> int:
    _require_torch()
    from clipcap.models.checkpoints import save_checkpoint

    model = _load(args)
    out = save_checkpoint(model, args.out)
    print(f"wrote {out}/model.safetensors and config.json ({model.config.source_format} -> clipcap-onnx)")
    return 0


def cmd_caption(args) -> int:
    import numpy as np

    from clipcap.runtime import Captioner, ImageError

    if bool(args.images) == bool(args.embeddings):
        raise ConfigError("give IMAGE paths or --embeddings FILE.npy (one of the two)")
    overrides = _decoding_overrides(args)
    captioner = Captioner(
        args.bundle, provider=args.provider, fallback_to_cpu=args.fallback_cpu, threads=args.threads
    )
    options = captioner.options(stop_strings=args.stop, **overrides)  # bad options fail here, before any work
    if args.embeddings:
        try:
            embeddings = np.load(args.embeddings, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ConfigError(f"{args.embeddings}: not a readable .npy array ({e})") from None
        names = [f"{args.embeddings}[{i}]" for i in range(len(embeddings))]
        results = captioner.caption_embeddings(embeddings, options, batch_size=args.batch_size)
    else:
        names = args.images
        results = captioner.caption(list(args.images), options, batch_size=args.batch_size, errors="return")
    failed = 0
    for name, result in zip(names, results, strict=True):
        if isinstance(result, ImageError):
            failed += 1
            if args.json:
                print(json.dumps({"input": name, "error": str(result)}), flush=True)
            else:
                print(f"clipcap caption: error: {result}", file=sys.stderr, flush=True)
        elif args.json:
            print(
                json.dumps(
                    {"input": name, "caption": result.text, "tokens": result.tokens, "score": result.score}
                )
            )
        else:
            print(f"{name}\t{result.text}")
    return 1 if failed else 0


def cmd_export(args) -> int:
    _require_torch()
    from clipcap.export.bundle import export_bundle

    model = _load(args)
    encoder = _encoder(args, model.config)
    manifest = export_bundle(
        model,
        encoder,
        args.out,
        precision=args.precision,
        opset=args.opset,
        verify=args.verify,
        force=args.force,
        tokenizer=args.tokenizer or _tokenizer_beside(args.checkpoint),
    )
    total = sum(f["bytes"] for f in manifest["files"].values())
    state = "verified" if manifest["verification"]["passed"] else "NOT verified (--no-verify)"
    print(f"{args.out}: {manifest['precision']} bundle, {total / 2**20:.1f} MiB, {state}")
    return 0


def _tokenizer_beside(checkpoint: str) -> Path | None:
    """`clipcap train` writes the captions' tokenizer.json beside the model: the export's default."""
    path = Path(checkpoint)
    found = (path if path.is_dir() else path.parent) / "tokenizer.json"
    return found if found.is_file() else None


def _encoder(args, config):
    """The CLIP image encoder the flags (or, by default, the checkpoint's config) name."""
    if args.clip is None and config.clip is None:
        raise ConfigError(
            f"the CLIP this checkpoint was trained on is unknown (its mapper takes "
            f"{config.mapper.clip_dim}-d embeddings): pass --clip MODEL[:TAG] or --clip hf:ID_OR_DIR"
        )
    return _clip_encoder(args, config.clip)


def _clip_encoder(args, default=None):
    """The CLIP image encoder that --clip, --clip-weights and --clip-config name.

    Without --clip, ``default`` (a ClipSpec, e.g. a checkpoint's), with --clip-weights replacing its
    weights; one of the two is needed.
    """
    from clipcap.models.clip import hf_clip_encoder, load_image_encoder, open_clip_encoder

    what = args.clip or (default and f"{default.model} ({default.pretrained})")
    # Absolute: the path is recorded in the embeddings' and then the checkpoint's CLIP spec, and
    # read again by later commands run from other directories.
    weights = str(Path(args.clip_weights).absolute()) if args.clip_weights else None
    try:
        if args.clip is None:
            if default is None:
                raise ConfigError("no CLIP named: pass --clip MODEL[:TAG] or --clip hf:ID_OR_DIR")
            spec = default
            if args.clip_weights:
                if spec.backend != "open_clip":
                    raise ConfigError("--clip-weights is for open_clip models; name one with --clip MODEL")
                spec = dataclasses.replace(spec, pretrained=weights)
            return load_image_encoder(spec, model_config=args.clip_config)
        if args.clip.startswith("hf:"):
            if weights:
                raise ConfigError(
                    "--clip-weights is for open_clip models; a Hugging Face CLIP is a directory"
                )
            local = Path(args.clip[3:])
            return hf_clip_encoder(local.absolute() if local.is_dir() else args.clip[3:])
        name, _, tag = args.clip.partition(":")
        if tag and args.clip_weights:
            raise ConfigError(
                f"--clip {args.clip} names a pretrained tag and --clip-weights a file: give one"
            )
        if not tag and not args.clip_weights:
            raise ConfigError(
                f"--clip {name}: name its weights, a tag ({name}:openai) or --clip-weights FILE"
            )
        return open_clip_encoder(name, weights or tag, model_config=args.clip_config)
    except ClipCapError:
        raise
    except Exception as e:  # downloads fail offline with whatever the hub client raises
        raise ConfigError(
            f"could not load CLIP {what}: {type(e).__name__}: {e}. Offline? Pass local weights with "
            "--clip MODEL --clip-weights FILE (open_clip) or --clip hf:LOCAL_DIR"
        ) from None


def cmd_embed(args) -> int:
    _require_torch()
    from clipcap.data.datasets import read_dataset
    from clipcap.data.embed import check_destination, embed_dataset

    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit {args.limit}: give a number of examples >= 1")
    data = read_dataset(args.data, images=args.images, format=args.format, split=args.split)
    if data.skipped:
        print(
            f"clipcap embed: skipped {data.skipped_count} dataset rows ({_counts(data.skipped)}), e.g.:\n  "
            + "\n  ".join(data.problems),
            file=sys.stderr,
        )
    examples = data.examples[: args.limit] if args.limit else data.examples
    if not examples:
        raise ConfigError(f"{args.data}: no usable rows (read as {data.format}); check the file and --format")
    check_destination(args.out, device=args.device, force=args.force)  # before the slow CLIP load
    encoder = _clip_encoder(args)
    source = {
        "dataset": str(args.data),
        "format": data.format,
        "images": args.images,
        "split": args.split,
        "limit": args.limit,
        "rows_skipped": data.skipped,
    }
    try:
        summary = embed_dataset(
            examples,
            encoder,
            args.out,
            batch_size=args.batch_size,
            shard_size=args.shard_size,
            device=args.device,
            source=source,
            force=args.force,
            workers=args.workers,
        )
    except KeyboardInterrupt as e:
        print(f"clipcap embed: {e or 'interrupted; run the same command again to resume'}", file=sys.stderr)
        return 130
    resumed = f" ({summary.resumed} done by an earlier run)" if summary.resumed else ""
    print(f"embedded {summary.count} of {len(examples)} images{resumed} in {summary.seconds:.1f} s")
    if summary.skipped:
        print(
            f"skipped {summary.skipped_count}: {_counts(summary.skipped)} (listed in {summary.skipped_file})"
        )
    print(f"wrote {summary.out_dir}/: embeddings.safetensors, captions.jsonl, meta.json")
    return 0


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in counts.items())


EVAL_EPILOG = """
Examples:
  clipcap eval --bundle coco-bundle --data coco-embeds            # Karpathy's test split
  clipcap eval --bundle coco-bundle --data coco-embeds --strategy beam --beam-size 5 \\
      --predictions preds.jsonl --json scores.json
  clipcap eval --checkpoint runs/coco --data coco-embeds --device cuda --limit 500
"""


def cmd_eval(args) -> int:
    from clipcap.eval.evaluate import evaluate

    if bool(args.bundle) == bool(args.checkpoint):
        raise ConfigError("give --bundle DIR or --checkpoint PATH (one of the two)")
    if not args.data:
        raise ConfigError("give --data EMBED_DIR: an embedding set from `clipcap embed`")
    if args.bundle and (args.device or args.tokenizer):
        raise ConfigError("--device and --tokenizer are for --checkpoint; a bundle runs on --provider")
    if args.checkpoint:
        if args.provider:
            raise ConfigError("--provider is for --bundle; a checkpoint runs on --device")
        _require_torch()
    overrides = _decoding_overrides(args)
    result = evaluate(
        args.bundle or args.checkpoint,
        args.data,
        kind="bundle" if args.bundle else "checkpoint",
        split=args.split,
        limit=args.limit,
        overrides=overrides,
        provider=args.provider or "cpu",
        device=args.device or "cpu",
        tokenizer=args.tokenizer,
        batch_size=args.batch_size,
        java=False if args.no_java else None,
    )
    o = result.options
    decoding = o.strategy + (
        f" (beam {o.beam_size}, length penalty {o.length_penalty})" if o.strategy == "beam" else ""
    )
    print(
        f"{result.data}, split {result.split}: {result.scores.n} images captioned by the {result.kind} "
        f"{result.source} ({decoding}, up to {o.max_new_tokens} new tokens)"
    )
    print(result.scores.table())
    for path, save in ((args.predictions, result.save_predictions), (args.json, result.save_scores)):
        if path:
            try:
                print(f"wrote {save(path)}")
            except OSError as e:
                raise ConfigError(f"{path}: cannot write ({e.strerror or e})") from None
    return 0


TRAIN_EPILOG = """
Variants:
  mlp          an MLP mapper (hidden width E*P/2, as the original) with GPT-2 fine-tuned: every
               parameter is trained, with GPT-2's dropout (--dropout) while training.
  transformer  a transformer mapper (--clip-length, --mapper-layers, --mapper-heads) with GPT-2
               frozen and in eval mode: only the mapper is trained. CLIP embeddings are
               L2-normalised by default, as for the released transformer weights.
Every caption ends with EOS (<|endoftext|>): the loss covers the caption tokens and EOS, never
the prefix or padding. --batch-size counts (image, caption) pairs per optimizer step.

Output (--out DIR):
  DIR/checkpoint-0010000/  a ClipCap checkpoint (model.safetensors, config.json, tokenizer.json)
                           + trainer.safetensors, trainer.json: optimizer, RNG, schedule, position
  DIR/history.jsonl        step, train loss, val loss and lr at each evaluation
  DIR/model.safetensors, config.json, tokenizer.json, trainer.json: the final model
Checkpoints come every --save-every steps and at each epoch end; the newest --keep-checkpoints stay.

Resuming: --resume auto continues from the newest checkpoint in --out (or starts fresh);
--resume DIR/checkpoint-NNNNNNN from that one. Data order, dropout and schedule continue
exactly, so the result equals an uninterrupted run's. Options that change what is computed must
be the same as before; how long and how often may change (--epochs, --max-steps, --save-every,
--keep-checkpoints, --eval-every, --val-split), and so may --grad-accum and --amp (the same
training, not bitwise the same numbers). --val-split '' turns the validation loss off.

Examples (COCO embeddings from `clipcap embed`, GPT-2 as a local Hugging Face directory):
  clipcap train --data coco-embeds --gpt2 hf/gpt2 --variant mlp --out runs/coco-mlp --device cuda
  # the same again after an interruption, with --resume auto
  clipcap train --data coco-embeds --gpt2 hf/gpt2 --variant mlp --out runs/coco-mlp --device cuda \\
      --resume auto
  # the released transformer_weights.pt's shape: RN50x4 embeddings, P = C = 40
  clipcap train --data coco-rn50x4-embeds --gpt2 hf/gpt2 --variant transformer \\
      --prefix-length 40 --clip-length 40 --out runs/coco-tf --device cuda
  # 2 GPUs with DDP: --batch-size stays the global batch, split between the processes
  torchrun --standalone --nproc_per_node 2 -m clipcap.cli train --data coco-embeds \\
      --gpt2 hf/gpt2 --variant mlp --out runs/coco-mlp --device cuda
  clipcap export runs/coco-mlp -o coco-mlp-bundle --tokenizer runs/coco-mlp/tokenizer.json
"""


def cmd_train(args) -> int:
    import os

    _require_torch()
    from clipcap.train.loop import TrainOptions, train

    if args.gpt2 is None and args.resume is None:
        raise ConfigError(
            "--gpt2 is required to start training (only --resume reads GPT-2 from a checkpoint)"
        )
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainOptions)}
    options = TrainOptions(**dict(values, val_split=values["val_split"] or None))
    result = train(
        options,
        args.data,
        gpt2=args.gpt2,
        out=args.out,
        tokenizer=args.tokenizer,
        resume=args.resume,
        device=args.device,
        progress=args.progress,
    )
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, one report
        return 0

    def loss(value):
        return "-" if value is None else f"{value:.4f}"

    out = result.out
    clip = "" if result.model.config.clip is not None else " --clip MODEL:TAG"
    print(
        f"{out}: model after {result.step} steps, train loss {loss(result.train_loss)}, val loss "
        f"{loss(result.val_loss)}; next: clipcap export {out} -o {out}-bundle{clip}"
    )
    return 0


DEMO_EPILOG = """
What it shows: OUT/report.json (per variant: exact-match accuracy, BLEU-4, CIDEr, runtime and
PyTorch latency, bundle size), OUT/contact-sheet.png (held-out images and their captions, wrong
ones in red), OUT/bundle-mlp and OUT/bundle-transformer, which `clipcap caption` takes:
  clipcap caption demo-out/data/images/04200.png --bundle demo-out/bundle-mlp
"""


def cmd_demo(args) -> int:
    _require_torch()
    from clipcap.demo.run import VARIANTS, run_demo

    variants = VARIANTS if args.variant == "both" else (args.variant,)
    run_demo(args.out, quick=args.quick, variants=variants, seed=args.seed)
    return 0


BENCH_EPILOG = """
Examples:
  clipcap bench --quick                                   # about a minute: does it all run?
  clipcap bench --out bench.json --markdown bench.md --plot bench.png
  clipcap bench --backends onnxruntime,pytorch --precisions int8 --batch-sizes 1
  clipcap bench --provider cuda --precisions fp32,fp16    # onnxruntime-gpu and CUDA PyTorch

The optimum backend runs in its own venv; make it once with: bash benchmarks/optimum-venv.sh
(without it, the report lists optimum as skipped). The first run exports the bundles (minutes);
later runs take them from --cache. The speed runs use random weights; whether int8 and int4 keep
captions is measured on the models `clipcap demo` trains (--trained DIR, or the cache's demo).
"""


def cmd_bench(args) -> int:
    _require_torch()
    from clipcap.benchmarks.options import DEFAULT_CACHE, BenchOptions, parse_list

    given = {
        "backends": parse_list(args.backends, "--backends"),
        "precisions": parse_list(args.precisions, "--precisions"),
        "batch_sizes": parse_list(args.batch_sizes, "--batch-sizes", int),
        "variants": parse_list(args.variants, "--variants"),
        "runs": args.runs,
        "threads": args.threads,
        "new_tokens": args.new_tokens,
        "trained": Path(args.trained) if args.trained else None,
        "trained_check": False if args.no_trained else (True if args.trained else None),
    }
    options = BenchOptions(
        quick=args.quick,
        provider=args.provider,
        cache_dir=Path(args.cache) if args.cache else DEFAULT_CACHE,
        out=args.out,
        markdown=args.markdown,
        plot=args.plot,
        optimum_python=args.optimum_python,
        **{k: v for k, v in given.items() if v is not None},
    )
    from clipcap.benchmarks.report import summary
    from clipcap.benchmarks.run import run_bench

    print(summary(run_bench(options)))
    return 0


def _require_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError as e:
        from clipcap.errors import missing_dependency

        raise missing_dependency("PyTorch", "export", e) from None


if __name__ == "__main__":
    sys.exit(main())
