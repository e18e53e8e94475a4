"""Measure dataset captioning (issue 14): the streamed, pipelined job against the plain loop.

    python -m clipcap.benchmarks.dataset --demo DEMO_DIR --full FULL_BUNDLE [--out docs/benchmarks/dataset]

For each bundle, the same warm Captioner, the same files and threads:

- ``pipelined``: ``clipcap.scale.dataset.caption_dataset`` (what ``clipcap caption`` runs now),
  every row written to a JSON-lines file as it comes;
- ``plain loop``: ``Captioner.caption(paths, batch_size=16, errors="return")``, which is what
  ``clipcap caption`` ran before (load 16, run them to the end, next 16; print at the end);
- ``offline batch 16`` (full size only): ``clipcap bench``'s onnxruntime backend on 16 decoded
  pictures at a time, the figure the issue's target is stated against.

Also the time to the first result, and the peak RSS of ``clipcap caption -o`` in a fresh process
at N and 10 x N inputs (a stdin list repeating the files). Workloads: the demo's trained bundle on
its own pictures (real EOS), and a full-size random bundle (GPT-2 small, ViT-B/32) on 640 x 480
JPEGs, once with every caption exactly ``--tokens`` long and once with mixed lengths (a stop
string standing in for EOS: captions of 2 to 40 tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from clipcap.machine import cpu_name, package_version


def photos(folder: Path, n: int) -> list[str]:
    """n 640 x 480 JPEGs with photo-like content (smooth gradients and noise, ~60 KB each)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:480, 0:640]
    paths = []
    for i in range(n):
        base = np.stack([(x * (i % 7 + 1) / 9) % 256, (y * (i % 5 + 1) / 7) % 256, (x + y) / 5 % 256], -1)
        image = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i:04}.jpg"
        Image.fromarray(image).save(path, quality=90)
        paths.append(str(path))
    return paths


def time_pipelined(captioner, paths, options, batch: int, threads: int, out: Path) -> dict:
    from clipcap.scale.dataset import caption_dataset

    start = time.perf_counter()
    first = None
    with open(out, "w") as file:
        for result in caption_dataset(captioner, paths, options, max_batch_rows=batch, workers=threads):
            file.write(json.dumps(result.row()) + "\n")
            file.flush()
            if first is None:
                first = time.perf_counter() - start
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "images_per_s": len(paths) / seconds, "first_result_s": first}


def time_plain(captioner, paths, options, batch: int) -> dict:
    start = time.perf_counter()
    results = captioner.caption(paths, options, batch_size=batch, errors="return")
    seconds = time.perf_counter() - start
    assert len(results) == len(paths)
    return {"seconds": seconds, "images_per_s": len(paths) / seconds, "first_result_s": seconds}


