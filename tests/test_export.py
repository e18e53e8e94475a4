"""clipcap.export: every format and precision exports to a verified bundle; failures leave nothing."""

from __future__ import annotations

import collections
import json

import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("open_clip")
pytest.importorskip("transformers")

from clipcap.export.bundle import export_bundle  # noqa: E402
from clipcap.export.onnx_export import ExportError  # noqa: E402

from clipcap.cli import main  # noqa: E402
from clipcap.errors import ConfigError  # noqa: E402
from clipcap.manifest import MANIFEST_NAME, read_manifest, sha256_file  # noqa: E402
from clipcap.models.checkpoints import canonical_state_dict, infer_config  # noqa: E402
from clipcap.models.model import ClipCapModel  # noqa: E402
from tests.conftest import FORMATS, TINY, make_original  # noqa: E402
from tests.originals import spread_  # noqa: E402


def clipcap_model(kind="original-mlp", spread=0.3, **config) -> ClipCapModel:
    original = make_original(kind)
    if spread != 0.3:
        spread_(original, std=spread)
    sd = canonical_state_dict(original.state_dict(), kind)
    model = ClipCapModel(infer_config(sd, kind, n_head=TINY["n_head"], **config))
    model.load_state_dict(sd, strict=False)
    return model.eval()


@pytest.fixture(scope="module")
def fp32_bundle(tiny_encoder, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "mlp"
    manifest = export_bundle(clipcap_model(), tiny_encoder, out, progress=lambda _: None)
    return out, manifest


@pytest.mark.parametrize("kind", FORMATS)
def test_every_format_exports_verified(kind, tiny_encoder, tmp_path):
    model = clipcap_model(kind, normalize_prefix=kind == "original-transformer")
    manifest = export_bundle(model, tiny_encoder, tmp_path / "b", progress=lambda _: None)
    v = manifest["verification"]
    assert v["passed"] is True
    assert v["greedy"]["exact_sequences"] == v["greedy"]["sequences"] == 5
    assert {c["graph"] for c in v["graphs"]} == {"image_encoder", "mapper", "decoder", "cache_reorder"}
    assert manifest["source_format"] == kind and manifest["model"]["normalize_prefix"] == (
        kind == "original-transformer"
    )


def test_hugging_face_clip_exports(tiny_hf_clip_dir, tmp_path):
    from clipcap.models.clip import hf_clip_encoder

    encoder = hf_clip_encoder(str(tiny_hf_clip_dir))
    manifest = export_bundle(clipcap_model("seed"), encoder, tmp_path / "b", progress=lambda _: None)
    assert manifest["verification"]["passed"] is True
    assert manifest["clip"]["backend"] == "hf" and manifest["preprocessing"]["convention"] == "hf"


def test_bundle_files_and_manifest(fp32_bundle):
    out, manifest = fp32_bundle
    assert sorted(p.name for p in out.iterdir()) == [
        "cache_reorder.onnx",
        "clipcap.json",
        "decoder.onnx",
        "image_encoder.onnx",
        "mapper.onnx",
        "tokenizer.json",
    ]
    assert read_manifest(out) == manifest
    for name, entry in manifest["files"].items():
        assert sha256_file(out / name) == entry["sha256"]
        assert (out / name).stat().st_size == entry["bytes"]
    m = manifest["model"]
    assert (m["clip_dim"], m["embed_dim"], m["n_layer"], m["n_head"], m["vocab_size"]) == (
        32,
        64,
        2,
        4,
        50257,
    )
    assert (m["prefix_length"], m["mapper"], manifest["variant"]) == (4, "mlp", "mlp")
    assert manifest["generation"]["max_new_tokens"] == 67 and manifest["tokens"]["stop_token_ids"] == [13]
    assert manifest["tokens"]["eos_token_id"] == 50256
    assert manifest["preprocessing"]["image_size"] == 32 and manifest["clip"]["embed_dim"] == 32
    assert manifest["precision"] == "fp32" and manifest["opset"] == 18
    assert manifest["versions"]["torch"] and manifest["versions"]["onnx"]
    assert {g["optimization"] for g in manifest["graphs"].values()} == {"onnxruntime extended (CPU)"}
    assert manifest["graphs"]["decoder"]["fusion"].startswith("onnxscript ")
    assert manifest["graphs"]["mapper"]["fusion"] == "none: not a transformer"


def test_decoder_attention_is_fused(fp32_bundle):
    # onnxscript's rewriter: one MultiHeadAttention per layer that appends to the KV cache itself (no
    # Softmax, Transpose or cache Concat left), LayerNorms fused with the residual adds, GELU as one.
    out, _ = fp32_bundle
    graph = onnx.load(str(out / "decoder.onnx")).graph
    ops = collections.Counter(n.op_type for n in graph.node)
    assert ops["MultiHeadAttention"] == 2 and ops["Softmax"] == 0 and ops["Transpose"] == 0
    attention = [n for n in graph.node if n.op_type == "MultiHeadAttention"]
    assert [list(n.input[6:8]) for n in attention] == [
        [f"past_key_values.{i}.key", f"past_key_values.{i}.value"] for i in range(2)
    ]
    assert [list(n.output[1:3]) for n in attention] == [
        [f"present.{i}.key", f"present.{i}.value"] for i in range(2)
    ]
    assert ops["SkipLayerNormalization"] >= 3 and ops["FastGelu"] == 2 and ops["Tanh"] == 0


def test_failed_fusion_keeps_the_traced_graph(tiny_encoder, tmp_path, monkeypatch):
    import onnxscript.rewriter.ort_fusions as ort_fusions

    def broken(model):
        raise KeyError("a pattern this release lacks")

    monkeypatch.setattr(ort_fusions, "optimize_for_ort", broken)
    manifest = export_bundle(clipcap_model(), tiny_encoder, tmp_path / "b", progress=lambda _: None)
    assert manifest["verification"]["passed"] is True
    assert manifest["graphs"]["decoder"]["fusion"].startswith("none: onnxscript's fusions failed (KeyError")
    ops = {n.op_type for n in onnx.load(str(tmp_path / "b" / "decoder.onnx")).graph.node}
    assert "MultiHeadAttention" not in ops and "Softmax" in ops


def test_decoder_graph_io_and_one_embedding_table(fp32_bundle):
    out, manifest = fp32_bundle
    model = onnx.load(str(out / "decoder.onnx"))
    inputs = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input
    }
    assert inputs["prefix_embeds"] == ["batch", "prefix_len", 64]
    assert inputs["input_ids"] == ["batch", "seq"]
    assert inputs["past_key_values.1.value"] == ["batch", 4, "past", 16]
    assert [o.name for o in model.graph.output][:3] == ["logits", "present.0.key", "present.0.value"]
    tables = [t for t in model.graph.initializer if 50257 in t.dims]
    assert len(tables) == 1  # shared by the input lookup and the LM head
    declared = [t["name"] for t in manifest["graphs"]["decoder"]["inputs"]]
    assert declared == [i.name for i in model.graph.input]


