"""`clipcap caption` over datasets: every input kind, -o written row by row, --resume after a
kill, bad images mid-stream, the summary. (Single images and options: tests/test_cli.py.)"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")  # the tiny bundle is exported from a PyTorch model

from PIL import Image

from clipcap.cli import main


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """photos/: 40 PNGs in two folders and one broken JPEG among them."""
    root = tmp_path_factory.mktemp("data") / "photos"
    (root / "b").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(40):
        folder = root if i < 20 else root / "b"
        Image.fromarray(rng.integers(0, 256, size=(16 + i, 30, 3), dtype=np.uint8)).save(
            folder / f"{i:02}.png"
        )
    (root / "07x.jpg").write_bytes(b"broken")
    return root


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_folder_to_a_file_in_order_with_the_bad_image_in_its_place(tiny_bundle, dataset, tmp_path, capsys):
    out = tmp_path / "c.jsonl"
    code = main(
        ["caption", str(dataset), "--bundle", str(tiny_bundle[0]), "-o", str(out), "--max-new-tokens", "5"]
    )
    got = rows(out)
    files = sorted(p for p in dataset.iterdir() if p.is_file()) + sorted((dataset / "b").iterdir())
    assert code == 1 and [r["input"] for r in got] == [str(p) for p in files]
    (bad,) = [r for r in got if "error" in r]
    assert bad["input"].endswith("07x.jpg") and "not an image file" in bad["error"]
    err = capsys.readouterr().err
    assert "clipcap caption: 40 captioned, 1 failed, 0 skipped" in err and "images/s" in err
    # The same captions as the files captioned one command line at a time.
    some = [str(files[0]), str(files[-1])]
    assert main(["caption", *some, "--bundle", str(tiny_bundle[0]), "--json", "--max-new-tokens", "5"]) == 0
    plain = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_input = {r["input"]: r for r in got}
    assert [by_input[p]["tokens"] for p in some] == [r["tokens"] for r in plain]


def test_existing_results_are_kept_unless_asked(tiny_bundle, dataset, tmp_path, capsys):
    out = tmp_path / "c.jsonl"
    out.write_text('{"input": "x", "caption": "kept"}\n')
    assert main(["caption", str(dataset), "--bundle", str(tiny_bundle[0]), "-o", str(out)]) == 2
    assert "already has results: pass --resume" in capsys.readouterr().err
    assert out.read_text() == '{"input": "x", "caption": "kept"}\n'
    assert main(["caption", str(dataset), "--bundle", str(tiny_bundle[0]), "--resume"]) == 2
    assert "give one" in capsys.readouterr().err


def test_resume_after_a_kill_loses_no_row_and_writes_none_twice(tiny_bundle, dataset, tmp_path):
    def command(out: Path) -> list[str]:
        caption = [
            sys.executable,
            "-m",
            "clipcap.cli",
            "caption",
            str(dataset),
            "--bundle",
            str(tiny_bundle[0]),
        ]
        return [*caption, "-o", str(out), "--max-new-tokens", "30", "--batch-size", "2", "--threads", "1"]

    out = tmp_path / "c.jsonl"
    job = subprocess.Popen(command(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while (not out.exists() or out.read_text().count("\n") < 5) and time.monotonic() < deadline:
            assert job.poll() is None, "finished before it could be killed: make the job longer"
            time.sleep(0.05)
        os.kill(job.pid, signal.SIGKILL)
    finally:
        job.wait(30)
    with open(out, "a") as file:  # as if the kill had cut a row short
        file.write('{"input": "' + str(dataset / "19.png"))
    before = out.read_text().count("\n")
    assert 5 <= before < 41
    done = subprocess.run([*command(out), "--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1), done.stderr  # 1 if the broken image came after the kill
    assert "its last row was cut short; redoing it" in done.stderr
    assert f"{before} skipped (already in the output)" in done.stderr
    got = rows(out)
    inputs = [r["input"] for r in got]
    assert len(inputs) == len(set(inputs)) == 41
    assert [r["input"] for r in got if "error" in r] == [str(dataset / "07x.jpg")]
    fresh = tmp_path / "fresh.jsonl"
    subprocess.run(command(fresh), capture_output=True, timeout=300)

    def tokens(rows_: list[dict]) -> dict[str, list[int] | None]:
        return {r["input"]: r.get("tokens") for r in rows_}  # scores: equal to float precision

    assert tokens(got) == tokens(rows(fresh))


def test_manifests_shards_globs_and_stdin(tiny_bundle, dataset, tmp_path, capsys, monkeypatch):
    pngs = sorted(dataset.glob("*.png"))[:3]
    (tmp_path / "list.csv").write_text("path,caption\n" + "".join(f"{p},x\n" for p in pngs[:2]))
    (tmp_path / "list.jsonl").write_text(json.dumps({"path": pngs[2].name}) + "\n{oops\n")
    shard = tmp_path / "000.tar"
    with tarfile.open(shard, "w") as archive:
        for name, data in (("k0.png", pngs[0].read_bytes()), ("k0.json", b"{}"), ("k1.jpg", b"bad")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    monkeypatch.chdir(dataset)  # the JSONL's relative path is relative to the manifest, not here
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{pngs[1]}\n"))
    args = ["caption", str(tmp_path / "list.csv"), str(tmp_path / "list.jsonl"), str(shard)]
    args += [
        f"{dataset}/b/2[01].png",
        "-",
        "--bundle",
        str(tiny_bundle[0]),
        "--json",
        "--max-new-tokens",
        "3",
    ]
    assert main(args) == 1
    got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["input"] for r in got] == [
        str(pngs[0]),
        str(pngs[1]),
        str(tmp_path / pngs[2].name),  # the manifest's folder: no such file there
        f"{tmp_path / 'list.jsonl'}:2",
        f"{shard}/k0.png",
        f"{shard}/k1.jpg",
        f"{dataset}/b/20.png",
        f"{dataset}/b/21.png",
        str(pngs[1]),
    ]
    errors = {r["input"]: r["error"] for r in got if "error" in r}
    assert set(errors) == {str(tmp_path / pngs[2].name), f"{tmp_path / 'list.jsonl'}:2", f"{shard}/k1.jpg"}
    assert "no such file" in errors[str(tmp_path / pngs[2].name)]
    assert got[4]["tokens"] == got[0]["tokens"]  # the shard's bytes are the same picture


def test_quiet_prints_only_errors(tiny_bundle, dataset, tmp_path, capsys):
    out = tmp_path / "c.jsonl"
    args = ["caption", str(dataset / "07x.jpg"), str(dataset / "00.png"), "--bundle", str(tiny_bundle[0])]
    assert main([*args, "-o", str(out), "--quiet", "--max-new-tokens", "2"]) == 1
    err = capsys.readouterr().err
    assert "captioned" not in err and err.count("\n") == 1 and "07x.jpg" in err
