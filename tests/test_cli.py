"""The clipcap command line: help without torch, checkpoint commands, errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from clipcap.cli import main


def test_help_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "info" in out and "convert" in out and "Checkpoint formats" in out


def test_help_runs_without_torch():
    # Block torch at import time: the CLI's parser must not need it.
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from clipcap.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    sys.exit(e.code)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "convert" in result.stdout


def test_missing_torch_is_a_clear_error(tmp_path):
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from clipcap.cli import main\n"
        f"sys.exit(main(['info', {str(tmp_path)!r}]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2
    assert "pip install 'clipcap-onnx[export]'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def pickle_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tests.conftest import make_original

    path = tmp_path / "model.pt"
    torch.save(make_original("original-transformer").state_dict(), path)
    return path


@pytest.fixture
def heads_json(tmp_path):
    path = tmp_path / "gpt2-config.json"
    path.write_text('{"n_head": 4, "n_embd": 64}')
    return str(path)


def test_info_and_convert(pickle_checkpoint, heads_json, tmp_path, capsys):
    assert main(["info", str(pickle_checkpoint), "--gpt2-config", heads_json]) == 0
    out = capsys.readouterr().out
    assert "original-transformer" in out and "prefix_length (P)  4" in out
    assert (
        main(
            [
                "convert",
                str(pickle_checkpoint),
                "--out",
                str(tmp_path / "own"),
                "--gpt2-config",
                heads_json,
                "--normalize-prefix",
            ]
        )
        == 0
    )
    assert main(["info", str(tmp_path / "own"), "--json"]) == 0
    config = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert config["source_format"] == "clipcap-onnx" and config["normalize_prefix"] is True
    assert config["variant"] == "transformer"


def test_bad_checkpoint_is_one_line(tmp_path, capsys):
    pytest.importorskip("torch")
    bad = tmp_path / "bad.pt"
    bad.write_text("not weights")
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"clipcap info: error: {bad}:")
    assert "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--checkpoint-format", "seed"],
            "--checkpoint-format seed given, but the weights are original-transformer",
        ),
        (["--gpt2-config", "gpt3"], "neither a GPT-2 name"),
    ],
)
def test_checkpoint_flag_errors(pickle_checkpoint, heads_json, flags, message, capsys):
    assert main(["info", str(pickle_checkpoint), "--gpt2-config", heads_json, *flags]) == 2
    assert message in capsys.readouterr().err


def test_named_gpt2_sizes(pickle_checkpoint, capsys):
    # A named size gives 12 heads, which a 64-wide model cannot split: the error says so.
    assert main(["info", str(pickle_checkpoint), "--gpt2-config", "gpt2"]) == 2
    assert "not divisible by n_head=12" in capsys.readouterr().err


# --- clipcap caption ------------------------------------------------------------------------------


@pytest.fixture
def images(tmp_path):
    np = pytest.importorskip("numpy")
    from PIL import Image

    paths = []
    for i in range(2):
        path = tmp_path / f"img{i}.png"
        Image.fromarray((np.random.default_rng(i).random((40, 50, 3)) * 255).astype("uint8")).save(path)
        paths.append(str(path))
    (tmp_path / "broken.jpg").write_text("no")
    return paths, str(tmp_path / "broken.jpg")


def test_caption_json_lines_in_order_with_errors(tiny_bundle, images, capsys):
    (good, other), broken = images
    code = main(
        ["caption", good, broken, other, "--bundle", str(tiny_bundle[0]), "--json", "--max-new-tokens", "4"]
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1  # every result printed first, then a failure status
    assert [line["input"] for line in lines] == [good, broken, other]
    assert set(lines[0]) == {"input", "caption", "tokens", "score"} and len(lines[0]["tokens"]) == 4
    assert "not an image file" in lines[1]["error"]


def test_caption_plain_and_embeddings(tiny_bundle, images, tmp_path, capsys):
    np = pytest.importorskip("numpy")
    (good, _), _ = images
    assert (
        main(
            [
                "caption",
                good,
                "--bundle",
                str(tiny_bundle[0]),
                "--strategy",
                "beam",
                "--beam-size",
                "2",
                "--max-new-tokens",
                "3",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.startswith(f"{good}\t")
    np.save(tmp_path / "e.npy", np.zeros((3, 32), np.float32))
    assert (
        main(
            [
                "caption",
                "--embeddings",
                str(tmp_path / "e.npy"),
                "--bundle",
                str(tiny_bundle[0]),
                "--max-new-tokens",
                "2",
                "--json",
            ]
        )
        == 0
    )
    assert [json.loads(x)["input"] for x in capsys.readouterr().out.splitlines()] == [
        f"{tmp_path / 'e.npy'}[{i}]" for i in range(3)
    ]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--top-k", "0", "--strategy", "top-k"], "top_k must be >= 1"),
        (["--top-p", "0"], "top_p must be in (0, 1]"),
        (["--max-new-tokens", "999"], "does not fit"),
        (["--provider", "cuda"], "not available"),
    ],
)
def test_caption_option_errors(tiny_bundle, images, flags, message, capsys):
    import onnxruntime

    if "cuda" in flags and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA is available here")
    (good, _), _ = images
    assert main(["caption", good, "--bundle", str(tiny_bundle[0]), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_caption_runs_without_torch(tiny_bundle, images):
    (good, _), _ = images
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from clipcap.cli import main\n"
        f"sys.exit(main(['caption', {good!r}, '--bundle', {str(tiny_bundle[0])!r},\n"
        "               '--max-new-tokens', '3']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(good)
