"""`clipcap bench`: the quick mode end to end, and its parts (percentiles, roofline, options, optimum)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from clipcap.benchmarks.options import BenchOptions, parse_list
from clipcap.benchmarks.timing import Run, Summary, percentile

from clipcap.errors import ConfigError

RESULT_KEYS = {
    "backend",
    "precision",
    "device",
    "variant",
    "batch",
    "new_tokens",
    "e2e_ms_p50",
    "e2e_ms_p90",
    "e2e_ms_p99",
    "per_token_ms_p50",
    "captions_per_s",
    "roofline_fraction",
    "stages_ms",
}
STAGE_KEYS = {"preprocess", "image_encoder", "mapper", "prefill", "decode_per_token"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One quick benchmark (the tiny mlp model, every CPU backend), written to JSON, markdown, PNG."""
    pytest.importorskip("onnx")
    pytest.importorskip("transformers")
    pytest.importorskip("matplotlib")
    from clipcap.benchmarks import run_bench

    folder = tmp_path_factory.mktemp("bench")
    options = BenchOptions(
        quick=True,
        precisions=("fp32", "int8"),  # int4 works the same way; its export would cost ~10 s more
        new_tokens=6,
        runs=3,
        threads=2,
        cache_dir=folder / "cache",
        out=folder / "bench.json",
        markdown=folder / "bench.md",
        plot=folder / "bench.png",
        optimum_python=folder / "no-venv" / "bin" / "python",
    )
    lines: list[str] = []
    report = run_bench(options, say=lines.append)
    return options, report, lines


def test_quick_run_writes_the_report(quick_run):
    options, _report, lines = quick_run
    on_disk = json.loads(options.out.read_text())
    assert on_disk["config"]["new_tokens"] == 6
    assert {"cpu", "cores", "read_gbps", "gpu", "onnxruntime", "torch"} <= set(on_disk["machine"])
    assert on_disk["machine"]["read_gbps"] > 0

    results = on_disk["results"]
    seen = {(r["variant"], r["backend"], r["precision"], r["batch"]) for r in results}
    assert {r["variant"] for r in results} == {"mlp"}  # --quick: the mlp variant only
    for variant in ("mlp",):
        for batch in (1, 4):
            for precision in ("fp32", "int8"):
                assert (variant, "onnxruntime", precision, batch) in seen
            assert (variant, "pytorch", "fp32", batch) in seen
            assert (variant, "pytorch-nocache", "fp32", batch) in seen
    for r in results:
        assert set(r) >= RESULT_KEYS, r
        assert set(r["stages_ms"]) >= STAGE_KEYS
        assert r["device"] == "cpu" and r["new_tokens"] == 6
        assert r["e2e_ms_p50"] <= r["e2e_ms_p90"] <= r["e2e_ms_p99"]
        assert r["captions_per_s"] == pytest.approx(r["batch"] / (r["e2e_ms_p50"] / 1000))
        assert r["per_token_ms_p50"] > 0 and r["roofline_fraction"] > 0
        assert all(r["stages_ms"][k] > 0 for k in STAGE_KEYS)
        staged = sum(r["stages_ms"][k] for k in ("preprocess", "image_encoder", "mapper", "prefill"))
        assert staged + 5 * r["stages_ms"]["decode_per_token"] <= r["e2e_ms_p50"] * 1.5

    # optimum has no venv here: reported as skipped, with the command that makes it.
    assert [s["backend"] for s in on_disk["skipped"]] == ["optimum"]
    assert "bash benchmarks/optimum-venv.sh" in on_disk["skipped"][0]["fix"]
    assert not [r for r in results if r["backend"] == "optimum"]

    # Every backend generated from the same weights: the reference runs agree with each other.
    for variant in ("mlp",):
        a = on_disk["agreement"][variant]
        assert a["reference"] == "onnxruntime/fp32/cpu"
        assert set(a["compared"]) == {"onnxruntime/int8/cpu", "pytorch/fp32/cpu", "pytorch-nocache/fp32/cpu"}
        assert a["compared"]["pytorch-nocache/fp32/cpu"]["token_agreement"] == 1.0
        assert a["compared"]["pytorch/fp32/cpu"]["token_agreement"] == 1.0
        assert 0 <= a["compared"]["onnxruntime/int8/cpu"]["token_agreement"] <= 1

    cold = on_disk["cold_start"]["runs"]
    assert {(c["precision"], c["check_files"]) for c in cold} == {("fp32", True), ("fp32", False)}
    assert all(c["load_s"] > 0 and c["first_caption_s"] > 0 and c["process_s"] > c["total_s"] for c in cold)

    text = options.markdown.read_text()
    for needle in ("clipcap bench --quick", "## Targets", "## Throughput", "Machine:", "optimum-venv.sh"):
        assert needle in text
    assert text.count("| mlp | per-token decode") == 2
    assert options.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("onnxruntime" in line and "batch   4" in line for line in lines)


