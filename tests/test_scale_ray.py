"""The Ray half of captioning at scale, on a local two-node Ray cluster (one CPU per node).

Ray Data: the job's captions are ``Captioner.caption``'s, every input exactly once and in order,
bad images as error rows; a worker node removed mid-job (what that does is documented in
docs/scaling.md and held here). Ray Serve: two replicas answer concurrent HTTP requests on
127.0.0.1 with ``Captioner``'s captions.

The bundle: ``CLIPCAP_TEST_BUNDLES`` names a folder with ``bundle-mlp`` and ``data/images/`` (what
``clipcap demo --quick --out build/demo`` writes; ``make test-ray`` sets it), so the torch-free
``.venv-ray`` tests a real trained bundle. Without it, the tiny random bundle of conftest (which
needs torch to export) with generated pictures; with neither, the tests skip saying so.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pytest.importorskip("ray.serve")

from clipcap.runtime import Captioner  # noqa: E402
from clipcap.scale.ray_data import caption_with_ray, iter_ray_rows  # noqa: E402
from clipcap.scale.sources import Item, iter_items  # noqa: E402

pytestmark = pytest.mark.ray

N_IMAGES = 24


@pytest.fixture(scope="module")
def bundle_and_images(request, tmp_path_factory) -> tuple[Path, list[Path]]:
    folder = os.environ.get("CLIPCAP_TEST_BUNDLES")
    if folder:
        bundle, images = Path(folder) / "bundle-mlp", sorted((Path(folder) / "data" / "images").glob("*.png"))
        if not bundle.is_dir() or len(images) < N_IMAGES:
            pytest.fail(f"CLIPCAP_TEST_BUNDLES={folder}: needs bundle-mlp/ and {N_IMAGES}+ data/images/*.png")
        return bundle, images[:N_IMAGES]
    try:
        import torch  # noqa: F401
    except ImportError:
        pytest.skip(
            "no bundle: set CLIPCAP_TEST_BUNDLES to `clipcap demo --quick`'s folder (make test-ray does), "
            "or install torch for the tiny test bundle"
        )
    bundle = request.getfixturevalue("tiny_bundle")[0]
    import numpy as np
    from PIL import Image

    out = tmp_path_factory.mktemp("ray-images")
    rng = np.random.default_rng(0)
    images = []
    for i in range(N_IMAGES):
        path = out / f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (40 + i, 48, 3), dtype=np.uint8)).save(path)
        images.append(path)
    return bundle, images


@pytest.fixture(scope="module")
def cluster():
    """A head and one worker node, one CPU each, this process connected as the driver."""
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes.add_node(num_cpus=1)
    ray.init(address=nodes.address, log_to_driver=False)
    nodes.wait_for_nodes()
    yield nodes
    ray.shutdown()
    nodes.shutdown()


def expected_rows(bundle: Path, sources: list) -> list[dict]:
    """What ``clipcap caption --json`` would print, from one Captioner, image by image."""
    from clipcap.runtime import ImageError

    captioner = Captioner(bundle, threads=1)
    rows = []
    for key, source in sources:
        result = captioner.caption([source], errors="return")[0]
        if isinstance(result, ImageError):
            rows.append({"input": key, "error": str(result)})
        else:
            rows.append(
                {"input": key, "caption": result.text, "tokens": result.tokens, "score": result.score}
            )
    return rows


def same_rows(got: list[dict], want: list[dict]) -> None:
    assert [r["input"] for r in got] == [r["input"] for r in want]
    for g, w in zip(got, want, strict=True):
        assert set(g) == set(w), (g, w)
        if "error" in w:
            assert g["error"] == w["error"]
        else:
            assert (g["caption"], g["tokens"]) == (w["caption"], w["tokens"])
            assert g["score"] == pytest.approx(w["score"], abs=1e-3)


def test_ray_data_gives_the_sequential_captions_every_input_once(cluster, bundle_and_images, tmp_path):
    bundle, images = bundle_and_images
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    missing = tmp_path / "missing.png"
    as_bytes = images[0].read_bytes()
    items = [
        *iter_items([str(p) for p in images[:10]]),
        Item(str(broken), source=str(broken)),
        Item("shard.tar/0001.png", source=as_bytes),
        Item(str(missing), source=str(missing)),
        Item("manifest.jsonl:3", error="manifest.jsonl:3: no 'path' (a non-empty string) in this row"),
        *iter_items([str(p) for p in images[10:]]),
    ]
    out = tmp_path / "captions.jsonl"
    summary = caption_with_ray(items, str(bundle), {}, out=str(out), workers=2, batch_size=4)
    got = [json.loads(line) for line in out.read_text().splitlines()]

    sources = [(i.key, i.source) for i in items if i.error is None]
    want = expected_rows(bundle, sources)
    want.insert(13, {"input": "manifest.jsonl:3", "error": items[13].error})
    same_rows(got, want)
    assert (summary.captioned, summary.failed) == (len(images) + 1, 3)
    assert "no such file" in got[12]["error"]


def test_the_command_line_on_ray_writes_and_resumes_like_the_local_job(
    cluster, bundle_and_images, tmp_path, capsys
):
    from clipcap.cli import main

    bundle, images = bundle_and_images
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in images[:6]:
        (folder / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "c.jsonl"
    args = ["caption", str(folder), "--bundle", str(bundle), "-o", str(out), "--ray", "--ray-address", "auto"]
    args += ["--workers", "2", "--batch-size", "2"]
    assert main(args) == 0
    want = expected_rows(bundle, [(str(p), str(p)) for p in sorted(folder.iterdir())])
    same_rows([json.loads(line) for line in out.read_text().splitlines()], want)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:3]) + lines[3][:10])  # a kill cut the fourth row short
    assert main([*args, "--resume"]) == 0
    assert "3 captioned, 0 failed, 3 skipped" in capsys.readouterr().err
    same_rows([json.loads(line) for line in out.read_text().splitlines()], want)


def test_bad_options_fail_before_ray_does_any_work(cluster, bundle_and_images):
    from clipcap.errors import OptionsError

    bundle, images = bundle_and_images
    with pytest.raises(OptionsError):
        list(iter_ray_rows(iter_items([str(images[0])]), str(bundle), {"beam_size": 0}))
    with pytest.raises(OptionsError, match="--workers"):
        list(iter_ray_rows(iter_items([str(images[0])]), str(bundle), {}, workers=0))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post_image(url: str, path: Path) -> dict:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{path.name}"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"{url}/v1/captions", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.loads(r.read())


def wait_ready(url: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url}/readyz did not answer 200 within {seconds} s")


def serve_args(bundle: Path, port: int, **changes) -> argparse.Namespace:
    from clipcap.scale.ray_serve import _parser

    args = _parser().parse_args([f"mlp={bundle}", "--ray", "--port", str(port), "--replicas", "2"])
    return argparse.Namespace(**{**vars(args), **changes})


def test_ray_serve_two_replicas_answer_concurrent_requests(cluster, bundle_and_images):
    from clipcap.scale.ray_serve import APP_NAME, build_application
    from ray import serve

    bundle, images = bundle_and_images
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_application(serve_args(bundle, port)), name=APP_NAME, route_prefix="/")
        wait_ready(url)
        replicas = serve.status().applications[APP_NAME].deployments["ClipcapServe"].replica_states
        assert replicas.get("RUNNING") == 2, replicas
        chosen = images[:16]
        with ThreadPoolExecutor(8) as pool:  # bounded: 16 requests, 8 at a time, loopback only
            answers = list(pool.map(lambda p: post_image(url, p), chosen))
        want = expected_rows(bundle, [(str(p), p) for p in chosen])
        for answer, w in zip(answers, want, strict=True):
            (result,) = answer["results"]
            assert (result["caption"], result["tokens"]) == (w["caption"], w["tokens"])
    finally:
        serve.shutdown()


def test_a_worker_node_removed_mid_job(cluster, bundle_and_images, tmp_path):
    """Ray Data restarts the lost actor and retries its tasks (max_restarts / max_task_retries
    -1), and the lost blocks are rebuilt from lineage: the job completes with every input exactly
    once, in order, on the nodes that are left (docs/scaling.md)."""
    bundle, images = bundle_and_images
    extra = cluster.add_node(num_cpus=1)  # the node this test removes; the module's two stay
    cluster.wait_for_nodes()
    # 120 items (each picture five times, under its own key), batches of 2: the removal lands mid-job.
    items = [Item(f"{p}#{n}", source=str(p)) for n in range(5) for p in images]
    keys = []
    start = time.monotonic()
    for i, row in enumerate(iter_ray_rows(items, str(bundle), {}, workers=3, batch_size=2)):
        keys.append(row["input"])
        assert "caption" in row, row
        if i == 4:
            cluster.remove_node(extra)
    assert keys == [item.key for item in items]
    assert time.monotonic() - start < 180
