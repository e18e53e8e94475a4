"""``clipcap serve`` as a Ray Serve application: the same FastAPI app, N replicas across a cluster.

Two ways to start it::

    clipcap serve demo-out/bundle-mlp --ray --replicas 2                  # a local Ray, port 8000
    clipcap serve mlp=/shared/bundle-mlp --ray --ray-address auto --min-replicas 1 --max-replicas 8
    serve run clipcap.scale.ray_serve:app_builder bundle=/shared/bundle-mlp replicas=2

Each replica is a Ray actor that builds its own app with ``clipcap.serve.command.build_app``: its
own Captioner per bundle and its own continuous-batching Engine (one decode loop per bundle per
replica), so a replica is exactly one ``clipcap serve`` process and Ray's proxy spreads requests
over them. The app is passed to ``@serve.ingress`` as a builder function, which Ray calls inside
each replica: the ONNX Runtime sessions are never pickled, and the app's lifespan (start the
decode loops, warm up, drain on shutdown) runs in the replica as it does under uvicorn.

Health: the replica opens its bundles and captions once before Ray counts it as started (a bundle
that cannot caption fails the deployment with its error); after that Ray's health check asks the
app's readiness, so a replica that is draining, or whose warm-up never finished, is replaced.
"""

from __future__ import annotations

import argparse
import logging
import signal
import time
from typing import Any

from clipcap.errors import OptionsError, require

log = logging.getLogger("clipcap.serve")

__all__ = ["add_ray_serve_arguments", "app_builder", "build_application", "run_on_ray"]

APP_NAME = "clipcap"
READY_GRACE_S = 60.0
"""How long after a replica started its app may still be warming before its health check fails."""


def add_ray_serve_arguments(parser: argparse._ActionsContainer) -> None:
    """The Ray flags of ``clipcap serve`` (off unless --ray)."""
    group = parser.add_argument_group("Ray Serve (the [ray] extra; docs/scaling.md)")
    group.add_argument(
        "--ray",
        action="store_true",
        help="serve as a Ray Serve application: replicas across a Ray cluster behind Ray's HTTP proxy "
        "on --host/--port; without --ray-address a local Ray is started",
    )
    group.add_argument(
        "--ray-address",
        metavar="ADDR",
        default=None,
        help="join a running Ray cluster (`ray start --head` printed it, or 'auto'); the bundles must be "
        "at the same paths on every node (default: a local Ray)",
    )
    group.add_argument(
        "--replicas",
        type=int,
        default=1,
        metavar="N",
        help="replicas, each with its own engines (decode loops); ignored with --min/--max-replicas "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--min-replicas",
        type=int,
        default=None,
        metavar="N",
        help="autoscale: fewest replicas (with --max-replicas; default: a fixed --replicas)",
    )
    group.add_argument(
        "--max-replicas",
        type=int,
        default=None,
        metavar="N",
        help="autoscale: most replicas; Ray adds one when each holds more than --max-batch-rows "
        "requests (default: a fixed --replicas)",
    )
    group.add_argument(
        "--cpus-per-replica",
        type=float,
        default=1.0,
        metavar="N",
        help="CPUs each replica reserves; --threads defaults to it (default: %(default)s)",
    )


def _check(args: argparse.Namespace) -> None:
    low, high = args.min_replicas, args.max_replicas
    if args.replicas < 1 or args.cpus_per_replica <= 0:
        raise OptionsError(
            f"--replicas must be >= 1 and --cpus-per-replica > 0, got {args.replicas}, "
            f"{args.cpus_per_replica}"
        )
    if (low is None) != (high is None):
        raise OptionsError("autoscaling needs both --min-replicas and --max-replicas")
    if (low is not None and not 0 <= low <= high) or (high is not None and high < 1):
        raise OptionsError(
            f"need 0 <= --min-replicas <= --max-replicas and --max-replicas >= 1, got {low}, {high}"
        )


