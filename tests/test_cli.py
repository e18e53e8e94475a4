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
        (["--format", "seed"], "--format seed given, but the weights are original-transformer"),
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
