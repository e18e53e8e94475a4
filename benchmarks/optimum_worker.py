#!/usr/bin/env python3
"""The Hugging Face Optimum baseline for `clipcap bench`: GPT-2's decode phase with ONNX Runtime.

Runs in its own venv (benchmarks/.venv-optimum, made by benchmarks/optimum-venv.sh), because
optimum-onnx accepts only transformers < 4.58; so it imports only optimum, transformers,
onnxruntime, torch, numpy and the standard library, never the clipcap package:

    benchmarks/.venv-optimum/bin/python benchmarks/optimum_worker.py --config FILE.json
    benchmarks/.venv-optimum/bin/python benchmarks/optimum_worker.py --self-test

The config (JSON object):
    gpt2_dir       a local Hugging Face GPT-2 directory (config.json + model.safetensors)
    batch_sizes    list of batch sizes to measure
    new_tokens     tokens generated per caption (the prefill gives the first, then one step each)
    threads        ONNX Runtime intra-op threads (default: all cores)
    runs, warmup   timed repetitions at batch 1, after `warmup` untimed ones (default 10, 2); larger
                   batches, which serve the throughput figures, take max(3, runs // batch) after
                   one warm-up, as `clipcap bench` does for its own backends
    cache_dir      where the exported ONNX model is kept, keyed by a hash of gpt2_dir's files and
                   of the exporter's versions, so the export (slow) happens once per model
    prefix_length  length of the stand-in prompt (default 10, ClipCap's prefix length)
    provider       "cpu" (default) or "cuda"

GPT-2 is exported by optimum's exporter (task "text-generation-with-past": one decoder with past
key values in and out) and run with ORTModelForCausalLM. ClipCap's prefix is a sequence of
embeddings, which ORTModelForCausalLM does not take, so a prompt of prefix_length token ids stands
in for it: the same shapes, the same attention cost. Measured: the prefill, then greedy steps with
the KV cache, each step timed (logits to argmax included, as a captioner does).

Prints ONE JSON list to stdout, one dict per batch size; everything else goes to stderr. An error
ends as one line on stderr and a nonzero exit status (2: a bad config; 1: anything else).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
DEFAULTS = {"threads": None, "runs": 10, "warmup": 2, "prefix_length": 10, "provider": "cpu"}
REQUIRED = ("gpt2_dir", "batch_sizes", "new_tokens", "cache_dir")
EXPORT_TASK = "text-generation-with-past"
NOTES = (
    "Hugging Face Optimum baseline: GPT-2 exported by optimum's exporter ({task}) and run by "
    "ORTModelForCausalLM (optimum-onnx {optimum_onnx}, onnxruntime {ort}, transformers "
    "{transformers}, {provider}, {threads} intra-op threads). Decode phase only: no CLIP image "
    "encoder, no mapper. ClipCap's prefix is embeddings, which ORTModelForCausalLM does not take: a "
    "prompt of {prefix} token ids of the same length stands in for it. e2e = prefill (gives the "
    "first token) + {steps} greedy KV-cache steps; per_token = one step's median; {runs} timed runs "
    "after {warmup} warm-up runs at this batch size."
)


class ConfigError(Exception):
    pass


def log(message: str) -> None:
    print(f"optimum_worker: {message}", file=sys.stderr, flush=True)


def load_config(path: str | Path) -> dict:
    try:
        raw = json.loads(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a JSON object")
    return check_config(raw)


def check_config(raw: dict) -> dict:
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise ConfigError(f"config lacks {', '.join(missing)}")
    unknown = sorted(set(raw) - set(REQUIRED) - set(DEFAULTS))
    if unknown:
        log(f"ignoring unknown config keys: {', '.join(unknown)}")
    config = {**DEFAULTS, **{k: v for k, v in raw.items() if v is not None}}

    def positive_int(name: str, minimum: int = 1) -> None:
        value = config[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"config {name} must be an integer >= {minimum}, got {value!r}")

    batches = config["batch_sizes"]
    if isinstance(batches, int) and not isinstance(batches, bool):
        batches = config["batch_sizes"] = [batches]
    if (
        not isinstance(batches, list)
        or not batches
        or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batches)
    ):
        raise ConfigError(f"config batch_sizes must be a non-empty list of integers >= 1, got {batches!r}")
    positive_int("new_tokens")
    positive_int("runs")
    positive_int("warmup", 0)
    positive_int("prefix_length")
    if config["threads"] is not None:
        positive_int("threads")
    if config["provider"] not in PROVIDERS:
        raise ConfigError(
            f"config provider must be one of {', '.join(PROVIDERS)}, got {config['provider']!r}"
        )
    gpt2 = Path(config["gpt2_dir"])
    if not (gpt2 / "config.json").is_file():
        raise ConfigError(f"gpt2_dir {gpt2}: no config.json (a Hugging Face GPT-2 directory is needed)")
    if not any((gpt2 / name).is_file() for name in ("model.safetensors", "pytorch_model.bin")):
        raise ConfigError(f"gpt2_dir {gpt2}: no model.safetensors")
    config["gpt2_dir"] = gpt2
    config["cache_dir"] = Path(config["cache_dir"])
    return config


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("optimum-onnx", "optimum", "transformers", "onnxruntime", "torch"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "none"
    if out["onnxruntime"] == "none":  # the GPU build installs the same module
        with contextlib.suppress(PackageNotFoundError):
            out["onnxruntime"] = version("onnxruntime-gpu")
    return out


def model_key(gpt2_dir: Path, found: dict[str, str]) -> str:
    """A hash of every file under gpt2_dir (names and bytes) and of the exporter's versions."""
    h = hashlib.sha256()
    for file in sorted(p for p in gpt2_dir.rglob("*") if p.is_file()):
        h.update(str(file.relative_to(gpt2_dir)).encode() + b"\0")
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    for package in ("optimum-onnx", "optimum", "transformers", "torch"):
        h.update(f"{package}={found[package]}\0".encode())
    h.update(EXPORT_TASK.encode())
    return h.hexdigest()[:20]


