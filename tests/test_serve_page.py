"""The web page of `clipcap serve`, in a real browser against a real server.

Playwright (the Python package) drives Debian's chromium (`apt-get install chromium`; Playwright's
own browser download is not used): the page lists the served model, an uploaded picture's caption
streams in token by token and equals the API's non-streamed caption for the same picture and
options, and a file that is not an image gets its error on its own card. A screenshot is saved in
the test's folder.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

OPTIONS = {"strategy": "greedy", "max_new_tokens": "10", "min_new_tokens": "10"}
ALL_SETTLED = (
    "[...document.querySelectorAll('#results .card')].every(c => ['done', 'error'].includes(c.dataset.state))"
)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("playwright is not installed (pip install playwright; the browser is Debian's chromium)")
    executable = _chromium()
    if executable is None:
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    """A real `python -m clipcap.serve` on a free loopback port, serving the tiny bundle as "tiny"."""
    httpx = pytest.importorskip("httpx")
    if importlib.util.find_spec("clipcap.serve.__main__") is None:
        pytest.skip("clipcap.serve has no server yet (serve/__main__.py)")
    bundle, _, _ = request.getfixturevalue("tiny_bundle")  # exported only once the server can run
    port = _free_port()
    log = tmp_path_factory.mktemp("serve_page") / "server.log"
    command = [
        sys.executable,
        "-m",
        "clipcap.serve",
        f"tiny={bundle}",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    command += ["--threads", "1"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                assert process.poll() is None, f"the server exited ({process.returncode}):\n{log.read_text()}"
                assert time.monotonic() < deadline, f"the server was not ready in 120 s:\n{log.read_text()}"
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def pictures(tmp_path):
    """A picture (PNG) and a file that claims to be one and is not."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(7)
    # Smooth colour blobs rather than noise: what a thumbnail of a photo looks like.
    y, x = np.mgrid[0:96, 0:128]
    pixels = np.stack(
        [
            127 + 120 * np.sin(x / 17 + rng.uniform(0, 6)),
            127 + 120 * np.sin(y / 13 + rng.uniform(0, 6)),
            127 + 120 * np.cos((x + y) / 23),
        ],
        axis=-1,
    ).astype(np.uint8)
    good = tmp_path / "shapes.png"
    Image.fromarray(pixels, "RGB").save(good)
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"these are notes, not a picture\n")
    return good, bad


def _api_caption(url: str, path: Path, stream: bool = False) -> dict:
    import httpx

    files = {"image": (path.name, path.read_bytes(), "image/png")}
    response = httpx.post(f"{url}/v1/captions", files=files, data={**OPTIONS, "model": "tiny"}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["results"][0]


def test_page_streams_the_api_caption_and_shows_errors_per_image(browser, server, pictures, tmp_path):
    good, bad = pictures
    page = browser.new_page(viewport={"width": 1200, "height": 760})
    console_errors: list[str] = []
    page.on("pageerror", lambda e: console_errors.append(str(e)))
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))

    page.goto(server)
    assert page.title() == "clipcap serve"
    page.wait_for_function("document.querySelector('#model').options.length > 0", timeout=15_000)
    assert page.locator("#model option").all_inner_texts()[0].startswith("tiny")
    assert page.locator("#model-info").inner_text() != "Loading the models…"
    # Every form control is labelled (the accessible names the page gives them).
    for control in (
        "Bundle",
        "Strategy",
        "Max new tokens",
        "Min new tokens",
        "Stream tokens as they are generated",
    ):
        assert page.get_by_label(control).count() == 1, control
    page.get_by_label("Strategy").select_option("greedy")
    page.get_by_label("Max new tokens").fill(OPTIONS["max_new_tokens"])
    page.get_by_label("Min new tokens").fill(OPTIONS["min_new_tokens"])
    assert page.get_by_label("Stream tokens as they are generated").is_checked()

    page.set_input_files("#file-input", [str(good), str(bad)])
    cards = page.locator("#results .card")
    page.wait_for_function(
        ALL_SETTLED + " && document.querySelectorAll('#results .card').length === 2",
        timeout=60_000,
    )
    done, failed = cards.nth(0), cards.nth(1)
    assert done.get_attribute("data-state") == "done", done.inner_text()
    caption = done.locator(".caption").inner_text()
    expected = _api_caption(server, good)
    assert caption == expected["caption"].strip() or caption == expected["caption"]
    assert len(expected["tokens"]) == 10
    # Streamed token by token: one token event per generated token (at least several), then the result.
    assert int(done.get_attribute("data-token-events")) >= 2
    meta = done.locator(".meta").inner_text()
    assert "first token" in meta and "total" in meta and "10 tokens" in meta
    assert 0 <= int(done.get_attribute("data-ttft-ms")) <= int(done.get_attribute("data-total-ms"))

    # The file that is not a picture: its own card says why, in the API's words.
    assert failed.get_attribute("data-state") == "error"
    message = failed.locator(".error").inner_text()
    import httpx

    response = httpx.post(
        f"{server}/v1/captions",
        files={"image": (bad.name, bad.read_bytes(), "image/png")},
        data={**OPTIONS, "model": "tiny"},
        timeout=60,
    )
    if response.status_code == 200:
        assert message == response.json()["results"][0]["error"]
    else:  # a request whose only image is unusable: 400, and the image's own reason
        body = response.json()
        assert response.status_code == 400 and message.startswith("HTTP 400") and body["error"] in message
        assert all(r["error"] in message for r in body.get("results", []))
    assert failed.get_attribute("role") is None and failed.locator(".error").get_attribute("role") == "alert"
    assert "2 images, 1 captioned, 1 failed" in page.locator("#summary").inner_text()

    # Again without streaming: the same caption, no token events.
    page.get_by_label("Stream tokens as they are generated").uncheck()
    page.get_by_role("button", name="Caption again with these options").click()
    page.wait_for_function(
        "document.querySelector('#results .card').dataset.state === 'done'"
        " && document.querySelector('#results .card').dataset.tokenEvents === '0'",
        timeout=60_000,
    )
    assert done.locator(".caption").inner_text() == caption

    page.get_by_label("Stream tokens as they are generated").check()
    page.get_by_role("button", name="Caption again with these options").click()
    page.wait_for_function(
        ALL_SETTLED,
        timeout=60_000,
    )
    shot = tmp_path / "serve-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("CLIPCAP_SCREENSHOT_DIR"):  # to refresh docs/images/serve-page.png by hand
        shutil.copy(shot, Path(os.environ["CLIPCAP_SCREENSHOT_DIR"]) / "serve-page.png")
    # Nothing was fetched from anywhere but the server, and the page raised no script error.
    assert all(u.startswith(server) or u.startswith("blob:") or u.startswith("data:") for u in requests), (
        requests
    )
    assert console_errors == []
    page.close()


def test_page_shows_a_bad_option_as_the_servers_message(browser, server, pictures):
    good, _ = pictures
    page = browser.new_page()
    page.goto(server)
    page.wait_for_function("document.querySelector('#model').options.length > 0", timeout=15_000)
    page.get_by_label("Strategy").select_option("top_k")
    page.get_by_label("top k").fill("0")  # the server refuses top_k = 0 with the top_k strategy
    page.set_input_files("#file-input", [str(good)])
    card = page.locator("#results .card").first
    page.wait_for_function(
        "document.querySelector('#results .card').dataset.state === 'error'", timeout=60_000
    )
    message = card.locator(".error").inner_text()
    assert message.startswith("HTTP 422") and "top_k" in message
    page.close()
