"""Prometheus metrics, named in the style of TGI's and Triton's, one registry per app.

A registry per app (not the process-wide default) so that tests and benchmarks can build many
apps in one process without duplicate-metric errors.
"""

from __future__ import annotations

from clipcap.serve.engine import Observer
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ROWS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "clipcap_request_count",
            "Caption requests answered, by model and outcome (ok, bad_input, too_large, invalid, "
            "rejected, timeout, cancelled, failed)",
            ["model", "outcome"],
            registry=r,
        )
        self.inputs = Counter(
            "clipcap_request_input_count", "Images or embeddings captioned", ["model"], registry=r
        )
        self.tokens = Counter("clipcap_request_generated_tokens", "Tokens generated", ["model"], registry=r)
        self.queue = Gauge("clipcap_queue_size", "Requests waiting to join the batch", ["model"], registry=r)
        self.rows = Gauge("clipcap_batch_current_rows", "Rows in the running batch", ["model"], registry=r)
        self.step_rows = Histogram(
            "clipcap_batch_step_rows", "Rows per decode step", ["model"], buckets=ROWS, registry=r
        )
        self.step_seconds = Histogram(
            "clipcap_batch_step_duration_seconds",
            "One decode step of the whole batch (token choice + decoder run)",
            ["model"],
            buckets=LATENCY,
            registry=r,
        )
        self.durations = {
            name: Histogram(
                f"clipcap_request_{name}_duration_seconds", text, ["model"], buckets=LATENCY, registry=r
            )
            for name, text in (
                ("queue", "From submission to admission into the batch"),
                ("prefill", "Image encoder + mapper + prefill of the admitted requests"),
                ("decode", "From the end of the prefill to the last token"),
                ("total", "From the request's arrival to its answer"),
            )
        }

    def observer(self, model: str) -> Observer:
        return _EngineObserver(self, model)


class _EngineObserver(Observer):
    def __init__(self, metrics: Metrics, model: str) -> None:
        self.m, self.model = metrics, model

    def queue_size(self, n: int) -> None:
        self.m.queue.labels(self.model).set(n)

    def batch_rows(self, n: int) -> None:
        self.m.rows.labels(self.model).set(n)

    def step(self, rows: int, seconds: float) -> None:
        self.m.step_rows.labels(self.model).observe(rows)
        self.m.step_seconds.labels(self.model).observe(seconds)

    def prefill(self, jobs: int, seconds: float) -> None:
        self.m.durations["prefill"].labels(self.model).observe(seconds)
