"""The benchmark's models: full-size ClipCap with random weights (or a tiny one for --quick), cached.

Every backend runs the same weights: each model is made once from a seed and saved in the cache
(this project's checkpoint, the CLIP image tower's weights), and everything else is made from
those files: the ONNX bundles per precision and the Hugging Face GPT-2 directory for optimum.
Cache entries are keyed by a hash of what makes them (the model's config, the seed, the versions
of clipcap-onnx, torch and ONNX Runtime); each is written to a temporary name and renamed into
place, so an interrupted run leaves nothing half-written.

The two variants share GPT-2 and CLIP: both are drawn first from the same seed.

- ``mlp``: GPT-2 small (12 x 768, vocabulary 50257), CLIP ViT-B/32 (open_clip "ViT-B-32"), an MLP
  mapper, prefix 10 (the original COCO model's shape);
- ``transformer``: the same GPT-2 and CLIP, a transformer mapper (8 layers), prefix 40 and
  clip_length 40 (the released transformer model's shape): four times the prefix to prefill and
  attend to, the decode-heavy case.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipcap import __version__
from clipcap.config import ClipCapConfig, GPT2Config, MapperConfig
from clipcap.errors import OptionsError
from clipcap.machine import package_version

Say = Callable[[str], None]

FULL_GPT2 = GPT2Config()  # GPT-2 small: 12 layers x 768, 12 heads, 50257 tokens, 1024 positions
# GPT-2's vocabulary is kept so that the packaged tokenizer and the LM head's shape stay real.
QUICK_GPT2 = GPT2Config(n_positions=128, n_embd=64, n_layer=2, n_head=4)

FULL_CLIP = "ViT-B-32"
QUICK_CLIP = "clipcap-bench-tiny-clip"
# A ViT in miniature for open_clip (32 x 32 images, 16 x 16 patches, 2 layers of 64, 32-d output);
# open_clip also needs a text tower.
QUICK_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}

IMAGE_SHAPE = (480, 640)  # the benchmark's pictures: a common photo size, resized by preprocessing


@dataclass(frozen=True)
class ModelSpec:
    """One benchmark model: its ClipCap config and the open_clip architecture of its CLIP."""

    variant: str
    config: ClipCapConfig
    clip: str
    clip_config: dict[str, Any] | None = None  # an open_clip model config open_clip does not ship

    @property
    def key(self) -> str:
        return _hash({"config": self.config.to_dict(), "clip": self.clip, "clip_config": self.clip_config})

    @property
    def size(self) -> str:
        return "quick" if self.clip_config is not None else "full"


def model_spec(variant: str, quick: bool = False) -> ModelSpec:
    gpt2 = QUICK_GPT2 if quick else FULL_GPT2
    clip_dim = QUICK_CLIP_CONFIG["embed_dim"] if quick else 512
    E = gpt2.n_embd
    if variant == "mlp":
        P = 4 if quick else 10
        mapper = MapperConfig("mlp", clip_dim, P, hidden_dim=E * P // 2)
        normalize = False
    elif variant == "transformer":
        P = 4 if quick else 40
        mapper = MapperConfig(
            "transformer", clip_dim, P, clip_length=P, num_layers=2 if quick else 8, num_heads=8
        )
        normalize = True  # as the released transformer model
    else:
        raise OptionsError(f"unknown variant {variant!r}")
    config = ClipCapConfig(gpt2=gpt2, mapper=mapper, normalize_prefix=normalize)
    return ModelSpec(
        variant,
        config,
        QUICK_CLIP if quick else FULL_CLIP,
        QUICK_CLIP_CONFIG if quick else None,
    )


class Assets:
    """A benchmark model's files in the cache, made on first use."""

    def __init__(self, spec: ModelSpec, cache_dir: Path, seed: int = 0, say: Say | None = None) -> None:
        self.spec = spec
        self.cache_dir = Path(cache_dir)
        self.seed = seed
        self.say = say or (lambda _: None)
        self.directory = self.cache_dir / f"{spec.variant}-{spec.size}-{_hash([spec.key, seed, __version__])}"
        self.clip_dir = self.cache_dir / f"clip-{spec.clip}-{_hash([spec.clip, spec.clip_config, seed])}"
        self.gpt2_key = _hash([asdict(spec.config.gpt2), seed, __version__])

    # -- the PyTorch model and CLIP ------------------------------------------------------------

    @property
    def checkpoint(self) -> Path:
        path = self.directory / "checkpoint"
        if not (path / "config.json").is_file():
            import torch

            from clipcap.models.checkpoints import save_checkpoint
            from clipcap.models.model import ClipCapModel

            self.say(f"      making the {self.spec.size} {self.spec.variant} model (random weights)")
            torch.manual_seed(self.seed)  # GPT-2 is drawn first: the same for both variants
            model = ClipCapModel(self.spec.config).eval()
            with _atomic_dir(path) as tmp:
                save_checkpoint(model, tmp)
        return path

    def model(self):
        from clipcap.models.checkpoints import load_checkpoint

        return load_checkpoint(self.checkpoint)

    def encoder(self):
        """The CLIP image encoder (open_clip, random weights drawn once and cached)."""
        import torch
        from safetensors.torch import load_file, save_file

        from clipcap.logs import drop_root_records
        from clipcap.models.clip import NO_PRETRAINED, open_clip_encoder

        config = None
        if self.spec.clip_config is not None:
            config = self.clip_dir / f"{self.spec.clip}.json"
            if not config.is_file():
                self.clip_dir.mkdir(parents=True, exist_ok=True)
                _write_atomic(config, json.dumps(self.spec.clip_config))
        weights = self.clip_dir / "visual.safetensors"
        torch.manual_seed(self.seed)
        with drop_root_records(NO_PRETRAINED):  # random, then the cached weights if any
            encoder = open_clip_encoder(self.spec.clip, None, model_config=config)
        if weights.is_file():
            encoder.visual.load_state_dict(load_file(str(weights)))
        else:
            self.clip_dir.mkdir(parents=True, exist_ok=True)
            tmp = weights.with_name(f".{weights.name}.partial")
            state = {k: v.contiguous() for k, v in encoder.visual.state_dict().items()}
            save_file(state, str(tmp))
            tmp.replace(weights)
        return encoder.eval()

    # -- what the other backends run -----------------------------------------------------------

    def bundle_path(self, precision: str) -> Path:
        # What makes a bundle: the exporter's libraries and our export code itself (a change to the
        # graphs or their fusions must not be measured on a bundle the old code wrote).
        makers = [package_version(d) for d in ("torch", "onnxruntime", "onnx", "onnxscript")] + [
            _export_code()
        ]
        return self.directory / f"bundle-{precision}-{_hash(makers)}"

    def has_bundle(self, precision: str) -> bool:
        return (self.bundle_path(precision) / "clipcap.json").is_file()

    def bundle(self, precision: str, model=None, encoder=None) -> Path:
        """The ONNX bundle at ``precision``, exported (without verification: the benchmark compares
        the backends' tokens itself) when it is not in the cache."""
        path = self.bundle_path(precision)
        if not self.has_bundle(precision):
            from clipcap.export.bundle import export_bundle

            self.say(f"      exporting the {self.spec.variant} model to an ONNX bundle ({precision})")
            export_bundle(
                model if model is not None else self.model(),
                encoder if encoder is not None else self.encoder(),
                path,
                precision=precision,
                verify=False,
                force=True,
                progress=lambda _: None,
            )
        return path

    def hf_gpt2_dir(self, model=None) -> Path:
        """A Hugging Face GPT-2 directory (config.json, model.safetensors, tokenizer.json) holding this
        model's GPT-2 weights, for optimum."""
        path = self.cache_dir / f"hf-gpt2-{self.spec.size}-{self.gpt2_key}"
        if not (path / "model.safetensors").is_file():
            from clipcap.demo.pretrain import save_hf_gpt2
            from clipcap.tokenizer import load_tokenizer

            self.say("      writing the Hugging Face GPT-2 directory for optimum")
            gpt = (model if model is not None else self.model()).gpt
            with _atomic_dir(path) as tmp:
                save_hf_gpt2(gpt, load_tokenizer(), tmp)
        return path


