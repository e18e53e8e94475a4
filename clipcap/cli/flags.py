"""Flag groups more than one command takes, each defined once with its read-back.

- CLIP (`export`, `embed`): ``add_clip_flags`` and ``clip_encoder``.
- decoding (`caption`, `eval`): ``add_decoding_flags`` and ``decoding_overrides``.
- checkpoint settings (`info`, `convert`, `export`): ``add_checkpoint_flags`` and ``load_model``.
- runtime (`caption`, `eval`, `bench`): ``add_runtime_flags`` and ``runtime_settings``.
- output (every command that writes): ``add_out_flag``, always ``-o/--out``.

Torch-free: what needs torch is imported inside the read-back functions. A renamed flag keeps its
old spelling as a hidden alias (``hidden_alias``), so scripts written against it keep working.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import textwrap
from pathlib import Path
from typing import Any

from clipcap.errors import ClipCapError, ConfigError, require


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Epilogs as written; each option's default appended to its help, unless the help names it.

    No "(default: None)" or "(default: False)": an unset option's help says what happens instead.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and text is not argparse.SUPPRESS
            and "default" not in text
            and default not in (None, argparse.SUPPRESS, [], ())
            and not isinstance(default, bool)
        ):
            text += " (default: %(default)s)"
        return text


def fill(text: str) -> str:
    return textwrap.fill(text, 88)


def hidden_alias(parser, *names: str, dest: str, **kwargs: Any) -> None:
    """Old spellings of a flag: accepted, not shown in --help, never a default of their own."""
    parser.add_argument(*names, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)


class StoreSpelled(argparse.Action):
    """Store the value, and the spelling the user wrote in ``spelled_<dest>``: errors name that one."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, f"spelled_{self.dest}", option_string)


def spelled(args, dest: str, flag: str) -> str:
    """The spelling of the flag that set ``dest`` (``flag`` unless an old alias did)."""
    return getattr(args, f"spelled_{dest}", None) or flag


def require_torch(extra: str = "export") -> None:
    require("torch", extra, package="PyTorch")


# --- output -----------------------------------------------------------------------------------------


def add_out_flag(parser, *, metavar: str, help: str, required: bool = False, default=None) -> None:
    """``-o/--out``: what the command writes, a directory or a report file (the one spelling for it)."""
    parser.add_argument("-o", "--out", required=required, default=default, metavar=metavar, help=help)


# --- runtime: where ONNX Runtime (or the benchmark) runs ---------------------------------------------


def add_runtime_flags(
    parser,
    *,
    provider: str = "where ONNX Runtime runs",
    fallback: bool = True,
    threads: str | None = "ONNX Runtime threads",
) -> None:
    """--provider (default cpu), --fallback-to-cpu, --threads; read back by ``runtime_settings``."""
    parser.add_argument("--provider", choices=("cpu", "cuda"), help=f"{provider} (default: cpu)")
    if fallback:
        parser.add_argument(
            "--fallback-to-cpu",
            dest="fallback_to_cpu",
            action="store_true",
            help="run on the CPU when --provider cuda is unavailable (default: fail)",
        )
        hidden_alias(parser, "--fallback-cpu", dest="fallback_to_cpu", action="store_true")
    if threads:
        parser.add_argument("--threads", type=int, metavar="N", help=f"{threads} (default: all cores)")


def runtime_settings(args) -> dict[str, Any]:
    """The runtime group's values as Captioner keywords (only the flags this command has)."""
    settings = {"provider": getattr(args, "provider", None) or "cpu"}
    for name in ("fallback_to_cpu", "threads"):
        if hasattr(args, name):
            settings[name] = getattr(args, name)
    return settings


# --- decoding -------------------------------------------------------------------------------------


DECODING_FLAGS = (  # flag, DecodingOptions field, argparse keywords (a declared table)
    (
        "--strategy",
        "strategy",
        dict(
            # One spelling shown (the Python API's), both taken: top-k is top_k, top-p is top_p.
            type=lambda s: s.replace("-", "_"),
            choices=("greedy", "top_k", "top_p", "beam"),
            help="greedy: the likeliest token; top_k / top_p: sampling (top-k / top-p also taken); "
            "beam: beam search",
        ),
    ),
    ("--top-k", "top_k", dict(type=int, metavar="K", help="top-k sampling: draw among the K likeliest")),
    (
        "--top-p",
        "top_p",
        dict(
            type=float,
            metavar="P",
            help="top-p sampling: draw among the likeliest tokens holding probability P, in (0, 1]",
        ),
    ),
    (
        "--temperature",
        "temperature",
        dict(type=float, metavar="T", help="sampling: divide the logits by T (> 0) first"),
    ),
    ("--beam-size", "beam_size", dict(type=int, metavar="N", help="beam search: the beams kept")),
    (
        "--length-penalty",
        "length_penalty",
        dict(type=float, metavar="A", help="beam search: rank by sum(log p) / length ** A"),
    ),
    (
        "--max-new-tokens",
        "max_new_tokens",
        dict(type=int, metavar="N", help="the most tokens a caption gets (EOS included)"),
    ),
    (
        "--min-new-tokens",
        "min_new_tokens",
        dict(type=int, metavar="N", help="no EOS before N tokens"),
    ),
    ("--seed", "seed", dict(type=int, metavar="S", help="makes top-k / top-p sampling reproducible")),
)