def test_onnxruntime_backend_captions_as_the_captioner(quick_run):
    """The timed path is Captioner.caption with clocks: the same tokens."""
    from clipcap.benchmarks.backends import OnnxRuntimeBackend, greedy_options
    from clipcap.benchmarks.models import Assets, make_images, model_spec
    from clipcap.runtime import Captioner

    options = quick_run[0]
    bundle = Assets(model_spec("mlp", quick=True), options.cache_dir).bundle_path("int8")
    images = make_images(3, seed=5)
    run = OnnxRuntimeBackend(bundle, "int8", "cpu", 1, 7).caption(images)
    expected = Captioner(bundle, threads=1).caption(images, greedy_options(7))
    assert run.tokens == [c.tokens for c in expected]
    assert all(len(t) == 7 for t in run.tokens) and run.steps == 6


def test_pytorch_backends_agree_on_the_transformer_variant(tmp_path):
    """transformers' generate (KV cache) and the original no-cache loop: same tokens, every stage timed."""
    pytest.importorskip("transformers")
    pytest.importorskip("open_clip")
    from clipcap.benchmarks.backends import PyTorchBackend, PyTorchNoCacheBackend
    from clipcap.benchmarks.models import Assets, make_images, model_spec

    assets = Assets(model_spec("transformer", quick=True), tmp_path)
    model, encoder = assets.model(), assets.encoder()
    assert model.config.mapper.kind == "transformer" and model.config.prefix_length == 4
    images = make_images(2, seed=3)
    cached = PyTorchBackend(model, encoder, "cpu", 5).caption(images)
    nocache = PyTorchNoCacheBackend(model, encoder, "cpu", 5).caption(images)
    assert cached.tokens == nocache.tokens and all(len(t) == 5 for t in cached.tokens)
    for run in (cached, nocache):
        assert set(run.seconds) == {"preprocess", "image_encoder", "mapper", "prefill", "decode"}
        assert run.steps == 4 and run.per_token > 0 and run.e2e >= sum(run.seconds.values())
    # The same GPT-2 weights for both variants: drawn first from the same seed.
    mlp = Assets(model_spec("mlp", quick=True), tmp_path).model()
    assert all(
        (a == b).all()
        for a, b in zip(mlp.gpt.state_dict().values(), model.gpt.state_dict().values(), strict=True)
    )


def test_percentiles_match_numpy():
    values = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0]
    for q in (0, 10, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))
    assert percentile([4.0], 99) == 4.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summary_of_runs():
    runs = []
    for i in range(1, 21):
        r = Run(
            batch=2,
            steps=4,
            seconds={"preprocess": 0.001, "prefill": 0.002, "decode": 0.004 * i},
            e2e=0.01 * i,
        )
        runs.append(r)
    s = Summary.of(runs)
    assert s.e2e_ms_p50 == pytest.approx(105.0)
    assert s.e2e_ms_p99 == pytest.approx(np.percentile([10.0 * i for i in range(1, 21)], 99))
    assert s.captions_per_s == pytest.approx(2 / 0.105)
    assert s.per_token_ms_p50 == pytest.approx(np.median([1.0 * i for i in range(1, 21)]))
    assert s.stages_ms["mapper"] is None and s.stages_ms["preprocess"] == pytest.approx(1.0)


