"""``clipcap serve`` / ``python -m clipcap.serve``: flags, then uvicorn with a draining shutdown.

Argparse only at import: FastAPI, uvicorn and ONNX Runtime load in ``run``, so ``--help`` and the
command line's registry stay light.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from pathlib import Path

from clipcap.errors import OptionsError

log = logging.getLogger("clipcap.serve")

DESCRIPTION = (
    "Serve ClipCap bundles over HTTP: POST /v1/captions (multipart images, an image/* body or JSON "
    "embeddings; stream=true for Server-Sent Events), /healthz, /readyz, /metrics, /v1/models and a web "
    "page at /. One decode loop per bundle batches requests continuously. See docs/serving.md."
)
EPILOG = """examples:
  clipcap serve demo-out/bundles/mlp
  clipcap serve mlp=demo-out/bundles/mlp int8=bundles/mlp-int8 --port 8080 --max-batch-rows 64
  curl -F image=@dog.jpg 'http://127.0.0.1:8000/v1/captions?strategy=beam&beam_size=3'
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "bundles",
        nargs="+",
        metavar="BUNDLE | NAME=BUNDLE",
        help="bundle directories to serve (clipcap export's output); NAME=BUNDLE names one, a bare "
        "BUNDLE is named by its folder name; clients pick one with the model option",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=8000, help="port to listen on; 0 picks a free one (default: %(default)s)"
    )
    parser.add_argument(
        "--batching",
        choices=("continuous", "static", "none"),
        default="continuous",
        help="admission rule: continuous joins requests between decode steps; static waits up to "
        "--batch-wait-ms, then runs that batch to completion; none serves one request at a time "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--max-batch-rows",
        type=int,
        default=32,
        help="most decoder rows in one step (an image takes one row, beam_size rows with beam search); "
        "requests wait for room (default: %(default)s)",
    )
    parser.add_argument(
        "--max-waiting",
        type=int,
        default=256,
        help="most requests waiting per bundle; beyond it requests get 503 + Retry-After at once "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        default=5.0,
        help="static batching: how long an idle server waits for more requests (default: %(default)s)",
    )
    parser.add_argument(
        "--waiting-served-ratio",
        type=float,
        default=0.5,
        metavar="R",
        help="continuous batching: while a batch runs, let waiting requests join only once the rows "
        "they can take reach R x the running rows (TGI's rule: the encoder and prefill then run on "
        "groups; more throughput and a lower p99 under load, a later first token); 0 admits between "
        "every two steps (default: %(default)s)",
    )
    parser.add_argument(
        "--max-waiting-steps",
        type=int,
        default=8,
        metavar="N",
        help="with --waiting-served-ratio: a waiting request joins after N decode steps whatever the "
        "ratio says (default: %(default)s)",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=60.0,
        help="seconds from arrival to answer; past it a request gets 504 and leaves the batch "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--max-body-mb",
        type=float,
        default=32.0,
        help="largest request body in MiB; larger gets 413 without being read (default: %(default)s)",
    )
    parser.add_argument(
        "--max-images",
        type=int,
        default=16,
        help="most images (or embeddings) per request; more gets 413 (default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="ONNX Runtime intra-op threads per session (default: all cores)",
    )
    parser.add_argument(
        "--provider",
        choices=("cpu", "cuda"),
        default="cpu",
        help="ONNX Runtime provider (default: %(default)s)",
    )
    parser.add_argument(
        "--fallback-to-cpu",
        action="store_true",
        help="run on the CPU when --provider cuda is not available (default: an error)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=30.0,
        help="on SIGTERM or Ctrl-C: seconds requests in flight get to finish before the exit "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="log level; info logs one line per request with its id (default: %(default)s)",
    )
    # --ray, --ray-address, --replicas, --min/--max-replicas, --cpus-per-replica. Argparse only:
    # ray itself loads in run, and only with --ray.
    from clipcap.scale.ray_serve import add_ray_serve_arguments

    add_ray_serve_arguments(parser)


