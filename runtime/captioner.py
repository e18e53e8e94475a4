"""The captioner apps embed: a bundle, ONNX Runtime, and nothing heavier.

    from clipcap.runtime import Captioner
    captioner = Captioner("coco-bundle")                 # CPU; Captioner(..., provider="cuda")
    print(captioner.caption("dog.jpg").text)
    for c in captioner.caption(["a.jpg", "b.png"], strategy="beam", beam_size=5):
        print(c.text, c.score)

One Captioner may be shared by threads: ONNX Runtime sessions run concurrently and each call
keeps its own decoding state.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from clipcap.runtime.arrays import check_embeddings
from clipcap.runtime.bundle import CUDA, Bundle, make_session, open_bundle, resolve_providers
from clipcap.runtime.decoding import decode
from clipcap.runtime.images import ImageError, ImageSource, load_image
from clipcap.runtime.inference import DecoderShape, IOBindingInference, NumpyInference
from clipcap.runtime.preprocess import preprocess
from clipcap.runtime.validate import check_sessions

from clipcap.errors import BundleError, ConfigError
from clipcap.options import DecodingOptions
from clipcap.tokenizer import load_tokenizer


@dataclass(frozen=True)
class Caption:
    text: str
    tokens: list[int]  # the new tokens, the stop token included when one ended the caption
    score: float  # sum of log-probs; for beam search the ranking score

    def __str__(self) -> str:
        return self.text


class Captioner:
    """Caption images (or CLIP embeddings) with an exported bundle.

    Args:
        bundle: the directory ``clipcap export`` wrote. Its manifest and every file's SHA-256 are
            checked here (``check_files=False`` skips the hashing, e.g. for a cold-start benchmark).
        provider: "cpu", "cuda", or a list of ONNX Runtime provider names. CUDA where it is not
            available is an error unless ``fallback_to_cpu``.
        threads: ONNX Runtime intra-op threads (default: ONNX Runtime's choice, all cores).
        io_binding: keep the KV cache where the session computes (default: on with CUDA).
    """

    def __init__(
        self,
        bundle: str | Path,
        *,
        provider: str | Sequence[str] = "cpu",
        fallback_to_cpu: bool = False,
        threads: int | None = None,
        io_binding: bool | None = None,
        check_files: bool = True,
    ) -> None:
        self.bundle: Bundle = open_bundle(bundle, check_files=check_files)
        self.providers = resolve_providers(provider, fallback=fallback_to_cpu)
        self.sessions = {
            name: make_session(self.bundle.graph_file(name), self.providers, threads, spin=name == "decoder")
            for name in self.bundle.manifest["graphs"]
        }
        check_sessions(self.bundle.manifest, self.sessions)
        model = self.bundle.manifest["model"]
        self.tokenizer = load_tokenizer(self.bundle.path / "tokenizer.json")
        if self.tokenizer.get_vocab_size() < model["vocab_size"]:
            # Token ids the model can choose would have no text: refused now, not mid-caption.
            raise BundleError(
                f"{self.bundle.path / 'tokenizer.json'}: {self.tokenizer.get_vocab_size()} tokens, fewer "
                f"than the model's vocab_size {model['vocab_size']}; export the bundle again with its own "
                "tokenizer"
            )
        self.preprocessing = self.bundle.preprocessing
        self.defaults = DecodingOptions.from_dict(self.bundle.manifest["generation"])
        kv = self.bundle.io_dtype("decoder", "past_key_values.0.key")
        self.shape = DecoderShape(
            model["n_layer"],
            model["n_head"],
            model["head_dim"],
            model["embed_dim"],
            np.float16 if kv == "float16" else np.float32,
        )
        self.clip_dim = model["clip_dim"]
        on_cuda = self.sessions["decoder"].get_providers()[0] == CUDA
        self.io_binding = on_cuda if io_binding is None else io_binding
        self.device = "cuda" if on_cuda else "cpu"

    def options(
        self, options: DecodingOptions | None = None, *, stop_strings: Sequence[str] = (), **overrides: Any
    ) -> DecodingOptions:
        """The bundle's defaults, then ``options``, then keyword overrides, validated as a whole.

        ``stop_strings`` add to ``stop_token_ids`` every token whose text contains one of them
        (e.g. "." stops at ".", ".\n", "..."), so both decoders, here and in PyTorch, see only ids.
        """
        base = options or self.defaults
        if stop_strings:
            ids = set(overrides.get("stop_token_ids", base.stop_token_ids)) | self._tokens_containing(
                tuple(stop_strings)
            )
            overrides["stop_token_ids"] = tuple(sorted(ids))
        try:
            chosen = base.override(**overrides)
        except TypeError as e:
            raise ConfigError(f"unknown decoding option: {e}") from None
        model = self.bundle.manifest["model"]
        chosen.check_context(model["prefix_length"], model["n_positions"])
        if any(t >= model["vocab_size"] for t in chosen.stop_token_ids):
            raise ConfigError(
                f"stop_token_ids {list(chosen.stop_token_ids)}: this model's token ids are "
                f"0..{model['vocab_size'] - 1}"
            )
        return chosen

    @functools.lru_cache(maxsize=8)  # noqa: B019 - a few stop-string sets per captioner, kept with it
    def _tokens_containing(self, strings: tuple[str, ...]) -> frozenset[int]:
        if any(not s for s in strings):
            raise ConfigError("stop strings must not be empty")
        vocab = self.tokenizer.get_vocab_size()
        texts = self.tokenizer.decode_batch([[i] for i in range(vocab)], skip_special_tokens=False)
        return frozenset(i for i, text in enumerate(texts) if any(s in text for s in strings))

    def caption(
        self,
        images: ImageSource | Sequence[ImageSource],
        options: DecodingOptions | None = None,
        *,
        batch_size: int = 16,
        errors: str = "raise",
        **overrides: Any,
    ) -> Caption | list[Caption] | list[Caption | ImageError]:
        """Caption one image (returns a Caption) or many (returns a list, in order).

        Images: paths, bytes, binary file objects, PIL images or H x W x 3 uint8 arrays. With
        ``errors="return"`` an input that cannot be read gives its ImageError in its place and the
        others are still captioned; with "raise" (default) the first bad input raises.
        """
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        options = self.options(options, **overrides)
        if errors not in ("raise", "return"):
            raise ConfigError(f"errors must be 'raise' or 'return', got {errors!r}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        results: list[Caption | ImageError | None] = [None] * len(items)
        for start in range(0, len(items), batch_size):
            chunk = range(start, min(start + batch_size, len(items)))
            loaded, where = [], []
            for i in chunk:
                try:
                    # One image at a time, so an image whose mode cannot become RGB fails alone.
                    loaded.append(preprocess([load_image(items[i])], self.preprocessing))
                    where.append(i)
                except ImageError as e:
                    if errors == "raise":
                        raise
                    results[i] = e
            if loaded:
                pixels = np.concatenate(loaded)
                embeds = self.sessions["image_encoder"].run(None, {"pixel_values": pixels})[0]
                for i, c in zip(where, self._caption_embeds(embeds, options), strict=True):
                    results[i] = c
        return results[0] if single else results  # type: ignore[return-value]

    def caption_embeddings(
        self,
        embeddings: np.ndarray,
        options: DecodingOptions | None = None,
        *,
        batch_size: int = 64,
        **overrides: Any,
    ) -> list[Caption]:
        """Caption CLIP image embeddings [batch, D] (as the bundle's CLIP computes them, not normalised):
        float16/32/64, finite; anything else is refused with OptionsError."""
        embeddings = check_embeddings(embeddings, "embeddings", dim=self.clip_dim, error=ConfigError)
        options = self.options(options, **overrides)
        out: list[Caption] = []
        for start in range(0, len(embeddings), batch_size):
            out += self._caption_embeds(embeddings[start : start + batch_size].astype(np.float32), options)
        return out

    def _caption_embeds(self, embeds: np.ndarray, options: DecodingOptions) -> list[Caption]:
        try:
            return self._run_graphs(embeds, options)
        except Exception as e:
            # The manifest passed its checks, but a graph still refused the inputs its sizes imply
            # (e.g. n_positions larger than the decoder's position table): the bundle is inconsistent.
            if not type(e).__module__.startswith("onnxruntime"):
                raise
            raise BundleError(
                f"{self.bundle.path}: a graph failed on inputs the manifest's sizes allow ({e}); "
                "the manifest does not match its graphs: export the bundle again"
            ) from None

    def _run_graphs(self, embeds: np.ndarray, options: DecodingOptions) -> list[Caption]:
        prefix = self.sessions["mapper"].run(None, {"image_embeds": embeds})[0]
        if self.io_binding:
            inference = IOBindingInference(
                self.sessions["decoder"], self.shape, self.device, reorder=self.sessions.get("cache_reorder")
            )
        else:
            inference = NumpyInference(self.sessions["decoder"], self.shape)
        generations = decode(inference, prefix, options)
        if not all(np.isfinite(g.score) for g in generations):
            # Options cannot cause this (they are checked); only a graph computing NaN/Inf can, and a
            # NaN score would reach the JSON output, which has no NaN.
            raise BundleError(
                f"{self.bundle.path}: the decoder computed NaN or Inf log-probabilities; the graph is "
                "broken: export the bundle again"
            )
        return [
            Caption(self.tokenizer.decode(g.tokens, skip_special_tokens=True), g.tokens, g.score)
            for g in generations
        ]