def hf_gpt2(model):
    """transformers' GPT2LMHeadModel holding ``model``'s GPT-2 (our key names are Hugging Face's)."""
    import transformers

    c = model.config.gpt2
    config = transformers.GPT2Config(
        vocab_size=c.vocab_size,
        n_positions=c.n_positions,
        n_embd=c.n_embd,
        n_layer=c.n_layer,
        n_head=c.n_head,
        layer_norm_epsilon=c.layer_norm_epsilon,
        activation_function="gelu_new",
    )
    hf = transformers.GPT2LMHeadModel(config)
    hf.load_state_dict(model.gpt.state_dict(), strict=True)
    hf.tie_weights()
    # No EOS and no BOS: generate() then never stops early nor suppresses a token.
    hf.generation_config.eos_token_id = None
    hf.generation_config.bos_token_id = None
    hf.generation_config.pad_token_id = 0
    return hf.eval()


def make_images(n: int, seed: int = 0) -> list:
    """``n`` RGB pictures of IMAGE_SHAPE (random pixels: preprocessing costs the same whatever they show)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (*IMAGE_SHAPE, 3), dtype=np.uint8), mode="RGB") for _ in range(n)
    ]


def _hash(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _export_code() -> str:
    """A digest of clipcap.export's source files."""
    import clipcap.export

    digest = hashlib.sha256()
    for path in sorted(Path(clipcap.export.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


class _atomic_dir:
    """A temporary directory beside ``path``, renamed to ``path`` when the block succeeds."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.partial-", dir=self.path.parent))
        return self.tmp

    def __exit__(self, kind, *_) -> None:
        if kind is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.path.exists():
            shutil.rmtree(self.path)
        self.tmp.rename(self.path)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text)
    tmp.replace(path)
