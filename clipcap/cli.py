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
    d = caption.add_argument_group("decoding (default: the bundle's)")
    d.add_argument("--strategy", choices=("greedy", "top-k", "top-p", "beam"))
    d.add_argument("--top-k", type=int, metavar="K")
    d.add_argument("--top-p", type=float, metavar="P")
    d.add_argument("--temperature", type=float, metavar="T")
    d.add_argument("--beam-size", type=int, metavar="N")
    d.add_argument("--length-penalty", type=float, metavar="A", help="beam ranking: sum(log p) / length ** A")
    d.add_argument("--max-new-tokens", type=int, metavar="N")
    d.add_argument("--min-new-tokens", type=int, metavar="N")
    d.add_argument("--seed", type=int, metavar="S", help="makes top-k / top-p sampling reproducible")
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
    out.add_argument("--tokenizer", metavar="FILE_OR_DIR", help="tokenizer (default: the packaged GPT-2 one)")
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
    from clipcap.checkpoints import load_checkpoint

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
    from clipcap.checkpoints import describe
    from clipcap.gpt2 import num_parameters

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
    from clipcap.checkpoints import save_checkpoint

    model = _load(args)
    out = save_checkpoint(model, args.out)
    print(f"wrote {out}/model.safetensors and config.json ({model.config.source_format} -> clipcap-onnx)")
    return 0


def cmd_caption(args) -> int:
    import numpy as np

    from clipcap.runtime import Captioner, ImageError

    if bool(args.images) == bool(args.embeddings):
        raise ConfigError("give IMAGE paths or --embeddings FILE.npy (one of the two)")
    overrides = {
        name: value
        for name, value in {
            "strategy": args.strategy and args.strategy.replace("-", "_"),
            "top_k": args.top_k,
            "top_p": args.top_p,
            "temperature": args.temperature,
            "beam_size": args.beam_size,
            "length_penalty": args.length_penalty,
            "max_new_tokens": args.max_new_tokens,
            "min_new_tokens": args.min_new_tokens,
            "seed": args.seed,
        }.items()
        if value is not None
    }
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
        tokenizer=args.tokenizer,
    )
    total = sum(f["bytes"] for f in manifest["files"].values())
    state = "verified" if manifest["verification"]["passed"] else "NOT verified (--no-verify)"
    print(f"{args.out}: {manifest['precision']} bundle, {total / 2**20:.1f} MiB, {state}")
    return 0


def _encoder(args, config):
    """The CLIP image encoder the flags (or, by default, the checkpoint's config) name."""
    from clipcap.clip import hf_clip_encoder, load_image_encoder, open_clip_encoder

    what = args.clip or (config.clip and f"{config.clip.model} ({config.clip.pretrained})")
    try:
        if args.clip is None:
            if config.clip is None:
                raise ConfigError(
                    f"the CLIP this checkpoint was trained on is unknown (its mapper takes "
                    f"{config.mapper.clip_dim}-d embeddings): pass --clip MODEL[:TAG] or --clip hf:ID_OR_DIR"
                )
            spec = config.clip
            if args.clip_weights:
                if spec.backend != "open_clip":
                    raise ConfigError("--clip-weights is for open_clip models; name one with --clip MODEL")
                spec = dataclasses.replace(spec, pretrained=args.clip_weights)
            return load_image_encoder(spec, model_config=args.clip_config)
        if args.clip.startswith("hf:"):
            return hf_clip_encoder(args.clip[3:])
        name, _, tag = args.clip.partition(":")
        if tag and args.clip_weights:
            raise ConfigError(
                f"--clip {args.clip} names a pretrained tag and --clip-weights a file: give one"
            )
        if not tag and not args.clip_weights:
            raise ConfigError(
                f"--clip {name}: name its weights, a tag ({name}:openai) or --clip-weights FILE"
            )
        return open_clip_encoder(name, args.clip_weights or tag, model_config=args.clip_config)
    except ClipCapError:
        raise
    except Exception as e:  # downloads fail offline with whatever the hub client raises
        raise ConfigError(
            f"could not load CLIP {what}: {type(e).__name__}: {e}. Offline? Pass local weights with "
            "--clip MODEL --clip-weights FILE (open_clip) or --clip hf:LOCAL_DIR"
        ) from None


def _require_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError as e:
        from clipcap.errors import missing_dependency

        raise missing_dependency("PyTorch", "export", e) from None


if __name__ == "__main__":
    sys.exit(main())