def test_roofline_counts_each_weight_once_and_one_row_per_lookup():
    pytest.importorskip("onnx")
    from clipcap.benchmarks.roofline import bound_ms, fraction, onnx_weight_bytes
    from onnx import TensorProto, helper

    def init(name, dtype, dims):
        n = int(np.prod(dims))
        itemsize = {TensorProto.FLOAT: 4, TensorProto.INT8: 1, TensorProto.UINT8: 1}[dtype]
        return helper.make_tensor(name, dtype, dims, b"\0" * (n * itemsize), raw=True)

    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["x"]),  # tied table: a lookup ...
        helper.make_node("Gather", ["positions", "pos"], ["p"]),  # a lookup only: one row
        helper.make_node("Add", ["x", "p"], ["h"]),
        helper.make_node("MatMul", ["h", "w"], ["y"]),  # 16 x 8 float32 = 512 bytes
        helper.make_node("Add", ["y", "bias"], ["z"]),  # 8 float32 = 32 bytes
        helper.make_node("Gemm", ["z", "table"], ["logits"], transB=1),  # ... and the head: in full
        helper.make_node("MatMulInteger", ["z8", "w8", "z8zp", "w8zp"], ["q"]),  # 8 x 4 int8 + 1 zero point
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("pos", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("z8", TensorProto.UINT8, [1, 8]),
            helper.make_tensor_value_info("z8zp", TensorProto.UINT8, []),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
        [
            init("table", TensorProto.FLOAT, [100, 16]),  # 6400 bytes, read in full by the head
            init("positions", TensorProto.FLOAT, [50, 16]),  # one row: 64 bytes
            init("w", TensorProto.FLOAT, [16, 8]),
            init("bias", TensorProto.FLOAT, [8]),
            init("w8", TensorProto.INT8, [8, 4]),
            init("w8zp", TensorProto.INT8, [1]),
            init("unused", TensorProto.FLOAT, [1000]),
        ],
    )
    model = helper.make_model(graph)
    assert onnx_weight_bytes(model) == 6400 + 64 + 512 + 32 + 32 + 1
    assert bound_ms(10**9, 10.0) == pytest.approx(100.0)  # 1 GB at 10 GB/s: 100 ms
    assert bound_ms(10**9, 10.0, reads_per_step=4) == pytest.approx(400.0)
    assert fraction(100.0, 125.0) == pytest.approx(0.8)
    assert fraction(None, 125.0) is None and bound_ms(10, None) is None


def test_torch_weight_bytes_counts_a_tied_table_once():
    torch = pytest.importorskip("torch")
    from clipcap.benchmarks.roofline import torch_weight_bytes

    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    assert torch_weight_bytes(torch.nn.ModuleList([emb, head])) == 10 * 4 * 4


def test_read_bandwidth_is_positive():
    from clipcap.benchmarks.roofline import read_bandwidth

    got = read_bandwidth(2, size_bytes=2**24, repeats=2)
    assert got["read_gbps"] > 0 and got["array_bytes"] == 2**24


def test_optimum_is_skipped_without_its_venv(tmp_path):
    from clipcap.benchmarks.backends import BackendSkipped, run_optimum

    with pytest.raises(BackendSkipped) as e:
        run_optimum({"gpt2_dir": str(tmp_path)}, python=tmp_path / "missing" / "python")
    assert "venv" in e.value.reason and e.value.fix.endswith("bash benchmarks/optimum-venv.sh")


