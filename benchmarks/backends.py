"""The backends: each captions a batch of pictures greedily, exactly ``new_tokens`` tokens per
caption, and records a :class:`~clipcap.benchmarks.timing.Run`.

- ``onnxruntime``: this project's runtime on an exported bundle. The steps of
  ``Captioner.caption`` (load, preprocess, image encoder, mapper, ``decode`` over the decoder's
  KV cache, detokenise) with a clock between them.
- ``pytorch``: PyTorch eager with a KV cache, what most users would write: the CLIP image tower,
  the ClipCap mapper, then transformers' ``GPT2LMHeadModel.generate(inputs_embeds=prefix)``
  holding the same GPT-2 weights.
- ``pytorch-nocache``: the original ClipCap's loop (``clipcap.models.generate.generate_nocache``): one
  picture at a time, the whole sequence through GPT-2 again at every step.
- ``optimum``: optimum's ONNX Runtime GPT-2 (``ORTModelForCausalLM``), run by
  ``benchmarks/optimum_worker.py`` in its own venv (``benchmarks/.venv-optimum``: optimum pins
  transformers versions this project's venv need not share); decode only.

Each backend preprocesses with the runtime's ``preprocess`` (open_clip's transform, bit for bit),
so the stages compare the models, not image libraries. Stage boundaries on CUDA wait for the
device (``torch.cuda.synchronize``), and ONNX Runtime's ``run`` returns when its outputs are ready.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from clipcap.benchmarks.timing import Clock, Run

BENCHMARKS_DIR = Path(__file__).resolve().parent
OPTIMUM_PYTHON = BENCHMARKS_DIR / ".venv-optimum" / "bin" / "python"
OPTIMUM_WORKER = BENCHMARKS_DIR / "optimum_worker.py"
OPTIMUM_SETUP = "bash benchmarks/optimum-venv.sh"


def greedy_options(new_tokens: int):
    """Exactly ``new_tokens`` greedy tokens: no EOS, no stop token."""
    from clipcap.options import DecodingOptions

    return DecodingOptions(
        strategy="greedy", max_new_tokens=new_tokens, min_new_tokens=new_tokens, stop_token_ids=()
    )


# --------------------------------------------------------------------------------------------------
# onnxruntime


class TimedInference:
    """Wraps the runtime's Inference: the prefill's time, then the time from each decoder output to
    the next (a decoder step and the choice of the token it takes)."""

    def __init__(self, inner, run: Run) -> None:
        self.inner, self.run = inner, run
        self.mark = 0.0

    def prefill(self, prefix_embeds: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        logits = self.inner.prefill(prefix_embeds)
        self.mark = time.perf_counter()
        self.run.add("prefill", self.mark - start)
        return logits

    def step(self, tokens: np.ndarray) -> np.ndarray:
        logits = self.inner.step(tokens)
        now = time.perf_counter()
        self.run.add("decode", now - self.mark)
        self.mark = now
        return logits

    def select(self, rows: np.ndarray) -> None:
        self.inner.select(rows)


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, bundle: Path, precision: str, provider: str, threads: int, new_tokens: int) -> None:
        from clipcap.runtime import Captioner

        self.precision = precision
        self.captioner = Captioner(bundle, provider=provider, threads=threads, check_files=False)
        self.device = self.captioner.device
        self.new_tokens = new_tokens
        self.options = self.captioner.options(greedy_options(new_tokens))

    def _inference(self):
        from clipcap.runtime.inference import IOBindingInference, NumpyInference

        c = self.captioner  # as Captioner._caption_embeds makes it
        if c.io_binding:
            return IOBindingInference(
                c.sessions["decoder"], c.shape, c.device, reorder=c.sessions.get("cache_reorder")
            )
        return NumpyInference(c.sessions["decoder"], c.shape)

    def caption(self, images: Sequence[Any]) -> Run:
        from clipcap.runtime import load_image
        from clipcap.runtime.decoding import decode
        from clipcap.runtime.preprocess import preprocess

        c = self.captioner
        run = Run(batch=len(images), steps=self.new_tokens - 1)
        clock = Clock(run)
        pixels = preprocess([load_image(i) for i in images], c.preprocessing)
        clock.lap("preprocess")
        embeds = c.sessions["image_encoder"].run(None, {"pixel_values": pixels})[0]
        clock.lap("image_encoder")
        prefix = c.sessions["mapper"].run(None, {"image_embeds": embeds})[0]
        clock.lap("mapper")
        generations = decode(TimedInference(self._inference(), run), prefix, self.options)
        _texts = [c.tokenizer.decode(g.tokens, skip_special_tokens=True) for g in generations]
        clock.stop()
        run.tokens = [list(g.tokens) for g in generations]
        return run

    def close(self) -> None:
        self.captioner = None


# --------------------------------------------------------------------------------------------------
# PyTorch


class _TorchBase:
    """``precision`` "fp16" (CUDA only) runs CLIP, the mapper and GPT-2 in half precision; the model
    and encoder passed in are converted in place."""

    def __init__(self, model, encoder, device: str, new_tokens: int, precision: str = "fp32") -> None:
        import torch

        from clipcap.tokenizer import load_tokenizer

        self.torch = torch
        self.device = device
        self.precision = precision
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.model = model.to(device=device, dtype=self.dtype).eval()
        self.encoder = encoder.to(device=device, dtype=self.dtype).eval()
        self.new_tokens = new_tokens
        self.tokenizer = load_tokenizer()
        self.preprocessing = encoder.spec.preprocessing

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def _embed(self, images: Sequence[Any], clock: Clock):
        from clipcap.runtime import load_image
        from clipcap.runtime.preprocess import preprocess

        pixels = preprocess([load_image(i) for i in images], self.preprocessing)
        pixels = self.torch.from_numpy(pixels).to(device=self.device, dtype=self.dtype)
        self.sync()
        clock.lap("preprocess")
        embeds = self.encoder(pixels)
        self.sync()
        clock.lap("image_encoder")
        return embeds

    def close(self) -> None:
        self.model = self.encoder = None
        if self.device == "cuda":
            self.torch.cuda.empty_cache()


class _StepClock:
    """A logits processor that only notes when each step's logits are ready."""

    def __init__(self, sync) -> None:
        self.sync = sync
        self.stamps: list[float] = []

    def __call__(self, input_ids, scores):
        self.sync()
        self.stamps.append(time.perf_counter())
        return scores