def export(gpt2_dir: Path, cache_dir: Path, found: dict[str, str]) -> Path:
    """The exported model's directory: from the cache, or exported now (into a temporary folder
    first, renamed when complete, so an interrupted export is never taken for a finished one)."""
    target = cache_dir / f"optimum-gpt2-{model_key(gpt2_dir, found)}"
    if (target / "model.onnx").is_file() and (target / "config.json").is_file():
        log(f"using the cached export {target}")
        return target
    from optimum.exporters.onnx import main_export

    cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=cache_dir))
    start = time.perf_counter()
    log(f"exporting {gpt2_dir} with optimum ({EXPORT_TASK}) to {target}")
    try:
        main_export(str(gpt2_dir), output=work, task=EXPORT_TASK, device="cpu", do_validation=False)
        if not (work / "model.onnx").is_file():
            raise RuntimeError(
                f"optimum's export wrote no model.onnx ({sorted(p.name for p in work.iterdir())})"
            )
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"exported in {time.perf_counter() - start:.1f} s")
    return target


def check_provider(provider: str) -> str:
    import onnxruntime as ort

    wanted = PROVIDERS[provider]
    if wanted not in ort.get_available_providers():
        raise RuntimeError(
            f"{wanted} is not available in this onnxruntime ({', '.join(ort.get_available_providers())})"
        )
    return wanted


def load_model(model_dir: Path, provider: str, threads: int | None):
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForCausalLM

    wanted = check_provider(provider)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    model = ORTModelForCausalLM.from_pretrained(
        model_dir, provider=wanted, session_options=options, use_cache=True
    )
    # ONNX Runtime falls back to the CPU silently when CUDA's libraries are missing: check.
    got = model.providers[0]
    if got != wanted:
        raise RuntimeError(f"asked ONNX Runtime for {wanted}, the session runs on {got}")
    return model


