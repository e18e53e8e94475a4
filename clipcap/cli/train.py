"""`clipcap train`: a ClipCap model trained on an embedding set (resumable; torchrun for GPUs)."""

from __future__ import annotations

import argparse
import dataclasses

from clipcap.cli import flags
from clipcap.errors import ConfigError

HELP = "train a ClipCap model on an embedding set (the paper's recipe; resumable; torchrun for GPUs)"
DESCRIPTION = (
    "Train a ClipCap mapper (and, for --variant mlp, GPT-2) on the CLIP embeddings and captions "
    "of an embedding set from `clipcap embed`: AdamW, linear warm-up then linear decay, the "
    "paper's defaults. Captions end with GPT-2's EOS, so the model learns to stop. Writes "
    "resumable checkpoints and, at the end, a model `clipcap export` takes."
)
EPILOG = """
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


def add_arguments(parser) -> None:
    io = parser.add_argument_group("data, model and output")
    io.add_argument(
        "--data", required=True, metavar="EMBED_DIR", help="an embedding set from `clipcap embed`"
    )
    io.add_argument(
        "--gpt2",
        metavar="NAME_OR_DIR_OR_CHECKPOINT",
        help="GPT-2 to start from: a Hugging Face GPT-2 directory (config.json + model.safetensors), a "
        "ClipCap checkpoint (its GPT-2, e.g. coco_weights.pt), or a hub name (gpt2; needs the network). "
        "Required unless resuming",
    )
    flags.add_out_flag(io, required=True, metavar="DIR", help="output directory (made if missing)")
    io.add_argument(
        "--tokenizer", metavar="FILE_OR_DIR", help="the captions' tokenizer (default: the packaged GPT-2 one)"
    )
    io.add_argument(
        "--resume",
        metavar="auto|CHECKPOINT_DIR",
        help="auto: continue from the newest checkpoint in --out (fresh when none); or a checkpoint",
    )
    add_train_options(parser.add_argument_group("training (defaults: the paper's)"))
    running = parser.add_argument_group("running")
    running.add_argument(
        "--device",
        default="auto",
        metavar="DEVICE",
        help="auto (CUDA when PyTorch sees a GPU, else cpu), cpu, cuda, cuda:N",
    )
    running.add_argument("--no-progress", dest="progress", action="store_false", help="no progress output")


TYPES = {"int": int, "int | None": int, "float": float, "str": str, "str | None": str}


def add_train_options(group) -> None:
    """One flag per TrainOptions field, its help and default from the field (torch-free)."""
    from clipcap.train.options import VARIANTS, TrainOptions

    for f in dataclasses.fields(TrainOptions):
        flag, text = "--" + f.name.replace("_", "-"), f.metadata["help"]
        if f.name == "variant":
            group.add_argument(flag, required=True, choices=VARIANTS, help=text)
        elif f.type == "bool | None":
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            shown = "" if f.default is None else f" (default: {f.default})"
            kind = TYPES[f.type]
            metavar = {int: "N", float: "X", str: "NAME"}[kind]
            group.add_argument(flag, type=kind, default=f.default, metavar=metavar, help=text + shown)


def run(args) -> int:
    import os

    flags.require_torch("train")
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
