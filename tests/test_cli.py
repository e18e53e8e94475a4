"""The clipcap command line: help without torch, checkpoint commands, errors without tracebacks."""

from __future__ import annotations

import json
import os
import shlex
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
        (["--top-k", "-1", "--strategy", "top-k"], "top_k must be >= "),
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


# --- the registry ---------------------------------------------------------------------------------


def _subparsers(parser):
    import argparse

    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices


def test_registry_lists_every_command_module_once():
    import importlib
    import pkgutil

    import clipcap.cli
    from clipcap.cli import COMMANDS, build_parser, command_modules

    modules = {m.name for m in pkgutil.iter_modules(clipcap.cli.__path__)} - {"__main__", "flags"}
    assert sorted(COMMANDS) == sorted(modules) and len(set(COMMANDS)) == len(COMMANDS)
    assert {
        "info",
        "convert",
        "export",
        "caption",
        "embed",
        "train",
        "eval",
        "demo",
        "bench",
        "serve",
        "push",
    } == set(COMMANDS)
    for name in COMMANDS:
        module = importlib.import_module(f"clipcap.cli.{name}")
        assert isinstance(module.HELP, str) and callable(module.add_arguments) and callable(module.run)
    available = command_modules()
    assert list(_subparsers(build_parser())) == list(available)  # in COMMANDS' order
    assert set(COMMANDS) - set(available) <= {"serve"}  # only serve may wait for its module


def test_serve_is_offered_exactly_when_its_module_exists():
    from clipcap.cli import serve

    try:
        importlib_module = __import__("clipcap.serve.command", fromlist=["run"])
    except ModuleNotFoundError:
        importlib_module = None
    assert serve.available() == (importlib_module is not None)


def test_serve_delegates_to_clipcap_serve_command(monkeypatch, capsys):
    import types

    from clipcap.errors import ConfigError

    calls = []
    fake = types.ModuleType("clipcap.serve.command")

    def add_arguments(parser):
        parser.add_argument("bundle")
        parser.add_argument("--port", type=int, default=8000)

    def run(args):
        calls.append((args.bundle, args.port))
        if args.port == 1:
            raise ConfigError("--port 1: give a port >= 1024")
        return 0

    fake.add_arguments, fake.run = add_arguments, run
    monkeypatch.setitem(sys.modules, "clipcap.serve.command", fake)
    assert main(["serve", "b", "--port", "9000"]) == 0 and calls == [("b", 9000)]
    assert main(["serve", "b", "--port", "1"]) == 2
    assert capsys.readouterr().err == "clipcap serve: error: --port 1: give a port >= 1024\n"


def test_every_command_has_help_text_and_shows_its_defaults():
    import argparse

    from clipcap.cli import HelpFormatter, build_parser

    for name, sub in _subparsers(build_parser()).items():
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if action.help is argparse.SUPPRESS:  # an old spelling, kept as an alias
                assert action.default is argparse.SUPPRESS, (name, action.option_strings)
                continue
            assert action.help, f"clipcap {name} {action.option_strings or action.dest}: no help text"
            shown = HelpFormatter(name)._get_help_string(action)
            if action.default not in (None, False, True, [], argparse.SUPPRESS):
                assert "default" in shown, (name, action.option_strings)
    helps = {name: sub.format_help() for name, sub in _subparsers(build_parser()).items()}
    assert "images per batch (decoder rows at once) (default: 16)" in helps["caption"]
    assert "images per batch (default: 64)" in helps["embed"]
    assert "ONNX opset (default: 18)" in helps["export"]
    assert "(default: None)" not in "".join(helps.values())


HEAVY = ("torch", "transformers", "open_clip", "onnxruntime", "onnx")


