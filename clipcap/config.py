"""What a ClipCap model is, as data: sizes, mapper, CLIP and its preprocessing, generation defaults.

Torch-free, so the runtime reads the same config. Everything that the weights cannot tell
(prefix normalisation, which CLIP produced the embeddings) is an explicit field here.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from clipcap.errors import ConfigError
from clipcap.jsonfile import from_json_object
from clipcap.options import OWN_DEFAULTS, DecodingOptions

MAPPER_KINDS = ("mlp", "linear", "transformer")
SOURCE_FORMATS = ("seed", "original-mlp", "original-linear", "original-transformer", "clipcap-onnx")
CLIP_BACKENDS = ("open_clip", "hf")

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Bounds on the sizes a config file controls: far above any GPT-2 / CLIP in use (GPT-2 XL: 1600
# wide, 48 layers, 1024 positions), low enough that a hostile file cannot ask for terabytes.
GPT2_LIMITS = {
    "vocab_size": 1 << 22,
    "n_positions": 1 << 16,
    "n_embd": 1 << 16,
    "n_layer": 1024,
    "n_head": 1024,
}
MAX_DIM = 1 << 16
MAX_IMAGE_SIZE = 8192


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if not _is_int(value):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")


# n_head is not visible in GPT-2's weights; the standard sizes give it from the width.
STANDARD_GPT2_HEADS = {768: 12, 1024: 16, 1280: 20, 1600: 25}


@dataclass(frozen=True)
class GPT2Config:
    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self) -> None:
        # Checked before any weight is allocated: a config.json's numbers size the model.
        for name, high in GPT2_LIMITS.items():
            _check_int(f"gpt2.{name}", getattr(self, name), 1, high)
        if not _is_number(self.layer_norm_epsilon) or not 0 < self.layer_norm_epsilon < 1:
            raise ConfigError(f"gpt2.layer_norm_epsilon must be in (0, 1), got {self.layer_norm_epsilon!r}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"gpt2.n_embd={self.n_embd} is not divisible by n_head={self.n_head}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


@dataclass(frozen=True)
class MapperConfig:
    """The mapping network from a CLIP embedding (clip_dim) to prefix_length GPT-2 embeddings.

    kind "mlp": Linear(D, hidden) -> tanh -> Linear(hidden, E*P) (the originals use hidden = E*P//2)
    kind "linear": Linear(D, E*P) (the original when prefix_length > 10)
    kind "transformer": Linear(D, C*E), learned constant, num_layers pre-norm layers, last P kept.
    """

    kind: str
    clip_dim: int
    prefix_length: int
    hidden_dim: int = 0  # mlp only
    clip_length: int = 0  # transformer only
    num_layers: int = 0  # transformer only
    num_heads: int = 8  # transformer only; not visible in the weights, the original uses 8
    mlp_ratio: float = 2.0  # transformer only

    def __post_init__(self) -> None:
        if self.kind not in MAPPER_KINDS:
            raise ConfigError(f"mapper.kind must be one of {', '.join(MAPPER_KINDS)}, got {self.kind!r}")
        for name in ("clip_dim", "prefix_length", "hidden_dim", "clip_length", "num_layers", "num_heads"):
            _check_int(f"mapper.{name}", getattr(self, name), 0, MAX_DIM)
        if not _is_number(self.mlp_ratio) or not 0 < self.mlp_ratio <= 64:
            raise ConfigError(f"mapper.mlp_ratio must be a number in (0, 64], got {self.mlp_ratio!r}")
        if self.clip_dim < 1 or self.prefix_length < 1:
            raise ConfigError("mapper.clip_dim and mapper.prefix_length must be >= 1")
        if self.kind == "mlp" and self.hidden_dim < 1:
            raise ConfigError("mapper.hidden_dim must be >= 1 for an mlp mapper")
        if self.kind == "transformer" and (self.clip_length < 1 or self.num_layers < 1 or self.num_heads < 1):
            raise ConfigError(
                "mapper.clip_length, num_layers and num_heads must be >= 1 for a transformer mapper"
            )


@dataclass(frozen=True)
class Preprocessing:
    """CLIP's image preprocessing, travelling with the weights (open_clip's habit).

    Resize the shorter side to image_size (``resize="shortest"``), centre-crop a square, RGB,
    scale to [0, 1], normalise. ``convention`` names whose transform this reproduces, since the
    two disagree in rounding: "torchvision" (OpenAI clip, open_clip) or "hf" (CLIPImageProcessor).
    """

    image_size: int = 224
    resize: str = "shortest"  # open_clip's resize_mode: shortest | longest | squash
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    std: tuple[float, ...] = OPENAI_CLIP_STD
    convention: str = "torchvision"

    def __post_init__(self) -> None:
        _check_int("preprocessing.image_size", self.image_size, 1, MAX_IMAGE_SIZE)
        for name in ("mean", "std"):
            values = getattr(self, name)
            if not isinstance(values, (list, tuple)) or len(values) != 3 or not all(map(_is_number, values)):
                raise ConfigError(f"preprocessing.{name} needs 3 finite numbers, got {values!r}")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if min(self.std) <= 0:
            raise ConfigError("preprocessing.std must be > 0")
        for name in ("resize", "interpolation", "convention"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"preprocessing.{name} must be a string, got {getattr(self, name)!r}")
        if self.resize not in ("shortest", "longest", "squash"):
            raise ConfigError(
                f"preprocessing.resize must be shortest, longest or squash, got {self.resize!r}"
            )
        if self.convention not in ("torchvision", "hf"):
            raise ConfigError(f"preprocessing.convention must be torchvision or hf, got {self.convention!r}")

    @classmethod
    def from_dict(cls, data: Any) -> Preprocessing:
        """From a manifest's or config's JSON object; unknown keys and wrong types are refused."""
        return _build(cls, data)


@dataclass(frozen=True)
class ClipSpec:
    """Which CLIP image encoder produced the embeddings the mapper was trained on."""

    backend: str  # open_clip | hf
    model: str  # open_clip model name, or a Hugging Face hub id / local directory
    pretrained: str | None = None  # open_clip: a pretrained tag or a local weights file
    embed_dim: int = 512
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    # open_clip only: None = the activation the model name / pretrained tag implies; True/False = QuickGELU
    # forced on/off (OpenAI's weights need QuickGELU; a plain state dict cannot say so).
    quick_gelu: bool | None = None
    # open_clip only: the architecture's model config itself, for one open_clip does not ship (a
    # --clip-config file), so a checkpoint trained on it rebuilds its CLIP without that file.
    model_config: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.backend not in CLIP_BACKENDS:
            raise ConfigError(f"clip.backend must be one of {', '.join(CLIP_BACKENDS)}, got {self.backend!r}")
        if self.quick_gelu is not None and not isinstance(self.quick_gelu, bool):
            raise ConfigError(f"clip.quick_gelu must be true, false or null, got {self.quick_gelu!r}")
        if self.model_config is not None and (
            self.backend != "open_clip" or not isinstance(self.model_config, dict)
        ):
            raise ConfigError("clip.model_config is an open_clip model config (a JSON object) or null")
        if self.backend == "hf" and self.quick_gelu is not None:
            raise ConfigError("clip.quick_gelu is an open_clip setting; it must be null for the hf backend")


# The CLIP each released checkpoint was trained on (../shared/reference/clipcap-formats.md).
# OpenAI's weights need QuickGELU: said explicitly, whatever a library's tag would imply.
OPENAI_VIT_B_32 = ClipSpec("open_clip", "ViT-B-32", "openai", 512, Preprocessing(224), quick_gelu=True)
OPENAI_RN50X4 = ClipSpec("open_clip", "RN50x4", "openai", 640, Preprocessing(288), quick_gelu=True)
HF_VIT_B_32 = ClipSpec("hf", "openai/clip-vit-base-patch32", None, 512, Preprocessing(224, convention="hf"))


@dataclass(frozen=True)
class ClipCapConfig:
    """A whole ClipCap model: GPT-2, the mapper, and what the weights cannot say."""

    gpt2: GPT2Config
    mapper: MapperConfig
    source_format: str = "clipcap-onnx"
    normalize_prefix: bool = False  # L2-normalise the CLIP embedding before the mapper
    clip: ClipSpec | None = None
    generation: DecodingOptions = OWN_DEFAULTS
    format_version: int = 1

    def __post_init__(self) -> None:
        if self.source_format not in SOURCE_FORMATS:
            raise ConfigError(
                f"source_format must be one of {', '.join(SOURCE_FORMATS)}, got {self.source_format!r}"
            )
        if self.clip is not None and self.clip.embed_dim != self.mapper.clip_dim:
            raise ConfigError(
                f"clip.embed_dim={self.clip.embed_dim} but the mapper takes {self.mapper.clip_dim}-d "
                f"embeddings: this checkpoint was trained on a different CLIP ({self.clip.model})"
            )
        self.generation.check_context(self.mapper.prefix_length, self.gpt2.n_positions)

    @property
    def variant(self) -> str:
        """ "mlp" (MLP or linear mapper, GPT-2 fine-tuned) or "transformer" (GPT-2 frozen)."""
        return "transformer" if self.mapper.kind == "transformer" else "mlp"

    @property
    def prefix_length(self) -> int:
        return self.mapper.prefix_length

    def replace(self, **changes: Any) -> ClipCapConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["generation"] = self.generation.to_dict()
        d["variant"] = self.variant  # for readers; derived, ignored when read back
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClipCapConfig:
        data = dict(data)
        data.pop("variant", None)
        try:
            gpt2 = _build(GPT2Config, data.pop("gpt2"))
            mapper = _build(MapperConfig, data.pop("mapper"))
            clip = data.pop("clip", None)
            if clip is not None:
                clip = dict(clip)
                clip["preprocessing"] = _build(Preprocessing, clip.get("preprocessing", {}))
                clip = _build(ClipSpec, clip)
            generation = DecodingOptions.from_dict(data.pop("generation", OWN_DEFAULTS.to_dict()))
        except KeyError as e:
            raise ConfigError(f"config is missing {e.args[0]!r}") from None
        except TypeError as e:
            raise ConfigError(f"config has a malformed section: {e}") from None
        return _build(cls, dict(data, gpt2=gpt2, mapper=mapper, clip=clip, generation=generation))

    @classmethod
    def from_json(cls, text: str) -> ClipCapConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError("config JSON must be an object")
        return cls.from_dict(data)


def _build(cls: type, data: Any) -> Any:
    return from_json_object(cls, data, f"{cls.__name__} fields")
