"""`clipcap bench serve`'s options (one frozen dataclass, validated once), its workloads and
the requests each draws."""

from __future__ import annotations

import dataclasses
import io
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipcap.benchmarks.options import DEFAULT_CACHE
from clipcap.benchmarks.serve_load import (
    Request,
)

from clipcap.errors import ConfigError

Say = Callable[[str], None]


SCHEDULERS = ("continuous", "static", "none")
PRECISIONS = ("fp32", "int8", "int4")
# Order of the runs: static first (its saturation sets the comparison rate), then continuous.
RUN_ORDER = ("static", "continuous", "none")


@dataclass(frozen=True)
class ServeBenchOptions:
    """A `clipcap bench serve` run; ``None`` fields take their default for the mode.

    - ``quick``: the tiny model of `clipcap bench --quick`, fp32, concurrency 1 and 4, open loop at
      0.5x and 2x saturation, 1.5 s points: checks that it all runs (CI); its numbers mean nothing.
    - ``load_fractions``: the open loop's offered rates as fractions of the scheduler's closed-loop peak.
    - ``tokens``: each request's ``max_new_tokens`` is drawn from this inclusive range.
    - ``stream_share``: the share of requests sent with ``stream=true`` (time to first token); the
      others are plain JSON requests (the latency the direct call is compared with).
    - ``trained``: a `clipcap demo` folder whose fp32 bundles are served too (real EOS); by default
      the cache's demo when it exists (`clipcap bench` makes one), never with ``quick``.
    """

    quick: bool = False
    precisions: tuple[str, ...] | None = None  # default fp32,int8; quick fp32
    variant: str = "mlp"
    schedulers: tuple[str, ...] = SCHEDULERS
    concurrency: tuple[int, ...] | None = None  # default 1,4,16,64; quick 1,4
    load_fractions: tuple[float, ...] | None = None  # default 0.25,0.5,0.7,1,2; quick 0.5,2
    duration: float | None = None  # seconds of sending per point; default 6, quick 1.5
    max_requests: int | None = None  # per point; default 400, quick 60
    tokens: tuple[int, int] | None = None  # default (5, 40); quick (4, 12)
    threads: int | None = None  # the server's ONNX Runtime threads (default: all cores)
    max_batch_rows: int = 16
    max_waiting: int = 64
    waiting_served_ratio: float = 0.5  # the continuous server's admission grouping (TGI's rule)
    request_timeout: float = 60.0
    stream_share: float = 0.5
    direct_requests: int | None = None  # default 20, quick 8
    trained: Path | None = None
    trained_check: bool | None = None  # default: not quick, and a demo folder exists
    cache_dir: Path = DEFAULT_CACHE
    out: Path | None = None
    markdown: Path | None = None
    plot: Path | None = None
    seed: int = 0
    startup_timeout: float = 300.0
    beam_mix: bool = True  # one more closed-loop point per scheduler with a quarter of beam requests

    def __post_init__(self) -> None:
        q = self.quick
        defaults = {
            "precisions": ("fp32",) if q else ("fp32", "int8"),
            "concurrency": (1, 4) if q else (1, 4, 16, 64),
            "load_fractions": (0.5, 2.0) if q else (0.25, 0.5, 0.7, 1.0, 2.0),
            "duration": 1.5 if q else 6.0,
            "max_requests": 60 if q else 400,
            "tokens": (4, 12) if q else (5, 40),
            "threads": os.cpu_count() or 1,
            "direct_requests": 8 if q else 20,
        }
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        for name in ("precisions", "schedulers", "concurrency", "load_fractions"):
            object.__setattr__(self, name, tuple(dict.fromkeys(getattr(self, name))))
        object.__setattr__(self, "tokens", tuple(self.tokens))
        for name in ("cache_dir", "out", "markdown", "plot", "trained"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value).expanduser())
        if self.trained_check is None:
            object.__setattr__(self, "trained_check", not q and (self.demo_dir / "report.json").is_file())
        self._validate()

    @property
    def demo_dir(self) -> Path:
        return self.trained if self.trained is not None else self.cache_dir / "demo"

    def _validate(self) -> None:
        problems = []
        unknown = [s for s in self.schedulers if s not in SCHEDULERS]
        if unknown or not self.schedulers:
            problems.append(f"schedulers: name some of {', '.join(SCHEDULERS)}, got {list(self.schedulers)}")
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown or not self.precisions:
            problems.append(f"precisions: name some of {', '.join(PRECISIONS)}, got {list(self.precisions)}")
        if self.variant not in ("mlp", "transformer"):
            problems.append(f"variant must be mlp or transformer, got {self.variant!r}")
        if not self.concurrency or any(not isinstance(c, int) or c < 1 for c in self.concurrency):
            problems.append(f"concurrency: integers >= 1, got {list(self.concurrency)}")
        if any(not 0 < f <= 10 for f in self.load_fractions):
            problems.append(f"load fractions must be in (0, 10], got {list(self.load_fractions)}")
        low, high = self.tokens if len(self.tokens) == 2 else (0, -1)
        if not 1 <= low <= high:
            problems.append(f"tokens: a range LOW-HIGH with 1 <= LOW <= HIGH, got {self.tokens}")
        for name, least in (("duration", 0.1), ("request_timeout", 1.0), ("startup_timeout", 1.0)):
            if not getattr(self, name) >= least:
                problems.append(f"{name} must be >= {least}, got {getattr(self, name)}")
        for name, least in (("max_requests", 1), ("threads", 1), ("max_batch_rows", 1), ("max_waiting", 1)):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < least:
                problems.append(f"{name} must be an integer >= {least}, got {getattr(self, name)!r}")
        if not isinstance(self.direct_requests, int) or self.direct_requests < 0:
            problems.append(f"direct_requests must be an integer >= 0, got {self.direct_requests!r}")
        if not self.waiting_served_ratio >= 0:
            problems.append(f"waiting_served_ratio must be >= 0, got {self.waiting_served_ratio}")
        if not 0 <= self.stream_share <= 1:
            problems.append(f"stream_share must be in [0, 1], got {self.stream_share}")
        if self.trained is not None and not (self.trained / "report.json").is_file():
            problems.append(f"trained: {self.trained} holds no `clipcap demo` report.json")
        for path in (self.out, self.markdown, self.plot):
            if path is not None and not path.parent.is_dir():
                problems.append(f"{path}: no such directory {path.parent} to write into")
        if problems:
            raise ConfigError("invalid serve benchmark options: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in ("cache_dir", "out", "markdown", "plot", "trained"):
            d[name] = None if d[name] is None else str(d[name])
        for name in ("precisions", "schedulers", "concurrency", "load_fractions", "tokens"):
            d[name] = list(d[name])
        return d

    def points(self, trained: bool) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """(concurrencies, load fractions) of a workload: all of them for the random-weight models
        (the targets' workload); for the demo's trained bundles, concurrency 1 and 16 and the open
        loop at 0.7x and 2x (enough to see real EOS lengths under load, within the run's time)."""
        if not trained:
            return self.concurrency, self.load_fractions
        concurrency = tuple(c for c in self.concurrency if c in (1, 16)) or self.concurrency[:1]
        fractions = tuple(f for f in self.load_fractions if f in (0.7, 2.0)) or self.load_fractions[-1:]
        return concurrency, fractions

    def estimate_s(self, workloads: list[Workload]) -> float:
        """A rough upper estimate of the run's length: each point's sending time plus its drain, each
        server's start, and the baselines."""
        total = 0.0
        for w in workloads:
            concurrency, fractions = self.points(w.trained)
            points = len(concurrency) + len(fractions) + 1 + (self.beam_mix and not w.trained)
            per_server = (4 if self.quick else 12) + points * (self.duration + (1 if self.quick else 5))
            per_server += sum(2 * self.duration for f in fractions if f > 1)  # overload points run longer
            total += len(self.schedulers) * per_server + (3 if self.quick else 25)
        return total


@dataclass
class Workload:
    """A bundle served under a name, and how its requests are drawn."""

    name: str
    bundle: Path
    precision: str
    trained: bool  # real EOS (the demo's models) or exactly max_new_tokens (random weights)
    max_tokens_room: int  # n_positions - prefix_length: the most new tokens the model allows
    description: str = ""


# --------------------------------------------------------------------------------------------------
# The run


def bench_images(n: int, seed: int) -> list[bytes]:
    """The benchmark's pictures (`clipcap bench`'s, 640 x 480) as JPEG files, quality 90."""
    from clipcap.benchmarks.models import make_images

    out = []
    for image in make_images(n, seed):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


BEAM_SHARE, BEAM_SIZE = 0.25, 4  # the beam-mix point: a quarter of the requests, 4 beams each


def request_stream(
    options: ServeBenchOptions,
    workload: Workload,
    images: list[bytes],
    model: str | None,
    beam_share: float = 0.0,
) -> Iterator[Request]:
    """The workload's requests, the same sequence every time (seeded): image i % n, greedy,
    max_new_tokens drawn from ``options.tokens``, streamed with probability ``stream_share``;
    with ``beam_share``, that share of them beam search (``BEAM_SIZE`` beams; the lengths and the
    other draws stay the same, from their own generator)."""
    rng = random.Random(options.seed)
    beams = random.Random(options.seed + 1)
    low, high = options.tokens
    high = min(high, workload.max_tokens_room)
    low = min(low, high)
    index = 0
    while True:
        n = rng.randint(low, high)
        stream = rng.random() < options.stream_share
        request_options: dict[str, Any] = {"strategy": "greedy", "max_new_tokens": n}
        if beam_share and beams.random() < beam_share:
            request_options.update(strategy="beam", beam_size=BEAM_SIZE)
        if not workload.trained:
            request_options["min_new_tokens"] = n  # EOS and stop tokens cannot end it early
        if model is not None:
            request_options["model"] = model
        yield Request(
            index, images[index % len(images)], f"picture-{index % len(images)}.jpg", request_options, stream
        )
        index += 1