class PyTorchBackend(_TorchBase):
    """transformers' GPT-2 with its KV cache, through ``generate``: the baseline most users write."""

    name = "pytorch"

    def __init__(self, model, encoder, device: str, new_tokens: int, precision: str = "fp32") -> None:
        super().__init__(model, encoder, device, new_tokens, precision)
        from clipcap.benchmarks.models import hf_gpt2

        self.hf = hf_gpt2(self.model).to(device=device, dtype=self.dtype)

    def caption(self, images: Sequence[Any]) -> Run:
        from transformers import LogitsProcessorList

        torch = self.torch
        run = Run(batch=len(images), steps=self.new_tokens - 1)
        clock = Clock(run)
        with torch.inference_mode():
            embeds = self._embed(images, clock)
            prefix = self.model.prefix(embeds)
            self.sync()
            start = clock.lap("mapper")
            steps = _StepClock(self.sync)
            out = self.hf.generate(
                inputs_embeds=prefix,
                attention_mask=torch.ones(prefix.shape[:2], dtype=torch.long, device=self.device),
                max_new_tokens=self.new_tokens,
                do_sample=False,
                logits_processor=LogitsProcessorList([steps]),
            )
            run.add("prefill", steps.stamps[0] - start)
            run.add("decode", steps.stamps[-1] - steps.stamps[0])
            tokens = out[:, -self.new_tokens :].tolist()
            self.tokenizer.decode_batch(tokens, skip_special_tokens=True)
        clock.stop()
        run.tokens = tokens
        return run

    def close(self) -> None:
        self.hf = None
        super().close()