def test_every_command_help_runs_without_torch_and_imports_nothing_heavy():
    from clipcap.cli import command_modules
    from clipcap.cli.bench import serve_module

    commands = [[name] for name in command_modules()]
    if serve_module() is not None:
        commands.append(["bench", "serve"])
    code = (
        "import contextlib, io, json, sys\n"
        "sys.modules['torch'] = None\n"
        "from clipcap.cli import main\n"
        "out = {}\n"
        f"for argv in [[]] + {commands!r}:\n"
        "    text = io.StringIO()\n"
        "    with contextlib.redirect_stdout(text):\n"
        "        try:\n"
        "            main([*argv, '--help'])\n"
        "        except SystemExit as e:\n"
        "            assert e.code == 0, (argv, e.code)\n"
        "    out[' '.join(argv)] = text.getvalue()\n"
        f"heavy = sorted(set({HEAVY!r}) & {{m for m, v in sys.modules.items() if v is not None}})\n"
        "print(json.dumps({'help': out, 'heavy': heavy}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["heavy"] == []
    for argv in commands:
        text = report["help"][" ".join(argv)]
        assert text.startswith(f"usage: clipcap {' '.join(argv)} "), argv
    for name in command_modules():
        assert f"\n    {name} " in report["help"][""]


def test_python_dash_m_runs_the_same_main():
    done = subprocess.run([sys.executable, "-m", "clipcap.cli", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("clipcap-onnx ")


# --- exit codes -----------------------------------------------------------------------------------


def test_exit_codes(monkeypatch, capsys):
    import clipcap.cli.info
    from clipcap.errors import DataError

    def interrupted(args):
        raise KeyboardInterrupt

    def refused(args):
        raise DataError(f"{args.checkpoint}: malformed")

    assert main([]) == 0
    monkeypatch.setattr(clipcap.cli.info, "run", interrupted)
    assert main(["info", "x.pt"]) == 130
    assert capsys.readouterr().err == "clipcap info: interrupted\n"
    monkeypatch.setattr(clipcap.cli.info, "run", refused)
    assert main(["info", "x.pt"]) == 2
    assert capsys.readouterr().err == "clipcap info: error: x.pt: malformed\n"
    with pytest.raises(SystemExit) as usage:
        main(["caption", "a.jpg"])  # no --bundle
    assert usage.value.code == 2
    assert "clipcap caption: error: the following arguments are required: --bundle" in capsys.readouterr().err


def test_caption_without_inputs_is_a_usage_error(tiny_bundle, capsys):
    assert main(["caption", "--bundle", str(tiny_bundle[0])]) == 2
    assert capsys.readouterr().err == (
        "clipcap caption: error: give INPUT paths or --embeddings FILE (one of the two)\n"
    )


# --- a reader that goes away: `clipcap caption ... | head -1` -------------------------------------


def test_closed_stdout_ends_quietly(tiny_bundle, images):
    (good, other), _ = images
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line: every write is EPIPE
    try:
        done = subprocess.run(
            [sys.executable, "-m", "clipcap.cli", "caption", good, other, "--bundle", str(tiny_bundle[0])],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write)
    assert done.returncode == 141, done.stderr
    assert done.stderr == ""  # no traceback, no "Exception ignored ... BrokenPipeError"


def test_caption_piped_into_head(tiny_bundle, tmp_path):
    np = pytest.importorskip("numpy")
    # 3000 rows: more output than a pipe holds, so the writer is still writing when head exits.
    np.save(tmp_path / "e.npy", np.random.default_rng(0).normal(size=(3000, 32)).astype(np.float32))
    command = (
        f"{shlex.quote(sys.executable)} -m clipcap.cli caption --embeddings {tmp_path / 'e.npy'} "
        f'--bundle {tiny_bundle[0]} --max-new-tokens 1 --json | head -1; echo "status $PIPESTATUS" >&2'
    )
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300)
    assert len(done.stdout.splitlines()) == 1 and json.loads(done.stdout)["input"].endswith("e.npy[0]")
    assert done.stderr.strip() in ("status 141", "status 0"), done.stderr  # 0: it all fit before head left
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


# --- flags: one meaning everywhere ----------------------------------------------------------------


def _parse(*argv):
    from clipcap.cli import build_parser

    return build_parser().parse_args(list(argv))


DECODING = ["--strategy", "top-k", "--top-k", "5", "--top-p", "0.5", "--temperature", "0.7"]
DECODING += ["--beam-size", "3", "--length-penalty", "0.5", "--max-new-tokens", "9"]
DECODING += ["--min-new-tokens", "2", "--seed", "4"]


def test_decoding_flags_read_back_the_same_on_caption_and_eval():
    from clipcap.cli.flags import decoding_overrides

    expected = dict(strategy="top_k", top_k=5, top_p=0.5, temperature=0.7, beam_size=3, length_penalty=0.5)
    expected.update(max_new_tokens=9, min_new_tokens=2, seed=4)
    caption = _parse("caption", "a.jpg", "--bundle", "b", *DECODING)
    evaluation = _parse("eval", "--bundle", "b", "--data", "d", *DECODING)
    assert decoding_overrides(caption) == decoding_overrides(evaluation) == expected
    assert decoding_overrides(_parse("caption", "a.jpg", "--bundle", "b")) == {}
    assert decoding_overrides(_parse("eval", "--bundle", "b", "--data", "d")) == {}


def test_runtime_flags_read_back_the_same_everywhere():
    from clipcap.cli.flags import runtime_settings

    caption = ["caption", "a.jpg", "--bundle", "b"]
    assert runtime_settings(_parse(*caption)) == {
        "provider": "cpu",
        "fallback_to_cpu": False,
        "threads": None,
    }
    new = runtime_settings(_parse(*caption, "--provider", "cuda", "--fallback-to-cpu", "--threads", "2"))
    old = runtime_settings(_parse(*caption, "--provider", "cuda", "--fallback-cpu", "--threads", "2"))
    assert new == old == {"provider": "cuda", "fallback_to_cpu": True, "threads": 2}
    assert runtime_settings(_parse("eval", "--provider", "cuda")) == {"provider": "cuda"}
    assert runtime_settings(_parse("bench", "--provider", "cuda", "--threads", "2")) == {
        "provider": "cuda",
        "threads": 2,
    }
    assert (
        runtime_settings(_parse("eval"))["provider"] == runtime_settings(_parse("bench"))["provider"] == "cpu"
    )


@pytest.mark.parametrize("command", ["export", "embed"])
def test_clip_flags_parse_the_same_on_export_and_embed(command):
    clip = ["--clip", "ViT-B-32", "--clip-weights", "w.pt", "--clip-config", "c.json"]
    args = _parse(command, "src", "-o", "out", *clip)
    assert (args.clip, args.clip_weights, args.clip_config) == ("ViT-B-32", "w.pt", "c.json")


def test_embed_needs_clip_and_export_does_not(capsys):
    assert _parse("export", "ckpt", "-o", "b").clip is None
    with pytest.raises(SystemExit):
        _parse("embed", "data.jsonl", "-o", "e")
    assert "--clip" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["info", "convert", "export"])
def test_checkpoint_flags_the_same_on_each_command(command):
    out = [] if command == "info" else ["-o", "o"]
    flags = ["--normalize-prefix", "--gpt2-config", "gpt2", "--mapper-heads", "4"]
    for spelling in ("--checkpoint-format", "--format"):  # --format: the old spelling
        args = _parse(command, "ckpt", *out, spelling, "original", *flags)
        assert args.checkpoint_format == "original" and args.checkpoint == "ckpt"
        assert (args.normalize_prefix, args.gpt2_config, args.mapper_heads) == (True, "gpt2", 4)
    assert _parse(command, "ckpt", *out).checkpoint_format == "auto"


def test_format_means_one_thing_per_command():
    assert _parse("embed", "d.tsv", "-o", "e", "--clip", "x:y", "--format", "conceptual").data_format == (
        "conceptual"
    )
    assert _parse("embed", "d.tsv", "-o", "e", "--clip", "x:y").data_format == "auto"
    from clipcap.cli import build_parser

    for name, sub in _subparsers(build_parser()).items():  # no --format in any help: it was two things
        assert "--format" not in sub.format_help(), name


@pytest.mark.parametrize(
    "argv",
    [
        ["convert", "ckpt"],
        ["export", "ckpt"],
        ["embed", "data.jsonl", "--clip", "x:y"],
        ["train", "--data", "d", "--variant", "mlp"],
        ["eval"],
        ["demo"],
        ["bench"],
    ],
)
def test_every_command_that_writes_takes_dash_o(argv):
    short = _parse(*argv[:1], "-o", "there", *argv[1:])
    long = _parse(*argv[:1], "--out", "there", *argv[1:])
    assert short.out == long.out == "there"


def test_json_is_json_lines_on_stdout(tiny_bundle, tmp_path, capsys):
    pytest.importorskip("pycocoevalcap")
    np = pytest.importorskip("numpy")
    from clipcap.data.embeddings import write_embeddings

    records = [
        {"image": f"{i}.jpg", "image_id": str(i), "captions": ["a cat"], "split": "test"} for i in range(2)
    ]
    data = write_embeddings(tmp_path / "set", np.zeros((2, 32), np.float32), records)
    base = [
        "eval",
        "--bundle",
        str(tiny_bundle[0]),
        "--data",
        str(data),
        "--no-java",
        "--max-new-tokens",
        "2",
    ]
    assert main([*base, "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["data"]["images"] == 2
    for flag in ("-o", "--json"):  # --json FILE: the old spelling of -o FILE
        assert main([*base, flag, str(tmp_path / f"{flag}.json")]) == 0
        assert f"wrote {tmp_path / f'{flag}.json'}" in capsys.readouterr().out
        assert json.loads((tmp_path / f"{flag}.json").read_text())["scores"]["n"] == 2


# --- clipcap bench and clipcap bench serve ---------------------------------------------------------


@pytest.fixture
def fake_serve_bench(monkeypatch):
    import types

    calls = []
    fake = types.ModuleType("clipcap.benchmarks.serve_command")

    def add_arguments(parser):
        parser.add_argument("--url", default="http://127.0.0.1:8000")
        parser.add_argument("-o", "--out", metavar="FILE.json")

    def run(args):
        calls.append(("serve", args.url, args.out))
        return 0

    fake.add_arguments, fake.run = add_arguments, run
    monkeypatch.setitem(sys.modules, "clipcap.benchmarks.serve_command", fake)
    return calls


@pytest.fixture
def bench_calls(monkeypatch):
    import clipcap.cli.bench

    calls = []
    monkeypatch.setattr(
        clipcap.cli.bench, "run", lambda args: calls.append(("bench", args.quick, args.out)) or 0
    )
    return calls


def test_bench_serve_dispatches_to_its_module(fake_serve_bench, bench_calls, capsys):
    assert main(["bench", "--quick", "-o", "b.json"]) == 0
    assert main(["bench"]) == 0
    assert main(["bench", "serve", "--url", "http://h:1", "-o", "s.json"]) == 0
    assert main(["bench", "serve"]) == 0
    assert bench_calls == [("bench", True, "b.json"), ("bench", False, None)]
    assert fake_serve_bench == [("serve", "http://h:1", "s.json"), ("serve", "http://127.0.0.1:8000", None)]
    with pytest.raises(SystemExit) as done:
        main(["bench", "serve", "--help"])
    assert done.value.code == 0 and "usage: clipcap bench serve" in capsys.readouterr().out


def test_bench_serve_errors_name_it(fake_serve_bench, monkeypatch, capsys):
    from clipcap.errors import ConfigError

    def refuse(args):
        raise ConfigError("--url nowhere: not an http:// URL")

    monkeypatch.setattr(sys.modules["clipcap.benchmarks.serve_command"], "run", refuse)
    assert main(["bench", "serve", "--url", "nowhere"]) == 2
    assert capsys.readouterr().err == "clipcap bench serve: error: --url nowhere: not an http:// URL\n"


def test_bench_alone_works_without_the_serve_module(bench_calls, monkeypatch):
    monkeypatch.setitem(sys.modules, "clipcap.benchmarks.serve_command", None)  # imports as if absent
    assert main(["bench", "--quick"]) == 0 and bench_calls == [("bench", True, None)]
    with pytest.raises(SystemExit) as usage:
        main(["bench", "serve"])
    assert usage.value.code == 2


def test_info_on_a_bundle_needs_no_torch(tiny_bundle):
    bundle = str(tiny_bundle[0])
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from clipcap.cli import main\n"
        f"sys.exit(main(['info', {bundle!r}]) or main(['info', {bundle!r}, '--json']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text, line = done.stdout.rsplit("\n", 2)[:2]
    assert any(row.startswith("precision") and row.endswith(" fp32") for row in text.splitlines()), text
    assert json.loads(line)["precision"] == "fp32"


def test_info_on_a_bundle_refuses_checkpoint_settings(tiny_bundle, capsys):
    assert main(["info", str(tiny_bundle[0]), "--mapper-heads", "4"]) == 2
    assert "is a bundle, which records its own settings: --mapper-heads" in capsys.readouterr().err


def test_bench_serve_reaches_the_real_module_when_present(monkeypatch, bench_calls):
    from clipcap.cli.bench import serve_module

    module = serve_module()
    if module is None:
        pytest.skip("clipcap.benchmarks.serve_command is not written yet")
    seen = []
    monkeypatch.setattr(module, "run", lambda args: seen.append(args._command) or 0)
    assert main(["bench", "serve", "--quick"]) == 0 and seen == ["bench serve"]
    assert main(["bench", "--quick"]) == 0 and bench_calls == [("bench", True, None)]


def test_caption_embeddings_reads_npy_and_embedding_sets_and_refuses_bad_files(tiny_bundle, tmp_path, capsys):
    np = pytest.importorskip("numpy")
    from clipcap.data.embeddings import write_embeddings

    bundle = ["--bundle", str(tiny_bundle[0]), "--max-new-tokens", "2"]
    records = [
        {"image": f"{i}.jpg", "image_id": str(i), "captions": ["a cat"], "split": "test"} for i in range(2)
    ]
    embeds = np.random.default_rng(1).normal(size=(2, 32)).astype(np.float32)
    data = write_embeddings(tmp_path / "set", embeds, records)
    np.save(tmp_path / "e.npy", embeds)
    assert main(["caption", "--embeddings", str(tmp_path / "e.npy"), *bundle]) == 0
    from_npy = [line.split("\t")[1] for line in capsys.readouterr().out.splitlines()]
    assert main(["caption", "--embeddings", str(data), *bundle]) == 0
    from_set = [line.split("\t")[1] for line in capsys.readouterr().out.splitlines()]
    assert from_npy == from_set and len(from_set) == 2
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY junk")
    for bad in (tmp_path / "bad.npy", tmp_path / "missing.npy"):
        assert main(["caption", "--embeddings", str(bad), *bundle]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"clipcap caption: error: {bad}") and err.count("\n") == 1, err


@pytest.mark.parametrize("spelling", ["top_k", "top-k"])
def test_both_strategy_spellings_are_taken(spelling):
    from clipcap.cli import build_parser
    from clipcap.cli.flags import decoding_overrides

    args = build_parser().parse_args(["caption", "x.png", "--bundle", "b", "--strategy", spelling])
    assert decoding_overrides(args)["strategy"] == "top_k"


@pytest.mark.parametrize(
    "argv",
    [
        ["embed", "d.jsonl", "-o", "e", "--clip", "x:y"],
        ["train", "--data", "d", "--variant", "mlp", "-o", "o"],
    ],
)
def test_device_defaults_to_auto(argv):
    from clipcap.cli import build_parser

    assert build_parser().parse_args(argv).device == "auto"