def test_optimum_worker_results_are_read(tmp_path):
    """A stand-in worker: the config reaches it, its JSON list comes back in the report's schema."""
    from clipcap.benchmarks.backends import run_optimum
    from clipcap.benchmarks.run import normalise_row

    worker = tmp_path / "worker.py"
    worker.write_text(
        "import json, sys\n"
        "config = json.load(open(sys.argv[2]))\n"
        "print('loading...')\n"
        "print(json.dumps([{'backend': 'optimum', 'batch': b, 'per_token_ms_p50': 2.0,"
        " 'new_tokens': config['new_tokens']} for b in config['batch_sizes']]))\n"
    )
    rows = run_optimum({"batch_sizes": [1, 4], "new_tokens": 5}, python=sys.executable, worker=worker)
    assert [r["batch"] for r in rows] == [1, 4]
    row = normalise_row(rows[0], backend="optimum", variant="mlp", new_tokens=5)
    assert set(row) >= RESULT_KEYS and row["variant"] == "mlp" and row["precision"] == "fp32"
    assert row["stages_ms"]["decode_per_token"] == 2.0 and row["e2e_ms_p50"] is None


def test_optimum_worker_failure_is_a_skip(tmp_path):
    from clipcap.benchmarks.backends import BackendSkipped, run_optimum

    worker = tmp_path / "worker.py"
    worker.write_text("import sys\nprint('no optimum here', file=sys.stderr)\nsys.exit(3)\n")
    with pytest.raises(BackendSkipped, match=r"exit 3.*no optimum here"):
        run_optimum({}, python=sys.executable, worker=worker)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"backends": ("onnxruntime", "tensorrt")}, "unknown backends 'tensorrt'"),
        ({"variants": ()}, "variants: name at least one"),
        ({"precisions": ("fp16",)}, "fp16 is not benchmarked on cpu"),
        ({"precisions": ("int8",), "provider": "cuda"}, "int8 is not benchmarked on cuda"),
        ({"precisions": ("fp64",)}, "unknown precisions"),
        ({"batch_sizes": (1, 0)}, "batch sizes must be integers >= 1"),
        ({"runs": 0}, "runs must be an integer >= 1"),
        ({"new_tokens": 1}, "new_tokens must be an integer >= 2"),
        ({"threads": 0}, "threads must be an integer >= 1"),
        ({"provider": "tpu"}, "provider must be one of cpu, cuda"),
    ],
)
def test_bad_options_are_config_errors(changes, message):
    with pytest.raises(ConfigError, match=message):
        BenchOptions(**changes)


def test_options_defaults_by_mode(tmp_path):
    full, quick = BenchOptions(), BenchOptions(quick=True, cache_dir=tmp_path)
    assert (
        full.batch_sizes == (1, 4, 16, 64) and full.runs == 20 and full.precisions == ("fp32", "int8", "int4")
    )
    assert quick.batch_sizes == (1, 4) and quick.runs == 5
    assert BenchOptions(provider="cuda").precisions == ("fp32", "fp16")
    assert full.runs_for(1) == (3, 20) and full.runs_for(4) == (1, 5) and full.runs_for(64) == (1, 3)
    assert full.runs_for(4, per_picture=True) == (0, 5) and full.runs_for(64, per_picture=True) == (0, 1)
    assert BenchOptions(backends=("pytorch", "pytorch")).backends == ("pytorch",)
    assert parse_list("1, 4,16", "--batch-sizes", int) == (1, 4, 16)
    with pytest.raises(ConfigError, match="--batch-sizes"):
        parse_list("1,four", "--batch-sizes", int)
    file = tmp_path / "file"
    file.write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        BenchOptions(cache_dir=file)
    # The quantization check on trained models: on in a full run (the cache's demo), off with --quick.
    assert full.trained_check is True and quick.trained_check is False
    assert quick.demo_dir == tmp_path / "demo"
    with pytest.raises(ConfigError, match=r"holds no `clipcap demo` report\.json"):
        BenchOptions(trained=tmp_path)
    (tmp_path / "report.json").write_text("{}")
    assert BenchOptions(trained=tmp_path).demo_dir == tmp_path