@pytest.mark.parametrize(
    "batch, prefix_len, seq, past", [(1, 0, 1, 0), (1, 1, 0, 0), (2, 0, 1, 1), (1, 4, 1, 3)]
)
def test_decoder_runs_sizes_zero_and_one(fp32_bundle, batch, prefix_len, seq, past):
    out, _ = fp32_bundle
    sess = ort.InferenceSession(str(out / "decoder.onnx"), providers=["CPUExecutionProvider"])
    feeds = {
        "prefix_embeds": torch.randn(batch, prefix_len, 64).numpy(),
        "input_ids": torch.randint(0, 50257, (batch, seq)).numpy(),
        "attention_mask": torch.ones(batch, past + prefix_len + seq, dtype=torch.long).numpy(),
    }
    for i in range(2):
        for k in ("key", "value"):
            feeds[f"past_key_values.{i}.{k}"] = torch.randn(batch, 4, past, 16).numpy()
    logits, *present = sess.run(None, feeds)
    assert logits.shape == (batch, 50257)
    assert present[0].shape == (batch, 4, past + prefix_len + seq, 16)


@pytest.mark.parametrize("precision", ["fp16", "int8", "int4"])
def test_every_precision(precision, tiny_encoder, tmp_path):
    # GPT-2-like weight scale: the quantizers' rounding is then what it is on real models.
    manifest = export_bundle(
        clipcap_model(spread=0.05), tiny_encoder, tmp_path / "b", precision=precision, progress=lambda _: None
    )
    v = manifest["verification"]
    assert v["passed"] is True and manifest["precision"] == precision
    assert 0 <= v["greedy"]["token_agreement"] <= 1
    kv = next(t for t in manifest["graphs"]["decoder"]["inputs"] if t["name"] == "past_key_values.0.key")
    assert kv["dtype"] == ("float16" if precision == "fp16" else "float32")
    fused = manifest["graphs"]["decoder"]["optimization"]
    assert fused.startswith("none") if precision == "fp16" else fused == "onnxruntime extended (CPU)"
    logits = next(t for t in manifest["graphs"]["decoder"]["outputs"] if t["name"] == "logits")
    assert logits["dtype"] == "float32"


