"""CI's check that `clipcap serve` works as the README says, in an install without torch.

    python tools/serve_smoke.py BUNDLE_DIR [BUNDLE_DIR ...] --image PNG [--image PNG ...]

Starts ``clipcap serve NAME=BUNDLE ...`` on a free loopback port, waits for /readyz, posts each
image to each model (one raw ``image/png`` body, then all images as one multipart request), and
checks every served caption equals ``clipcap caption --json`` on the same bundle and image; then
SIGTERM, and the server must exit 0. Standard library only, so the runtime venv needs nothing
more than the ``[serve]`` extra. Traffic goes to 127.0.0.1 only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, server: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited early with status {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url}/readyz did not answer 200 within {seconds} s")


def post(url: str, body: bytes, content_type: str) -> dict:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.loads(r.read())


def multipart(images: list[Path]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for image in images:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{image.name}"\r\n'
            f"Content-Type: image/png\r\n\r\n".encode()
            + image.read_bytes()
            + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def direct_captions(clipcap: str, bundle: Path, images: list[Path]) -> list[str]:
    out = subprocess.run(
        [clipcap, "caption", *map(str, images), "--bundle", str(bundle), "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    return [json.loads(line)["caption"] for line in out.splitlines()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("--image", action="append", type=Path, required=True)
    args = parser.parse_args()
    clipcap = str(Path(sys.executable).with_name("clipcap"))
    names = [f"m{i}" for i in range(len(args.bundles))]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            clipcap,
            "serve",
            *(f"{n}={b}" for n, b in zip(names, args.bundles, strict=True)),
            "--port",
            str(port),
        ],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_ready(url, server)
        for name, bundle in zip(names, args.bundles, strict=True):
            expected = direct_captions(clipcap, bundle, args.image)
            raw = [post(f"{url}/v1/captions?model={name}", i.read_bytes(), "image/png") for i in args.image]
            got_raw = [r["results"][0]["caption"] for r in raw]
            body, content_type = multipart(args.image)
            got_multi = [
                r["caption"] for r in post(f"{url}/v1/captions?model={name}", body, content_type)["results"]
            ]
            if not (got_raw == got_multi == expected):
                raise SystemExit(f"{name}: served {got_raw} / {got_multi}, clipcap caption gave {expected}")
            print(f"serve smoke: {name} ({bundle.name}): {len(expected)} captions equal clipcap caption's")
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
    if code != 0:
        raise SystemExit(f"the server exited with {code} after SIGTERM, not 0")
    print("serve smoke: SIGTERM drained and exited 0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