def peak_rss(bundle: str, paths: list[str], repeat: int, flags: list[str], threads: int) -> dict:
    """``clipcap caption - -o FILE`` in a fresh process, fed the list ``repeat`` times on stdin."""
    code = (
        "import resource, sys; from clipcap.cli import main; code = main(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(code)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.jsonl"
        command = [sys.executable, "-c", code, "caption", "-", "--bundle", bundle, "-o", str(out)]
        command += ["--quiet", "--threads", str(threads), *flags]
        listing = "".join(f"{p}\n" for p in paths) * repeat
        start = time.perf_counter()
        done = subprocess.run(command, input=listing, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        if done.returncode not in (0, 1):
            raise RuntimeError(done.stderr[-2000:])
        rows = out.read_text().count("\n")
    return {
        "inputs": len(paths) * repeat,
        "rows": rows,
        "peak_rss_mib": int(done.stderr.strip().splitlines()[-1]) / 1024,
        "seconds": seconds,
    }


def measure(name, bundle, paths, overrides, flags, args, offline_tokens=None) -> dict:
    from clipcap.runtime import Captioner

    captioner = Captioner(bundle, threads=args.threads)
    options = captioner.options(**overrides)
    captioner.caption(paths[:2], options)  # warm-up
    say = lambda s: print(f"[{name}] {s}", file=sys.stderr, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        new = time_pipelined(captioner, paths, options, args.batch, args.threads, Path(tmp) / "o.jsonl")
        say(f"pipelined: {new['images_per_s']:.2f} images/s, first result {new['first_result_s']:.2f} s")
        rows = [json.loads(line) for line in (Path(tmp) / "o.jsonl").read_text().splitlines()]
    old = time_plain(captioner, paths, options, args.batch)
    say(f"plain loop: {old['images_per_s']:.2f} images/s")
    checked = min(32, len(paths))
    plain_tokens = [c.tokens for c in captioner.caption(paths[:checked], options, batch_size=args.batch)]
    same = sum(r.get("tokens") == t for r, t in zip(rows[:checked], plain_tokens, strict=True))
    lengths = [len(r["tokens"]) for r in rows if "tokens" in r]
    out = {
        "bundle": str(bundle),
        "images": len(paths),
        "options": overrides,
        "pipelined": new,
        "plain_loop": old,
        "speedup": new["images_per_s"] / old["images_per_s"],
        "identical_tokens": [same, checked],
        "tokens_mean": float(np.mean(lengths)),
        "tokens_min": int(min(lengths)),
        "tokens_max": int(max(lengths)),
    }
    del captioner
    if offline_tokens:
        from clipcap.benchmarks.backends import OnnxRuntimeBackend
        from clipcap.benchmarks.timing import Summary

        backend = OnnxRuntimeBackend(bundle, "fp32", "cpu", args.threads, offline_tokens)
        pictures = [Path(p).read_bytes() for p in paths[:16]]
        backend.caption(pictures)
        s = Summary.of([backend.caption(pictures) for _ in range(3)])
        backend.close()
        out["offline_batch16_images_per_s"] = s.captions_per_s
        out["vs_offline"] = new["images_per_s"] / s.captions_per_s
        say(f"offline batch 16: {s.captions_per_s:.2f} images/s")
    if args.rss and name == "demo":  # the pipeline's memory; 10 x 200 full-size captions take 7 min
        out["rss"] = [peak_rss(bundle, paths, r, flags, args.threads) for r in (1, 10)]
        say("peak RSS " + ", ".join(f"{r['inputs']} inputs {r['peak_rss_mib']:.0f} MiB" for r in out["rss"]))
    return out


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Dataset captioning: `clipcap caption DIR -o out.jsonl`",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores; {m['threads']} ONNX Runtime threads; onnxruntime "
        f"{m['onnxruntime']}. Reproduce: `{report['command']}`.",
        "",
        "| workload | images | tokens (mean, min-max) | pipelined images/s | plain loop images/s | "
        "speed-up | first result | offline batch 16 | vs offline |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, w in report["workloads"].items():
        offline = w.get("offline_batch16_images_per_s")
        lines.append(
            f"| {name} | {w['images']} | {w['tokens_mean']:.1f}, {w['tokens_min']}-{w['tokens_max']} | "
            f"{w['pipelined']['images_per_s']:.2f} | {w['plain_loop']['images_per_s']:.2f} | "
            f"{w['speedup']:.2f}x | {w['pipelined']['first_result_s']:.2f} s | "
            + (f"{offline:.2f} | {w['vs_offline']:.2f}x |" if offline else "- | - |")
        )
    lines.append("")
    for name, w in report["workloads"].items():
        for r in w.get("rss", []):
            lines.append(
                f"- {name}: `clipcap caption - -o FILE` on {r['inputs']} inputs: peak RSS "
                f"{r['peak_rss_mib']:.0f} MiB, {r['seconds']:.1f} s in all (start-up included)"
            )
        same, checked = w["identical_tokens"]
        lines.append(f"- {name}: the plain loop's tokens exactly, first {checked} images: {same}/{checked}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--demo", type=Path, help="a `clipcap demo` folder (its bundle-mlp and images)")
    parser.add_argument("--full", type=Path, help="a full-size fp32 bundle")
    parser.add_argument("--demo-images", type=int, default=2000)
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=20, help="full size: tokens per caption (EOS off)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--no-rss", dest="rss", action="store_false")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/dataset-cpu-2core"))
    args = parser.parse_args(argv)
    workloads = {}
    if args.demo:
        images = sorted(str(p) for p in (args.demo / "data" / "images").iterdir())[: args.demo_images]
        workloads["demo mlp (trained, EOS)"] = measure(
            "demo", str(args.demo / "bundle-mlp"), images, {}, [], args
        )
    if args.full:
        with tempfile.TemporaryDirectory() as tmp:
            paths = photos(Path(tmp) / "photos", args.photos)
            fixed = {"max_new_tokens": args.tokens, "min_new_tokens": args.tokens}
            flags = ["--max-new-tokens", str(args.tokens), "--min-new-tokens", str(args.tokens)]
            workloads[f"full size fp32, 640x480 JPEG, {args.tokens} tokens"] = measure(
                "full", str(args.full), paths, fixed, flags, args, offline_tokens=args.tokens
            )
            # Mixed lengths at full size: a random model has no real EOS, so a stop string stands
            # in for it; greedy captions then end anywhere from 2 to 40 tokens.
            mixed = {"max_new_tokens": 40, "stop_strings": ("x",)}
            workloads["full size fp32, mixed lengths (stop at any token with 'x', <= 40)"] = measure(
                "mixed", str(args.full), paths, mixed, [], args
            )
    report = {
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "threads": args.threads,
            "onnxruntime": package_version("onnxruntime"),
            "load_average": os.getloadavg()[0],
        },
        "command": "python -m clipcap.benchmarks.dataset " + " ".join(argv or sys.argv[1:]),
        "workloads": workloads,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