def test_cli_refuses_bad_options(capsys):
    pytest.importorskip("torch")
    from clipcap.cli import main

    assert main(["bench", "--quick", "--backends", "onnxruntime,nope"]) == 2
    assert "unknown backends 'nope'" in capsys.readouterr().err
    assert main(["bench", "--batch-sizes", "1,x"]) == 2
    assert "--batch-sizes" in capsys.readouterr().err


def test_targets_say_met_or_missed_by_how_much():
    from clipcap.benchmarks.report import _verdict, targets

    def row(backend, precision, batch, e2e, per_s=None, roof=None, bound=None):
        return {
            "variant": "mlp",
            "backend": backend,
            "precision": precision,
            "batch": batch,
            "e2e_ms_p50": e2e,
            "captions_per_s": per_s,
            "roofline_fraction": roof,
            "roofline_ms": bound,
        }

    report = {
        "config": {"variants": ["mlp"], "new_tokens": 20},
        "results": [
            row("onnxruntime", "fp32", 1, 100.0, 10.0, 0.9, bound=4.0),
            row("onnxruntime", "int8", 1, 50.0, 20.0, 0.5, bound=2.0),
            row("onnxruntime", "fp32", 16, 400.0, 40.0),
            row("pytorch", "fp32", 1, 300.0),
        ],
    }
    got = {t["target"]: t for t in targets(report)}
    fp32_roof = got["per-token decode, onnxruntime fp32, share of the roofline"]
    assert fp32_roof["met"] is True and fp32_roof["measured"] == 0.9
    int8_roof = got["per-token decode, onnxruntime int8, share of the roofline"]
    assert int8_roof["met"] is False and int8_roof["shortfall"] == pytest.approx(0.37)
    assert got["end to end, onnxruntime int8 vs pytorch (speed-up)"]["measured"] == pytest.approx(6.0)
    assert got["end to end, onnxruntime fp32 vs pytorch (speed-up)"]["met"] is True
    assert got["throughput, onnxruntime fp32, batch 16 vs batch 1"]["measured"] == pytest.approx(4.0)
    assert got["end to end, onnxruntime int8 vs pytorch-nocache (speed-up)"]["met"] is None

    # 20 int8 steps at the roofline take 40 ms: against PyTorch's 300 ms, 8x is out of reach (7.5x at most).
    int8_torch = got["end to end, onnxruntime int8 vs pytorch (speed-up)"]
    assert int8_torch["ceiling"] == pytest.approx(7.5)
    assert "out of reach here: at most 7.50x" in _verdict(int8_torch)
    fp32_torch = got["end to end, onnxruntime fp32 vs pytorch (speed-up)"]
    assert fp32_torch["ceiling"] == pytest.approx(3.75) and _verdict(fp32_torch) == "met"
    assert "out of reach" not in _verdict(int8_roof)


def test_benchmarks_package_is_torch_free_and_maps_to_its_folder():
    code = (
        "import sys, clipcap.benchmarks, clipcap.benchmarks.options, clipcap.benchmarks.coldstart; "
        "print(clipcap.benchmarks.__file__); "
        "print(sorted({'torch', 'transformers', 'open_clip'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    path, heavy = out.strip().splitlines()
    assert path.replace("\\", "/").endswith("benchmarks/__init__.py")
    assert heavy == "[]"


def test_plot_series_have_distinct_colours():
    pytest.importorskip("matplotlib")
    from clipcap.benchmarks.report import series_colours

    for n in (3, 10, 11, 20):
        colours = series_colours([f"backend {i}" for i in range(n)])
        assert len(set(colours.values())) == n
