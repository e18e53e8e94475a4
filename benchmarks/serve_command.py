"""`clipcap bench serve`'s command line: ``add_arguments(parser)`` and ``run(args) -> int``.

Only argparse at import time. Until the CLI registers it, run it as
``python -m clipcap.benchmarks.serve_command [--quick] ...``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

DESCRIPTION = (
    "Load-test `clipcap serve`: start the server on a loopback port in its own process, once per "
    "scheduler (--batching continuous, static, none; same bundle, threads and limits), and drive it "
    "with an async HTTP client: closed loop at each concurrency, then Poisson arrivals from light load to "
    "twice the closed-loop peak. Workload: the full-size random-weight models of `clipcap bench` "
    "(GPT-2 small + CLIP ViT-B/32; fp32 and int8), each request's max_new_tokens drawn from a range with "
    "EOS off, and the trained bundles of the cache's `clipcap demo` when there is one (real EOS). "
    "Reports captions/s, latency and time-to-first-token percentiles, queue time, rows per decode step, "
    "503/504/failed counts and server RSS per point, the direct Captioner and offline batch-16 baselines, "
    "and issue 13's targets met or missed; JSON, markdown and a plot."
)

EPILOG = """\
Examples:
  clipcap bench serve --quick                      # a tiny model, a few short points (< 2 min; CI)
  clipcap bench serve --out serve.json --markdown serve.md --plot serve.png    # ~20 min on 2 cores
  clipcap bench serve --precisions int8 --schedulers continuous,none --concurrency 16

The first run exports the bundles into --cache (minutes); later runs reuse them, as `clipcap bench`
does. Run nothing else meanwhile: the server and the load generator share the machine.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the tiny model, fp32, concurrency 1,4, open loop at 0.5x and 2x, 1.5 s points (< 2 min)",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--out", metavar="FILE.json", help="the report as JSON")
    out.add_argument("--markdown", metavar="FILE.md", help="the report as markdown, targets included")
    out.add_argument("--plot", metavar="FILE.png", help="latency p50/p99 against throughput per scheduler")
    what = parser.add_argument_group("what to measure")
    what.add_argument("--precisions", metavar="LIST", help="fp32,int8,int4 (default fp32,int8; --quick fp32)")
    what.add_argument("--variant", choices=("mlp", "transformer"), default="mlp", help="default mlp")
    what.add_argument("--schedulers", metavar="LIST", help="continuous,static,none (default: all three)")
    what.add_argument(
        "--concurrency", metavar="LIST", help="closed-loop points (default 1,4,16,64; --quick 1,4)"
    )
    what.add_argument(
        "--load",
        metavar="LIST",
        help="open-loop rates as fractions of the closed-loop peak (default 0.25,0.5,0.7,1,2; --quick 0.5,2)",
    )
    what.add_argument("--tokens", metavar="LOW-HIGH", help="max_new_tokens range per request (default 5-40)")
    what.add_argument(
        "--stream-share",
        type=float,
        default=0.5,
        metavar="F",
        help="share of streamed requests (default 0.5)",
    )
    trained = what.add_mutually_exclusive_group()
    trained.add_argument(
        "--trained", metavar="DIR", help="a `clipcap demo` folder whose bundles are served too"
    )
    trained.add_argument("--no-trained", action="store_true", help="skip the demo's trained bundles")
    what.add_argument(
        "--no-beam-mix",
        action="store_true",
        help="skip the point per scheduler where a quarter of the requests are beam search (4 beams)",
    )
    run_group = parser.add_argument_group("running")
    run_group.add_argument(
        "--duration", type=float, metavar="S", help="seconds of sending per point (default 6)"
    )
    run_group.add_argument(
        "--max-requests", type=int, metavar="N", help="requests per point at most (default 400)"
    )
    run_group.add_argument(
        "--threads", type=int, metavar="N", help="the server's threads (default: all cores)"
    )
    run_group.add_argument(
        "--max-batch-rows", type=int, default=16, metavar="N", help="server limit (default 16)"
    )
    run_group.add_argument(
        "--max-waiting", type=int, default=64, metavar="N", help="server limit (default 64)"
    )
    run_group.add_argument(
        "--waiting-served-ratio",
        type=float,
        default=0.5,
        metavar="R",
        help="the continuous server's --waiting-served-ratio (default 0.5, as `clipcap serve`'s)",
    )
    run_group.add_argument(
        "--request-timeout", type=float, default=60.0, metavar="S", help="server's deadline (default 60)"
    )
    run_group.add_argument("--seed", type=int, default=0, help="draws the requests and arrivals (default 0)")
    run_group.add_argument(
        "--cache",
        metavar="DIR",
        help="bundles, shared with `clipcap bench` (default ~/.cache/clipcap-onnx/bench)",
    )


def options_from(args: argparse.Namespace):
    from pathlib import Path

    from clipcap.benchmarks.options import DEFAULT_CACHE, parse_list
    from clipcap.benchmarks.serve_run import ServeBenchOptions

    from clipcap.errors import ConfigError

    tokens = None
    if args.tokens:
        try:
            low, high = (int(t) for t in args.tokens.split("-"))
        except ValueError:
            raise ConfigError(f"--tokens: give LOW-HIGH, e.g. 5-40, got {args.tokens!r}") from None
        tokens = (low, high)
    given = {
        "precisions": parse_list(args.precisions, "--precisions"),
        "schedulers": parse_list(args.schedulers, "--schedulers"),
        "concurrency": parse_list(args.concurrency, "--concurrency", int),
        "load_fractions": parse_list(args.load, "--load", float),
        "tokens": tokens,
        "duration": args.duration,
        "max_requests": args.max_requests,
        "threads": args.threads,
        "trained": Path(args.trained) if args.trained else None,
        "trained_check": False if args.no_trained else (True if args.trained else None),
    }
    return ServeBenchOptions(
        quick=args.quick,
        variant=args.variant,
        stream_share=args.stream_share,
        beam_mix=not args.no_beam_mix,
        max_batch_rows=args.max_batch_rows,
        max_waiting=args.max_waiting,
        waiting_served_ratio=args.waiting_served_ratio,
        request_timeout=args.request_timeout,
        seed=args.seed,
        cache_dir=Path(args.cache) if args.cache else DEFAULT_CACHE,
        out=args.out,
        markdown=args.markdown,
        plot=args.plot,
        **{k: v for k, v in given.items() if v is not None},
    )


def run(args: argparse.Namespace) -> int:
    from clipcap.benchmarks.serve_report import summary
    from clipcap.benchmarks.serve_run import run_serve_bench

    options = options_from(args)
    report = run_serve_bench(options)
    print(summary(report))
    broken = [s["scheduler"] for w in report["workloads"] for s in w["servers"] if s.get("error")]
    return 1 if broken else 0


def main(argv: Sequence[str] | None = None) -> int:
    from clipcap.errors import ClipCapError

    parser = argparse.ArgumentParser(prog="clipcap bench serve")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ClipCapError as e:
        print(f"clipcap bench serve: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clipcap bench serve: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