def parse_bundles(specs: list[str]) -> dict[str, Path]:
    named: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).resolve().name, spec
        if not name or not path:
            raise OptionsError(f"{spec!r}: give a bundle as BUNDLE or NAME=BUNDLE")
        if name in named:
            raise OptionsError(f"two bundles are named {name!r}; name them apart with NAME=BUNDLE")
        named[name] = Path(path)
    return named


def _check(args: argparse.Namespace) -> None:
    for flag, value, low in (
        ("--max-batch-rows", args.max_batch_rows, 1),
        ("--max-waiting", args.max_waiting, 1),
        ("--max-images", args.max_images, 1),
        ("--max-waiting-steps", args.max_waiting_steps, 1),
        ("--waiting-served-ratio", args.waiting_served_ratio, 0),
    ):
        if value < low:
            raise OptionsError(f"{flag} must be >= {low}, got {value}")
    if args.request_timeout <= 0 or args.max_body_mb <= 0 or args.grace < 0 or args.batch_wait_ms < 0:
        raise OptionsError(
            "--request-timeout and --max-body-mb must be > 0, --grace and --batch-wait-ms >= 0"
        )
    if not 0 <= args.port < 65536:
        raise OptionsError(f"--port must be 0..65535, got {args.port}")


def build_app(args: argparse.Namespace):
    """Open every bundle (errors as BundleError / OptionsError) and the app around them."""
    from clipcap.runtime import Captioner
    from clipcap.serve.app import Limits, create_app
    from clipcap.serve.engine import Engine, EngineConfig

    _check(args)
    config = EngineConfig(
        args.batching,
        args.max_batch_rows,
        args.max_waiting,
        args.batch_wait_ms,
        waiting_served_ratio=args.waiting_served_ratio,
        max_waiting_steps=args.max_waiting_steps,
    )
    engines = {
        name: Engine(
            Captioner(
                path, provider=args.provider, fallback_to_cpu=args.fallback_to_cpu, threads=args.threads
            ),
            config,
        )
        for name, path in parse_bundles(args.bundles).items()
    }
    limits = Limits(int(args.max_body_mb * 1024 * 1024), args.max_images, args.request_timeout)
    return create_app(engines, limits=limits)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    _check(args)
    if getattr(args, "ray", False):  # replicas on Ray Serve (clipcap.scale.ray_serve), not uvicorn here
        from clipcap.scale.ray_serve import run_on_ray

        return run_on_ray(args)
    import uvicorn

    app = build_app(args)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    server = DrainingServer(config, app, args.grace)
    server.run()
    return 0


class DrainingServer:
    """uvicorn.Server whose first SIGTERM / Ctrl-C drains: /readyz and new requests get 503, requests
    in flight finish (up to ``grace`` seconds), then the server exits. A second signal exits now."""

    def __new__(cls, config, app, grace: float):
        import uvicorn

        class _Server(uvicorn.Server):
            def handle_exit(self, sig, frame) -> None:
                if app.state.draining:
                    return super().handle_exit(sig, frame)
                app.state.draining = True
                log.info("draining: %d requests in flight, up to %.0f s", app.state.inflight, grace)
                threading.Thread(target=self._drain, daemon=True).start()

            def _drain(self) -> None:
                end = time.monotonic() + grace
                while app.state.inflight > 0 and time.monotonic() < end:
                    time.sleep(0.02)
                self.should_exit = True

            async def startup(self, sockets=None) -> None:
                await super().startup(sockets)
                for server in self.servers:
                    for sock in server.sockets:
                        host, port = sock.getsockname()[:2]
                        print(
                            f"clipcap serve: listening on http://{host}:{port} (ready at /readyz)", flush=True
                        )

        config.timeout_graceful_shutdown = grace
        return _Server(config)
