"""Cold start: a fresh process imports the runtime, opens a bundle and captions its first picture.

Run as ``python -m clipcap.benchmarks.coldstart BUNDLE IMAGE [--no-check-files]``; prints one JSON
object of seconds: ``import_s`` (``clipcap.runtime``), ``load_s`` (``Captioner(...)``: the manifest,
the SHA-256 of every file unless --no-check-files, the ONNX Runtime sessions), ``first_caption_s``
and ``total_s`` (from the start of this module). Torch-free, as an app embedding the runtime is.
The parent adds ``process_s``, the whole process's wall time, interpreter start included.
"""

from __future__ import annotations

import time

_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clipcap.benchmarks.coldstart")
    parser.add_argument("bundle")
    parser.add_argument("image")
    parser.add_argument("--no-check-files", dest="check_files", action="store_false")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--provider", default="cpu")
    parser.add_argument("--new-tokens", type=int, default=20)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    from clipcap.runtime import Captioner

    t1 = time.perf_counter()
    captioner = Captioner(
        args.bundle, provider=args.provider, threads=args.threads, check_files=args.check_files
    )
    t2 = time.perf_counter()
    captioner.caption(
        args.image,
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        stop_token_ids=(),
        strategy="greedy",
    )
    t3 = time.perf_counter()
    print(
        json.dumps(
            {"import_s": t1 - t0, "load_s": t2 - t1, "first_caption_s": t3 - t2, "total_s": t3 - _START}
        )
    )
    return 0


def measure(
    bundle: Path,
    image: Path,
    *,
    check_files: bool,
    threads: int,
    provider: str,
    new_tokens: int,
) -> dict[str, Any]:
    """Run this module in a fresh interpreter; its timings plus ``process_s``."""
    command = [
        sys.executable,
        "-m",
        "clipcap.benchmarks.coldstart",
        str(bundle),
        str(image),
        "--threads",
        str(threads),
        "--provider",
        provider,
        "--new-tokens",
        str(new_tokens),
    ]
    if not check_files:
        command.append("--no-check-files")
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"cold-start process failed: {done.stderr.strip()[-500:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]), process_s=took)


if __name__ == "__main__":
    sys.exit(main())
