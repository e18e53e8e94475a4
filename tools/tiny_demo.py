"""`make demo` until the training demo lands: a ClipCap checkpoint's trip to an ONNX bundle.

Builds a tiny random ClipCap in the original repository's pickle format (legacy buffers and all)
and a tiny random CLIP, shows what `clipcap info` reads off the checkpoint, converts it to this
project's safetensors format, exports verified ONNX bundles (fp32 and int8) with `clipcap export`,
offline, and captions a picture with the torch-free runtime (`clipcap caption`) next to the
PyTorch reference. The weights are random, so the captions are too: the point is the path, not
the words.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
from clipcap.runtime.images import load_image  # noqa: E402
from clipcap.runtime.preprocess import preprocess  # noqa: E402
from PIL import Image  # noqa: E402

from clipcap.checkpoints import load_checkpoint  # noqa: E402
from clipcap.cli import main as clipcap  # noqa: E402
from clipcap.clip import open_clip_encoder  # noqa: E402
from clipcap.config import ClipCapConfig, GPT2Config, MapperConfig  # noqa: E402
from clipcap.generate import generate  # noqa: E402
from clipcap.model import ClipCapModel  # noqa: E402
from clipcap.tokenizer import load_tokenizer  # noqa: E402

TINY_VIT = {  # open_clip's ViT-B-32 layout in miniature: 64x64 images, 4 layers of width 128
    "embed_dim": 512,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 256, "width": 64, "heads": 2, "layers": 1},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-out"))
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(0)
    gpt2 = GPT2Config(n_embd=768, n_layer=2, n_head=12, n_positions=128)
    config = ClipCapConfig(gpt2, MapperConfig("mlp", 512, 10, hidden_dim=3840))
    state = ClipCapModel(config).state_dict()
    for i in range(config.gpt2.n_layer):  # what transformers 4.11 saved beside the weights
        state[f"gpt.transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 128, 128, dtype=torch.uint8))
        state[f"gpt.transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    pickle_path = out / "tiny_original_mlp.pt"
    torch.save(state, pickle_path)

    print(f"$ clipcap info {pickle_path}")
    clipcap(["info", str(pickle_path)])
    print(f"\n$ clipcap convert {pickle_path} --out {out / 'tiny-converted'}")
    clipcap(["convert", str(pickle_path), "--out", str(out / "tiny-converted")])

    # A small CLIP-architecture image encoder (open_clip, random weights) saved as a local file,
    # so the export runs offline like a user's with --clip-weights.
    import open_clip
    from safetensors.torch import save_file

    clip_config = out / "tiny-vit.json"
    clip_config.write_text(json.dumps(TINY_VIT))
    open_clip.add_model_config(clip_config)
    save_file(open_clip.create_model("tiny-vit").state_dict(), str(out / "tiny-vit.safetensors"))
    clip = [
        "--clip",
        "tiny-vit",
        "--clip-weights",
        str(out / "tiny-vit.safetensors"),
        "--clip-config",
        str(clip_config),
    ]
    for precision in ("fp32", "int8"):
        bundle = out / f"bundle-{precision}"
        print(
            f"\n$ clipcap export {out / 'tiny-converted'} -o {bundle} --precision {precision} "
            "--clip tiny-vit --clip-weights ..."
        )
        clipcap(
            [
                "export",
                str(out / "tiny-converted"),
                "-o",
                str(bundle),
                "--precision",
                precision,
                "--force",
                *clip,
            ]
        )

    # A picture to caption, then the torch-free runtime on both bundles, and the PyTorch reference.
    sample = out / "sample.png"
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((96, 128, 3)) * 255).astype(np.uint8)).save(sample)
    for precision in ("fp32", "int8"):
        print(
            f"\n$ clipcap caption {sample} --bundle {out / f'bundle-{precision}'} --max-new-tokens 12 --json"
        )
        clipcap(
            [
                "caption",
                str(sample),
                "--bundle",
                str(out / f"bundle-{precision}"),
                "--max-new-tokens",
                "12",
                "--json",
            ]
        )

    model = load_checkpoint(out / "tiny-converted")
    encoder = open_clip_encoder("tiny-vit", str(out / "tiny-vit.safetensors"))
    pixels = torch.from_numpy(preprocess([load_image(sample)], encoder.spec.preprocessing))
    with torch.no_grad():
        tokens = generate(model, encoder(pixels), model.config.generation.replace(max_new_tokens=12))[
            0
        ].tokens
    print(f"\nPyTorch reference, same picture: {tokens} {load_tokenizer().decode(tokens)!r}")
    print("(random weights, so random words; the fp32 bundle's tokens equal the reference's)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