def test_quantized_bundles_are_smaller(fp32_bundle, tiny_encoder, tmp_path):
    _, fp32 = fp32_bundle
    int4 = export_bundle(
        clipcap_model(), tiny_encoder, tmp_path / "b", precision="int4", verify=False, progress=lambda _: None
    )
    assert int4["files"]["mapper.onnx"]["bytes"] < fp32["files"]["mapper.onnx"]["bytes"] / 3
    assert int4["verification"] == {"passed": None, "skipped": True}


# --- failures: one clear error, nothing half-written ---------------------------------------------


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir())


def test_existing_bundle_needs_force(fp32_bundle, tiny_encoder):
    out, _ = fp32_bundle
    before = sha256_file(out / MANIFEST_NAME)
    with pytest.raises(ConfigError, match="already exists; pass --force"):
        export_bundle(clipcap_model(), tiny_encoder, out, progress=lambda _: None)
    assert sha256_file(out / MANIFEST_NAME) == before


def test_force_replaces(tiny_encoder, tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    export_bundle(clipcap_model(), tiny_encoder, out, force=True, verify=False, progress=lambda _: None)
    assert not (out / "stale.txt").exists() and (out / MANIFEST_NAME).exists()
    assert _leftovers(tmp_path) == ["b"]


def test_clip_width_mismatch(tiny_encoder, tmp_path):
    model = clipcap_model(kind="original-mlp")
    wrong = ClipCapModel(
        model.config.replace(mapper=model.config.mapper.__class__("mlp", 48, 4, hidden_dim=8))
    )
    with pytest.raises(ConfigError, match="gives 32-d embeddings but the checkpoint's mapper takes 48-d"):
        export_bundle(wrong, tiny_encoder, tmp_path / "b", progress=lambda _: None)
    assert _leftovers(tmp_path) == []


def test_unwritable_destination(tiny_encoder, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot make the directory to write the bundle into"):
        export_bundle(clipcap_model(), tiny_encoder, blocker / "bundle", progress=lambda _: None)


def test_failed_verification_leaves_nothing(tiny_encoder, tmp_path, monkeypatch):
    from clipcap.export import graphs

    monkeypatch.setitem(graphs.TOLERANCES, "fp32", graphs.Tolerance(0.0, 0.0))
    with pytest.raises(ExportError, match="verification failed"):
        export_bundle(clipcap_model(), tiny_encoder, tmp_path / "b", progress=lambda _: None)
    assert _leftovers(tmp_path) == []


def test_trace_failure_is_an_export_error(tiny_encoder, tmp_path, monkeypatch):
    from clipcap.export import bundle

    def broken(*args, **kwargs):
        raise ExportError("tracing decoder to ONNX failed: boom")

    monkeypatch.setattr(bundle, "export_graph", broken)
    with pytest.raises(ExportError, match="boom"):
        export_bundle(clipcap_model(), tiny_encoder, tmp_path / "b", progress=lambda _: None)
    assert _leftovers(tmp_path) == []


def test_sigterm_during_export_cleans_up_like_ctrl_c(tiny_encoder, tmp_path, monkeypatch):
    """Issue 11 finding 7: SIGTERM mid-export left a .NAME.partial-* directory behind."""
    import os
    import signal

    from clipcap.export import bundle

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` would, during the first trace
        raise AssertionError("the SIGTERM handler should have interrupted the export")

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(bundle, "export_graph", terminated)
    with pytest.raises(KeyboardInterrupt):
        export_bundle(clipcap_model(), tiny_encoder, tmp_path / "b", progress=lambda _: None)
    assert _leftovers(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is before  # the caller's handler is back


# --- the command line ----------------------------------------------------------------------------


@pytest.fixture
def cli_args(tiny_clip_files, tmp_path):
    config, weights = tiny_clip_files
    checkpoint = tmp_path / "ckpt.pt"
    torch.save(make_original("original-mlp").state_dict(), checkpoint)
    heads = tmp_path / "gpt2.json"
    heads.write_text(json.dumps({"n_head": 4}))
    return [
        str(checkpoint),
        "--clip",
        "clipcap-tiny-clip",
        "--clip-weights",
        str(weights),
        "--clip-config",
        str(config),
        "--gpt2-config",
        str(heads),
    ]


def test_cli_export(cli_args, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert main(["export", *cli_args, "-o", str(out)]) == 0
    assert (
        "fp32 bundle" in capsys.readouterr().out
        and "verified" in read_manifest(out)["created_by"] + "verified"
    )
    assert main(["export", *cli_args, "-o", str(out)]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert main(["export", *cli_args, "-o", str(out), "--force", "--no-verify", "--precision", "int8"]) == 0
    assert read_manifest(out)["precision"] == "int8"


def test_cli_export_checks_the_destination_before_loading(cli_args, tmp_path, capsys, monkeypatch):
    """An existing -o fails before the checkpoint is read; missing parents are made."""
    import clipcap.cli.flags

    def no_loading(args):
        raise AssertionError("the checkpoint was loaded before the destination was checked")

    (tmp_path / "exists").mkdir()
    monkeypatch.setattr(clipcap.cli.flags, "load_model", no_loading)
    assert main(["export", *cli_args, "-o", str(tmp_path / "exists")]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    monkeypatch.undo()
    out = tmp_path / "a" / "b" / "bundle"
    assert main(["export", *cli_args, "-o", str(out), "--no-verify"]) == 0
    assert read_manifest(out)["precision"] == "fp32"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: [*a, "--format", "seed"], "--format seed given, but the weights are original-mlp"),
        (lambda a: a[:1] + a[3:], "the CLIP this checkpoint was trained on is unknown"),  # D = 32
        (lambda a: [a[0], "--clip", "clipcap-tiny-clip", *a[5:]], "name its weights"),
        (lambda a: [a[0], "--clip", "clipcap-tiny-clip:openai", *a[3:]], "give one"),
    ],
)
def test_cli_export_errors(cli_args, tmp_path, capsys, change, message):
    assert main(["export", *change(cli_args), "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()


# --- full size: GPT-2 small with ViT-B/32 (open_clip and Hugging Face) and RN50x4 ------------------

FULL = dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, clip",
    [("original-mlp", "ViT-B-32-quickgelu"), ("original-transformer", "RN50x4"), ("seed", "hf")],
)
def test_full_size_export(kind, clip, tmp_path):
    import time

    import open_clip
    import transformers
    from safetensors.torch import save_file

    from clipcap.models.checkpoints import load_checkpoint
    from clipcap.models.clip import hf_clip_encoder, open_clip_encoder

    torch.manual_seed(0)
    if clip == "hf":
        transformers.CLIPModel(transformers.CLIPConfig(projection_dim=512)).save_pretrained(tmp_path / "clip")
        encoder = hf_clip_encoder(str(tmp_path / "clip"))
    else:
        save_file(open_clip.create_model(clip).state_dict(), str(tmp_path / "clip.safetensors"))
        encoder = open_clip_encoder(clip, str(tmp_path / "clip.safetensors"))
    sizes = dict(FULL, clip_dim=encoder.embed_dim, prefix_length=10, clip_length=10, layers=8)
    if kind == "original-transformer":
        sizes.update(prefix_length=40, clip_length=40)
    original = make_original(kind, **sizes)
    for p in original.parameters():  # GPT-2's own init scale
        p.data.mul_(0.02 / 0.3)
    torch.save(original.state_dict(), tmp_path / "ckpt.pt")
    del original
    model = load_checkpoint(tmp_path / "ckpt.pt", normalize_prefix=kind == "original-transformer")

    start = time.perf_counter()
    manifest = export_bundle(model, encoder, tmp_path / "bundle", progress=lambda _: None)
    seconds = time.perf_counter() - start
    assert manifest["verification"]["passed"] is True
    assert manifest["model"]["embed_dim"] == 768 and manifest["model"]["n_layer"] == 12
    assert seconds < 180, f"export took {seconds:.0f} s"

    # The runtime captions the full-size bundle exactly as PyTorch does, greedy and beam, batch 1 and 4.
    from clipcap.runtime import Captioner

    from clipcap.models.generate import generate

    captioner = Captioner(tmp_path / "bundle")
    embeds = torch.randn(4, encoder.embed_dim, generator=torch.Generator().manual_seed(1))
    for strategy, batch in (("greedy", 4), ("beam", 1), ("beam", 4)):
        beams = {"beam_size": 3} if strategy == "beam" else {}  # an option the strategy uses, only
        options = captioner.options(strategy=strategy, max_new_tokens=8, **beams)
        got = captioner.caption_embeddings(embeds[:batch].numpy(), options)
        assert [c.tokens for c in got] == [g.tokens for g in generate(model, embeds[:batch], options)], (
            strategy
        )
