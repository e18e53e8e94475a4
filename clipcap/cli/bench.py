"""`clipcap bench`: the runtime against PyTorch, the original loop and optimum; `clipcap bench serve`.

`clipcap bench [flags]` is the model benchmark. `clipcap bench serve [flags]` benchmarks a running
`clipcap serve`: its flags and run are clipcap.benchmarks.serve_command's, offered once that
module exists.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from clipcap.cli import flags

HELP = "benchmark the runtime against PyTorch, the original loop and optimum, on the same weights"
DESCRIPTION = (
    "Caption the same pictures with every backend on the same full-size random-weight models "
    "(GPT-2 small + CLIP ViT-B/32; an MLP mapper with prefix 10 and a transformer mapper with "
    "prefix 40), exactly --new-tokens greedy tokens each: latency per caption (p50/p90/p99, by "
    "stage) at batch 1, throughput at each batch size, each decode step against the memory "
    "bandwidth's bound (the roofline), cold start, and token agreement between backends. "
    "Writes JSON, markdown and a plot; models and bundles are cached in --cache."
)
EPILOG = """
Examples:
  clipcap bench --quick                                   # about a minute: does it all run?
  clipcap bench -o bench.json --markdown bench.md --plot bench.png
  clipcap bench --backends onnxruntime,pytorch --precisions int8 --batch-sizes 1
  clipcap bench --provider cuda --precisions fp32,fp16    # onnxruntime-gpu and CUDA PyTorch
  clipcap bench serve --help                              # the HTTP service's benchmark

The optimum backend runs in its own venv; make it once with: bash benchmarks/optimum-venv.sh
(without it, the report lists optimum as skipped). The first run exports the bundles (minutes);
later runs take them from --cache. The speed runs use random weights; whether int8 and int4 keep
captions is measured on the models `clipcap demo` trains (--trained DIR, or the cache's demo).
"""

SERVE_MODULE = "clipcap.benchmarks.serve_command"  # add_arguments(parser) and run(args), torch-free


class ServeBench:
    """`clipcap bench serve`, as the registry sees a command: HELP, add_arguments, run."""

    HELP = "benchmark a `clipcap serve` over HTTP: latency, throughput, batching under load"

    def __init__(self, module) -> None:
        self.module = module
        self.DESCRIPTION = getattr(module, "DESCRIPTION", None)
        self.EPILOG = getattr(module, "EPILOG", None)

    def add_arguments(self, parser) -> None:
        self.module.add_arguments(parser)

    def run(self, args) -> int:
        return self.module.run(args)


def serve_module():
    """clipcap.benchmarks.serve_command, or None while it does not exist."""
    try:
        return importlib.import_module(SERVE_MODULE)
    except ModuleNotFoundError as e:
        if e.name != SERVE_MODULE:
            raise
        return None


def add_arguments(parser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a tiny model (mlp), batch sizes 1,4, 8 tokens, 5 runs: does it all run? (about a minute)",
    )
    out = parser.add_argument_group("output")
    flags.add_out_flag(out, metavar="FILE.json", help="the report as JSON")
    out.add_argument("--markdown", metavar="FILE.md", help="the report as markdown, targets included")
    out.add_argument("--plot", metavar="FILE.png", help="latency by stage and throughput (matplotlib)")
    what = parser.add_argument_group("what to measure")
    what.add_argument(
        "--backends",
        metavar="LIST",
        help="comma-separated: onnxruntime, pytorch, pytorch-nocache, optimum (default: all)",
    )
    what.add_argument(
        "--precisions",
        metavar="LIST",
        help="the runtime's: fp32,int8,int4 on cpu (default), fp32,fp16 on cuda",
    )
    what.add_argument("--batch-sizes", metavar="LIST", help="default: 1,4,16,64 (--quick: 1,4)")
    what.add_argument(
        "--new-tokens", type=int, metavar="N", help="tokens per caption (default: 20, --quick 8)"
    )
    what.add_argument(
        "--runs", type=int, metavar="N", help="timed runs at batch 1 after warm-up (default: 20, --quick 5)"
    )
    what.add_argument("--variants", metavar="LIST", help="mlp, transformer (default: both; --quick: mlp)")
    trained = what.add_mutually_exclusive_group()
    trained.add_argument(
        "--trained",
        metavar="DIR",
        help="a `clipcap demo` folder: its trained models are exported at each quantized precision and "
        "their captions of its held-out pictures compared with fp32 (default, without --quick: the "
        "cache's demo, made on first use, about 4 minutes)",
    )
    trained.add_argument(
        "--no-trained", action="store_true", help="skip that check of quantized captions on trained models"
    )
    running = parser.add_argument_group("running")
    flags.add_runtime_flags(
        running,
        provider="cuda: onnxruntime-gpu and CUDA PyTorch",
        fallback=False,
        threads="PyTorch and ONNX Runtime threads",
    )
    running.add_argument(
        "--cache",
        metavar="DIR",
        help="exported bundles and model files, keyed by config (default: ~/.cache/clipcap-onnx/bench)",
    )
    running.add_argument(
        "--optimum-python",
        metavar="PATH",
        help="the optimum venv's python (default: benchmarks/.venv-optimum/bin/python)",
    )
    module = serve_module()
    if module is not None:  # `clipcap bench` alone stays the model benchmark: the subcommand is optional
        from clipcap.cli import add_command

        sub = parser.add_subparsers(
            title="subcommands (optional)",
            description="without one, `clipcap bench` is the model benchmark above",
            dest="_bench",
            metavar="[serve]",
            required=False,
        )
        add_command(sub, "serve", ServeBench(module), _command="bench serve")


def run(args) -> int:
    flags.require_torch("bench")
    from clipcap.benchmarks.options import DEFAULT_CACHE, BenchOptions, parse_list

    given = {
        "backends": parse_list(args.backends, "--backends"),
        "precisions": parse_list(args.precisions, "--precisions"),
        "batch_sizes": parse_list(args.batch_sizes, "--batch-sizes", int),
        "variants": parse_list(args.variants, "--variants"),
        "runs": args.runs,
        "threads": args.threads,
        "new_tokens": args.new_tokens,
        "trained": Path(args.trained) if args.trained else None,
        "trained_check": False if args.no_trained else (True if args.trained else None),
    }
    options = BenchOptions(
        quick=args.quick,
        provider=flags.runtime_settings(args)["provider"],
        cache_dir=Path(args.cache) if args.cache else DEFAULT_CACHE,
        out=args.out,
        markdown=args.markdown,
        plot=args.plot,
        optimum_python=args.optimum_python,
        **{k: v for k, v in given.items() if v is not None},
    )
    from clipcap.benchmarks.report import summary
    from clipcap.benchmarks.run import run_bench

    print(summary(run_bench(options)))
    return 0
