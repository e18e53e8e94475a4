"""`clipcap demo`'s progress on stderr: each stage's title and time, and a bar for the pre-training
loops (on a terminal only). Torch-free.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

Say = Callable[[str], None]


def _print(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _Stages:
    """Times each stage and says when it starts and how long it took."""

    def __init__(self, say: Say) -> None:
        self.say = say
        self.seconds: dict[str, float] = {}
        self.start = time.perf_counter()

    @property
    def total(self) -> float:
        return time.perf_counter() - self.start

    def stage(self, key: str, title: str):
        import contextlib

        @contextlib.contextmanager
        def timed():
            self.say(title)
            t0 = time.perf_counter()
            yield
            took = time.perf_counter() - t0
            self.seconds[key] = round(took, 1)
            self.say(f"      {took:.1f} s")

        return timed()


class _bar:
    """A tqdm bar for a pre-training loop (step, loss) -> shown on a terminal only."""

    def __init__(self, total: int, name: str) -> None:
        self.total, self.name = total, name

    def __enter__(self):
        from tqdm.auto import tqdm

        self.tqdm = tqdm(
            total=self.total, desc=f"      {self.name}", leave=False, disable=not sys.stderr.isatty()
        )
        return self

    def __call__(self, step: int, loss: float) -> None:
        self.tqdm.update(1)
        if step % 10 == 0:
            self.tqdm.set_postfix(loss=f"{loss:.3f}")

    def __exit__(self, *exc) -> None:
        self.tqdm.close()