class Decoder:
    """Prefill and greedy steps through ORTModelForCausalLM, each timed."""

    def __init__(self, model, provider: str) -> None:
        import inspect

        import torch

        self.model = model
        self.torch = torch
        self.device = torch.device("cuda" if provider == "cuda" else "cpu")
        accepted = inspect.signature(model.forward).parameters
        self.position_ids = "position_ids" in accepted and "position_ids" in getattr(
            model, "input_names", {"position_ids": 0}
        )

    def _sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def _run(self, ids, past, length: int):
        torch = self.torch
        batch, n = ids.shape
        inputs = {
            "input_ids": ids,
            "attention_mask": torch.ones(batch, length, dtype=torch.int64, device=self.device),
            "past_key_values": past,
            "use_cache": True,
        }
        if self.position_ids:
            inputs["position_ids"] = (
                torch.arange(length - n, length, dtype=torch.int64, device=self.device)
                .unsqueeze(0)
                .expand(batch, n)
            )
        out = self.model(**inputs)
        return out.logits[:, -1, :].argmax(-1, keepdim=True), out.past_key_values, out.logits

    def generate(self, prompt, new_tokens: int, keep_logits: bool = False):
        """(prefill seconds, each step's seconds, the tokens, each position's next-token logits when
        keep_logits: the prefill's then each step's, [batch, vocab] each)."""
        torch = self.torch
        prompt = prompt.to(self.device)
        kept = []
        with torch.inference_mode():
            self._sync()
            start = time.perf_counter()
            token, past, logits = self._run(prompt, None, prompt.shape[1])
            self._sync()
            prefill = time.perf_counter() - start
            tokens, steps = [token], []
            if keep_logits:
                kept.append(logits[:, -1, :].float().cpu().clone())
            length = prompt.shape[1]
            for _ in range(new_tokens - 1):
                length += 1
                start = time.perf_counter()
                token, past, logits = self._run(token, past, length)
                self._sync()
                steps.append(time.perf_counter() - start)
                tokens.append(token)
                if keep_logits:
                    kept.append(logits[:, -1, :].float().cpu().clone())
        return prefill, steps, torch.cat(tokens, dim=1).cpu(), kept


