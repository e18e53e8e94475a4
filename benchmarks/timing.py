"""Stage timers and percentiles: what one timed run records, and how runs are summarised.

A run captions a batch end to end and records the wall time of each stage: ``preprocess``
(images -> pixels), ``image_encoder``, ``mapper``, ``prefill`` (the decoder over the prefix) and
``decode`` (everything between the prefill's output and the last token's: the decoder steps and
the token choices), over ``steps`` decoder steps. ``other`` is what the stages leave out of the
end-to-end time (the first token's choice, detokenising, the backend's own overhead).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

STAGES = ("preprocess", "image_encoder", "mapper", "prefill", "decode_per_token")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linearly interpolated between order statistics (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


@dataclass
class Run:
    """One timed run: seconds per stage, the end-to-end time, the tokens it generated."""

    batch: int
    steps: int = 0  # decoder steps after the prefill (new_tokens - 1)
    seconds: dict[str, float] = field(default_factory=dict)
    e2e: float = 0.0
    tokens: list[list[int]] = field(default_factory=list)

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    @property
    def per_token(self) -> float | None:
        if "decode" not in self.seconds or self.steps < 1:
            return None
        return self.seconds["decode"] / self.steps

    def stages_ms(self) -> dict[str, float | None]:
        s = self.seconds
        out: dict[str, float | None] = {name: (s[name] * 1000 if name in s else None) for name in STAGES[:-1]}
        per_token = self.per_token
        out["decode_per_token"] = None if per_token is None else per_token * 1000
        known = sum(s.values())
        out["other"] = max(self.e2e - known, 0.0) * 1000 if s else None
        return out


class Clock:
    """Times consecutive stages of a run: ``clock.lap("mapper")`` charges the time since the last lap."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.start = self.last = time.perf_counter()

    def lap(self, stage: str) -> float:
        now = time.perf_counter()
        self.run.add(stage, now - self.last)
        self.last = now
        return now

    def skip(self) -> None:
        """Start the next stage now, charging the time since the last lap to no stage."""
        self.last = time.perf_counter()

    def stop(self) -> None:
        self.run.e2e = time.perf_counter() - self.start


@dataclass(frozen=True)
class Summary:
    """Runs of one backend, precision and batch size, summarised by medians and percentiles."""

    e2e_ms_p50: float
    e2e_ms_p90: float
    e2e_ms_p99: float
    per_token_ms_p50: float | None
    captions_per_s: float
    stages_ms: dict[str, float | None]
    runs: int

    @classmethod
    def of(cls, runs: Sequence[Run]) -> Summary:
        if not runs:
            raise ValueError("no runs to summarise")
        e2e = [r.e2e * 1000 for r in runs]
        per_token = [r.per_token * 1000 for r in runs if r.per_token is not None]
        stages: dict[str, float | None] = {}
        for name in (*STAGES, "other"):
            values = [v for r in runs if (v := r.stages_ms()[name]) is not None]
            stages[name] = median(values) if values else None
        p50 = median(e2e)
        return cls(
            e2e_ms_p50=p50,
            e2e_ms_p90=percentile(e2e, 90),
            e2e_ms_p99=percentile(e2e, 99),
            per_token_ms_p50=median(per_token) if per_token else None,
            captions_per_s=runs[0].batch / (p50 / 1000),
            stages_ms=stages,
            runs=len(runs),
        )