def build_application(args: argparse.Namespace):
    """The Ray Serve application (``Deployment.bind()``) for ``clipcap serve``'s parsed flags."""
    serve = require("ray.serve", "ray", "ray[serve]")
    from clipcap.serve.command import _check as check_serve_flags
    from clipcap.serve.command import parse_bundles

    _check(args)
    check_serve_flags(args)
    parse_bundles(args.bundles)  # bad specs fail here, not in every replica
    replica_args = argparse.Namespace(**vars(args))
    if replica_args.threads is None:
        replica_args.threads = max(1, int(args.cpus_per_replica))

    def build_replica_app():
        """Runs inside each replica: its own Captioners and Engines, warmed before Ray routes to it."""
        import numpy as np
        from clipcap.serve.command import build_app

        app = build_app(replica_args)
        for engine in app.state.engines.values():
            # The first runs allocate; done here so the replica is warm when it counts as started
            # (the lifespan's own warm-up, which sets readiness, is then a matter of milliseconds).
            zeros = np.zeros((1, engine.captioner.clip_dim), dtype=np.float32)
            engine.captioner.caption_embeddings(zeros, max_new_tokens=2)
        app.state.built_at = time.monotonic()
        return app

    class ClipcapReplica:
        def check_health(self) -> None:
            """Ray's health check, answered by the app's readiness."""
            state = self.app.state
            if state.draining:
                raise RuntimeError("draining: the replica is shutting down")
            if not state.ready and time.monotonic() - state.built_at > READY_GRACE_S:
                raise RuntimeError(f"not ready {READY_GRACE_S:.0f} s after start: the warm-up failed")

    options: dict[str, Any] = {
        "name": "ClipcapServe",
        "ray_actor_options": {
            "num_cpus": args.cpus_per_replica,
            "num_gpus": 1 if args.provider == "cuda" else 0,
        },
        # Continuous batching wants many requests in flight per replica (Ray's default is 5): let
        # the engine's own bounded queue say 503, as it does without Ray.
        "max_ongoing_requests": args.max_waiting + args.max_batch_rows,
        "graceful_shutdown_timeout_s": args.grace,
        "health_check_period_s": 5.0,
    }
    if args.max_replicas is not None:
        options["autoscaling_config"] = {
            "min_replicas": args.min_replicas,
            "max_replicas": args.max_replicas,
            # One image is one batch row: add a replica when each holds about a full batch.
            "target_ongoing_requests": args.max_batch_rows,
        }
    else:
        options["num_replicas"] = args.replicas
    deployment = serve.deployment(**options)(serve.ingress(build_replica_app)(ClipcapReplica))
    return deployment.bind()


def _parser() -> argparse.ArgumentParser:
    from clipcap.serve.command import add_arguments

    parser = argparse.ArgumentParser(prog="serve run clipcap.scale.ray_serve:app_builder", add_help=False)
    add_arguments(parser)  # clipcap serve's flags, this module's Ray group among them
    return parser


def app_builder(config: dict[str, str]):
    """``serve run clipcap.scale.ray_serve:app_builder bundle=DIR [replicas=2 max_batch_rows=64 ...]``.

    ``bundle`` (or ``bundles``) takes ``BUNDLE`` or ``NAME=BUNDLE`` specs separated by commas; every
    other key is a ``clipcap serve`` flag without its dashes (``max_batch_rows=64``,
    ``min_replicas=1``, ``threads=2``; ``true``/``false`` for switches). ``serve run`` owns the host
    and port (its ``--address``/HTTP options), so ``host`` and ``port`` are ignored here."""
    config = dict(config)
    specs = config.pop("bundle", None) or config.pop("bundles", None)
    if not specs:
        raise OptionsError(
            "give the bundles: serve run clipcap.scale.ray_serve:app_builder bundle=DIR[,NAME=DIR]"
        )
    argv = [s for s in specs.split(",") if s]
    for key, value in config.items():
        flag = "--" + key.replace("_", "-")
        if value.lower() in ("true", "false"):
            argv += [flag] if value.lower() == "true" else []
        else:
            argv += [flag, value]
    try:
        args = _parser().parse_args(argv)
    except SystemExit:
        raise OptionsError(f"app_builder: cannot parse {config!r} as clipcap serve flags") from None
    return build_application(args)


def run_on_ray(args: argparse.Namespace) -> int:
    """``clipcap serve --ray``: deploy, print where it listens, serve until SIGTERM or Ctrl-C."""
    ray = require("ray", "ray")
    serve = require("ray.serve", "ray", "ray[serve]")
    application = build_application(args)
    started = not ray.is_initialized()
    if started:
        ray.init(address=args.ray_address) if args.ray_address else ray.init()
    # After ray.init, which installs its own fatal-signal handler (a SIGTERM would abort the
    # driver with a stack dump): SIGTERM unwinds like Ctrl-C, through the cleanup below, whether
    # it comes while the replicas start or while they serve.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(application, name=APP_NAME, route_prefix="/", blocking=False)  # returns once running
        print(
            f"clipcap serve: listening on http://{args.host}:{args.port} via Ray Serve (ready at /readyz)",
            flush=True,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log.info("stopping: Ray Serve drains each replica for up to %.0f s", args.grace)
    finally:
        serve.delete(APP_NAME)  # each replica drains (graceful_shutdown_timeout_s = --grace)
        if started:
            serve.shutdown()
            ray.shutdown()
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