def runs_for(batch: int, warmup: int, runs: int) -> tuple[int, int]:
    """(warm-up runs, timed runs) at a batch size, as `clipcap bench` counts them for its own
    backends: all of them at batch 1 (the latency percentiles), fewer for larger batches."""
    if batch == 1:
        return warmup, runs
    return min(warmup, 1), max(min(3, runs), runs // batch)


def percentile(values, q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def measure(config: dict) -> tuple[list[dict], dict]:
    import numpy as np
    import torch

    found = versions()
    threads = config["threads"] or os.cpu_count() or 1
    torch.set_num_threads(threads)
    check_provider(config["provider"])  # before the export, which takes a while
    model_dir = export(config["gpt2_dir"], config["cache_dir"], found)
    model = load_model(model_dir, config["provider"], threads)
    decoder = Decoder(model, config["provider"])
    vocab = int(model.config.vocab_size)
    if config["prefix_length"] + config["new_tokens"] > int(getattr(model.config, "n_positions", 1 << 30)):
        raise ConfigError("prefix_length + new_tokens is longer than GPT-2's context (n_positions)")
    rng = np.random.default_rng(0)
    new_tokens, prefix = config["new_tokens"], config["prefix_length"]
    results, last = [], {}
    for batch in config["batch_sizes"]:
        warmup, runs = runs_for(batch, config["warmup"], config["runs"])
        notes = NOTES.format(
            task=EXPORT_TASK,
            optimum_onnx=found["optimum-onnx"],
            ort=found["onnxruntime"],
            transformers=found["transformers"],
            provider=PROVIDERS[config["provider"]],
            threads=threads,
            prefix=prefix,
            steps=new_tokens - 1,
            runs=runs,
            warmup=warmup,
        )
        prompt = torch.from_numpy(rng.integers(0, vocab, size=(batch, prefix), dtype=np.int64))
        for _ in range(warmup):
            decoder.generate(prompt, new_tokens)
        e2e, prefills, steps = [], [], []
        for _ in range(runs):
            prefill, step_times, _, _ = decoder.generate(prompt, new_tokens)
            e2e.append(prefill + sum(step_times))
            prefills.append(prefill)
            steps += step_times
        last = {"prompt": prompt, "decoder": decoder}
        ms = [t * 1e3 for t in e2e]
        step_ms = [t * 1e3 for t in steps]
        p50 = percentile(ms, 50)
        results.append(
            {
                "backend": "optimum",
                "precision": "fp32",
                "device": config["provider"],
                "variant": "mlp",
                "batch": batch,
                "new_tokens": new_tokens,
                "e2e_ms_p50": p50,
                "e2e_ms_p90": percentile(ms, 90),
                "e2e_ms_p99": percentile(ms, 99),
                "per_token_ms_p50": percentile(step_ms, 50) if step_ms else None,
                "captions_per_s": batch / (p50 / 1e3) if p50 > 0 else None,
                "roofline_fraction": None,
                "stages_ms": {
                    "prefill": percentile([t * 1e3 for t in prefills], 50),
                    "decode_per_token": percentile(step_ms, 50) if step_ms else None,
                },
                "notes": notes,
            }
        )
        log(
            f"batch {batch}: e2e p50 {p50:.2f} ms, prefill {results[-1]['stages_ms']['prefill']:.2f} ms, "
            f"per token {results[-1]['per_token_ms_p50'] or 0:.3f} ms"
        )
    return results, last


def self_test() -> list[dict]:
    """A tiny random GPT-2, exported and measured (1 batch, 2 tokens); then the prefill's and two
    KV-cache steps' logits are checked against transformers' PyTorch GPT-2 on the same tokens."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    with tempfile.TemporaryDirectory(prefix="optimum-worker-self-test-") as tmp:
        gpt2_dir = Path(tmp) / "gpt2"
        torch.manual_seed(0)
        reference = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2)).eval()
        reference.save_pretrained(gpt2_dir, safe_serialization=True)
        config = check_config(
            {
                "gpt2_dir": str(gpt2_dir),
                "batch_sizes": [1],
                "new_tokens": 2,
                "threads": 1,
                "runs": 2,
                "warmup": 1,
                "cache_dir": str(Path(tmp) / "cache"),
            }
        )
        results, last = measure(config)
        # The prompt, then greedy tokens through the KV cache: every position's logits must match
        # PyTorch's on the whole sequence at once.
        prompt = last["prompt"]
        _, _, tokens, kept = last["decoder"].generate(prompt, 3, keep_logits=True)
        with torch.inference_mode():
            full = reference(input_ids=torch.cat([prompt, tokens[:, :-1]], dim=1)).logits
        expected = full[:, prompt.shape[1] - 1 :, :]
        got = torch.stack(kept, dim=1)
        diff = float((got - expected).abs().max())
        if diff > 1e-3:
            raise RuntimeError(f"self-test: optimum's logits differ from PyTorch's by {diff:.2e}")
        log(
            f"self-test: prefill and KV-cache step logits match PyTorch's (max abs diff {diff:.1e}); "
            f"tokens {tokens[0].tolist()}"
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="optimum_worker.py",
        description="Time GPT-2's decode phase with Hugging Face Optimum (ORTModelForCausalLM).",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--config", metavar="FILE.json", help="what to measure (see this file's docstring)")
    what.add_argument("--self-test", action="store_true", help="a tiny random GPT-2, 1 batch, 2 tokens")
    args = parser.parse_args(argv)
    # Whatever the libraries print goes to stderr: stdout carries the one JSON list only.
    sys.stdout.flush()
    stdout = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    try:
        results = self_test() if args.self_test else measure(load_config(args.config))[0]
    except ConfigError as e:
        log(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except Exception as e:  # one line, never a traceback
        message = " ".join(str(e).split()) or "(no message)"
        log(f"error: {type(e).__name__}: {message}")
        return 1
    stdout.write(json.dumps(results) + "\n")
    stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