class _TimedGPT:
    """Stands in for ``model.gpt`` in generate_nocache: the first call after a prefix is the
    prefill, each later one a step (timed from the previous call's output)."""

    def __init__(self, gpt, run: Run, sync, device: str) -> None:
        self.gpt, self.run, self.sync, self.device = gpt, run, sync, device
        self.first = True
        self.mark = 0.0

    def __call__(self, embeds):
        start = time.perf_counter()
        out = self.gpt(embeds)
        self.sync()
        now = time.perf_counter()
        if self.first:
            self.run.add("prefill", now - start)
            self.first = False
        else:
            self.run.add("decode", now - self.mark)
        self.mark = now
        return out

    def embed_tokens(self, input_ids):
        return self.gpt.embed_tokens(input_ids.to(self.device))


class _TimedModel:
    """Stands in for the ClipCapModel in generate_nocache, timing the mapper and GPT-2."""

    def __init__(self, model, run: Run, sync, device: str) -> None:
        self.model, self.run, self.sync = model, run, sync
        self.gpt = _TimedGPT(model.gpt, run, sync, device)

    def prefix(self, clip_embeds):
        start = time.perf_counter()
        out = self.model.prefix(clip_embeds)
        self.sync()
        self.run.add("mapper", time.perf_counter() - start)
        self.gpt.first = True
        return out


class PyTorchNoCacheBackend(_TorchBase):
    """The original ClipCap's generation: one picture at a time, no KV cache."""

    name = "pytorch-nocache"

    def caption(self, images: Sequence[Any]) -> Run:
        from clipcap.models.generate import generate_nocache

        torch = self.torch
        run = Run(batch=len(images), steps=self.new_tokens - 1)
        clock = Clock(run)
        with torch.inference_mode():
            embeds = self._embed(images, clock)
            timed = _TimedModel(self.model, run, self.sync, self.device)
            # stop_token_id -1 is never chosen: every caption gets new_tokens tokens.
            tokens = generate_nocache(
                timed, embeds, max_new_tokens=self.new_tokens, stop_token_id=-1, keep_stop=True
            )
            self.tokenizer.decode_batch(tokens, skip_special_tokens=True)
        clock.stop()
        run.tokens = tokens
        return run


# --------------------------------------------------------------------------------------------------
# optimum (a subprocess in its own venv)


class BackendSkipped(Exception):
    """A backend that cannot run here: the reason, and how to make it run."""

    def __init__(self, reason: str, fix: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.fix = reason, fix


def run_optimum(
    config: dict[str, Any],
    python: Path | None = None,
    worker: Path | None = None,
    timeout: float | None = None,
) -> list[dict[str, Any]]:
    """Run the optimum worker on ``config`` (gpt2_dir, batch_sizes, new_tokens, threads, runs, warmup,
    cache_dir, prefix_length); its result dicts. Raises BackendSkipped when it cannot run."""
    python = Path(python or OPTIMUM_PYTHON)
    worker = Path(worker or OPTIMUM_WORKER)
    check_optimum(python, worker)
    with tempfile.TemporaryDirectory(prefix="clipcap-bench-optimum-") as tmp:
        file = Path(tmp) / "config.json"
        file.write_text(json.dumps(config, default=str))
        try:
            done = subprocess.run(
                [str(python), str(worker), "--config", str(file)],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise BackendSkipped(f"the optimum worker ran past {timeout:.0f} s") from None
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-5:])
        raise BackendSkipped(f"the optimum worker failed (exit {done.returncode}): {tail}")
    results = _json_list(done.stdout)
    if results is None:
        raise BackendSkipped(f"the optimum worker printed no JSON list of results: {done.stdout[-300:]!r}")
    return results


def check_optimum(python: Path, worker: Path) -> None:
    if not python.exists():
        raise BackendSkipped(f"its venv is missing ({python} not found)", f"create it with: {OPTIMUM_SETUP}")
    if not worker.is_file():
        raise BackendSkipped(f"{worker} is missing")


def _json_list(text: str) -> list[dict[str, Any]] | None:
    candidates = [text, *reversed(text.strip().splitlines())]
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(value, list) and all(isinstance(v, dict) for v in value):
            return value
    return None