def add_decoding_flags(parser, source: str, *, stop: bool = False):
    """The decoding options' flags, in a group; each unset one keeps ``source``'s default."""
    group = parser.add_argument_group(f"decoding (default: {source})")
    for flag, _, kwargs in DECODING_FLAGS:
        group.add_argument(flag, **kwargs)
    if stop:
        group.add_argument(
            "--stop",
            action="append",
            default=[],
            metavar="STRING",
            help="also stop at any token whose text contains STRING (repeatable)",
        )
    return group


def decoding_overrides(args) -> dict[str, Any]:
    """The decoding options the user gave on the command line, as DecodingOptions field names."""
    given = {field: getattr(args, field) for _, field, _ in DECODING_FLAGS}
    if given["strategy"]:
        given["strategy"] = given["strategy"].replace("-", "_")
    return {name: value for name, value in given.items() if value is not None}


# --- CLIP -----------------------------------------------------------------------------------------


def add_clip_flags(parser, *, required: bool, title: str) -> None:
    """--clip, --clip-weights, --clip-config; read back by ``clip_encoder``."""
    group = parser.add_argument_group(title)
    group.add_argument(
        "--clip",
        required=required,
        metavar="MODEL[:TAG] | hf:ID_OR_DIR",
        help="open_clip architecture with an optional pretrained tag (ViT-B-32:openai, the original "
        "ClipCap's; RN50x4:openai), or a Hugging Face CLIP hub id or local directory "
        "(hf:openai/clip-vit-base-patch32)",
    )
    group.add_argument(
        "--clip-weights",
        metavar="FILE",
        help="local open_clip weights for --clip MODEL (a state dict, or OpenAI's TorchScript .pt): "
        "works offline. OpenAI weights as a plain state dict need a -quickgelu MODEL",
    )
    group.add_argument(
        "--clip-config", metavar="JSON", help="open_clip model config for an architecture it lacks"
    )


def clip_encoder(args, default=None):
    """The CLIP image encoder that --clip, --clip-weights and --clip-config name.

    Without --clip, ``default`` (a ClipSpec, e.g. a checkpoint's), with --clip-weights replacing its
    weights; one of the two is needed.
    """
    from clipcap.models.clip import hf_clip_encoder, load_image_encoder, open_clip_encoder

    what = args.clip or (default and f"{default.model} ({default.pretrained})")
    if args.clip_weights:  # the file the user gave, never the default's weights, in every message
        what = f"{args.clip or (default.model if default else 'CLIP')} ({args.clip_weights})"
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


# --- checkpoint settings --------------------------------------------------------------------------


CHECKPOINT = "a checkpoint file (.pt/.pth/.safetensors) or directory"


def add_checkpoint_flags(parser, what: str = CHECKPOINT) -> None:
    """The checkpoint positional and the settings its weights cannot tell; read back by ``load_model``."""
    parser.add_argument("checkpoint", help=what)
    group = parser.add_argument_group("the checkpoint, and what its weights cannot tell")
    choices = ("auto", "seed", "original", "clipcap")
    group.add_argument(
        "--checkpoint-format",
        choices=choices,
        default="auto",
        action=StoreSpelled,
        help="expected checkpoint format (default: detect it from the weights; a mismatch is an error)",
    )
    hidden_alias(group, "--format", dest="checkpoint_format", choices=choices, action=StoreSpelled)
    group.add_argument(
        "--normalize-prefix",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="L2-normalise the CLIP embedding before the mapper (default: off, the original training "
        "default; the released transformer_weights.pt (CLIP RN50x4) needs it on)",
    )
    group.add_argument(
        "--gpt2-config",
        metavar="NAME_OR_JSON",
        help="GPT-2's head count is not in the weights: gpt2, gpt2-medium, gpt2-large, gpt2-xl, "
        "distilgpt2, or a GPT-2 config.json (default: from the width, for the standard sizes)",
    )
    group.add_argument("--mapper-heads", type=int, metavar="N", help="transformer mapper heads (default: 8)")


def checkpoint_settings_given(args) -> list[str]:
    """The checkpoint settings the user gave (a bundle records its own: they do not apply to it)."""
    given = {
        "--checkpoint-format": args.checkpoint_format != "auto",
        "--normalize-prefix": args.normalize_prefix is not None,
        "--gpt2-config": args.gpt2_config is not None,
        "--mapper-heads": args.mapper_heads is not None,
    }
    return [flag for flag, set_ in given.items() if set_]


def load_model(args):
    """The checkpoint the flags name, loaded with their settings (needs torch)."""
    require_torch()
    from clipcap.models.checkpoints import load_checkpoint

    model = load_checkpoint(
        args.checkpoint,
        normalize_prefix=args.normalize_prefix,
        n_head=gpt2_heads(args.gpt2_config),
        mapper_heads=args.mapper_heads,
    )
    found = model.config.source_format
    family = {"clipcap-onnx": "clipcap"}.get(found, found.split("-")[0])
    if args.checkpoint_format not in ("auto", family):
        raise ConfigError(
            f"{args.checkpoint}: {spelled(args, 'checkpoint_format', '--checkpoint-format')} "
            f"{args.checkpoint_format} given, but the weights are {found}"
        )
    return model


GPT2_HEADS = {"gpt2": 12, "distilgpt2": 12, "gpt2-medium": 16, "gpt2-large": 20, "gpt2-xl": 25}


def gpt2_heads(value: str | None) -> int | None:
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
