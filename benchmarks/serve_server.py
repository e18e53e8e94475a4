"""One `python -m clipcap.serve` process for the load benchmark: a free loopback port, ready
when /readyz says so, its RSS, stopped (SIGTERM, then SIGKILL) whatever happens."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from clipcap.benchmarks.serve_options import (
    ServeBenchOptions,
    Workload,
)

from clipcap.errors import ConfigError

Say = Callable[[str], None]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m clipcap.serve`` in its own process on a loopback port; stopped on exit."""

    def __init__(self, options: ServeBenchOptions, workload: Workload, scheduler: str, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"server-{workload.name}-{scheduler}.log"
        self.command = [
            sys.executable,
            "-m",
            "clipcap.serve",
            f"{workload.name}={workload.bundle}",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--batching",
            scheduler,
            "--max-batch-rows",
            str(options.max_batch_rows),
            "--max-waiting",
            str(options.max_waiting),
            "--request-timeout",
            str(options.request_timeout),
            "--threads",
            str(options.threads),
            "--waiting-served-ratio",
            str(options.waiting_served_ratio),
        ]
        self.startup_timeout = options.startup_timeout
        self.process: subprocess.Popen | None = None
        self.exit_code: int | None = None

    def __enter__(self) -> Server:
        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT)
        self.started = time.perf_counter()
        return self

    def wait_ready(self) -> float:
        import httpx

        deadline = time.perf_counter() + self.startup_timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise ConfigError(
                    f"the server exited with status {self.process.returncode} before it was ready:\n"
                    f"  {' '.join(self.command)}\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return time.perf_counter() - self.started
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise ConfigError(f"the server was not ready after {self.startup_timeout:.0f} s:\n{self.log_tail()}")

    def rss_bytes(self) -> int | None:
        return process_rss(self.process.pid) if self.process else None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(f"  | {line}" for line in text[-lines:])

    def __exit__(self, *_) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.exit_code = self.process.returncode if self.process else None
        self.log.close()


def process_rss(pid: int) -> int | None:
    """Resident memory of a process (/proc on Linux, psutil elsewhere when installed)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except Exception:
        return None
