"""`clipcap train`: a tiny word-level vocabulary, a tiny GPT-2 and a learnable toy embedding set.

Four "classes" of images (random prototypes + noise), one caption each: an MLP ClipCap learns them
in a few dozen steps, so tests can check that it learns the captions *and* to stop at EOS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers  # noqa: E402

from clipcap.cli import main  # noqa: E402
from clipcap.config import ClipSpec, GPT2Config  # noqa: E402
from clipcap.data.embeddings import load_embeddings, write_embeddings  # noqa: E402
from clipcap.errors import ConfigError  # noqa: E402
from clipcap.models.checkpoints import load_checkpoint, save_checkpoint  # noqa: E402
from clipcap.models.gpt2 import GPT2LMHead  # noqa: E402
from clipcap.tokenizer import load_tokenizer  # noqa: E402
from clipcap.train.data import IGNORE_INDEX, caption_data, load_gpt2  # noqa: E402
from clipcap.train.loop import TrainOptions, build_model, caption_loss, train  # noqa: E402

# "!" has id 0, a real word (as in GPT-2's vocabulary); EOS is the last id (as in GPT-2's).
WORDS = ["!", "a", "the", "dog", "cat", "red", "blue", "ball", "runs", "sits", "on", "with", "grass"]
WORDS += ["mat", ".", "[UNK]", "<|endoftext|>"]
EOS = len(WORDS) - 1
CAPTIONS = [
    "a dog runs on the grass .",
    "the cat sits !",
    "a red ball .",
    "a blue cat with a ball on the mat .",
]
CLIP_DIM = 16
CLIP = ClipSpec("open_clip", "tiny-clip", None, embed_dim=CLIP_DIM)
TINY_GPT2 = GPT2Config(vocab_size=len(WORDS), n_positions=64, n_embd=32, n_layer=2, n_head=2)
REPO = Path(__file__).resolve().parents[1]


def make_tokenizer(words=WORDS) -> Tokenizer:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    return tok


def write_toy_set(directory: Path, captions=CAPTIONS, seed: int = 0) -> Path:
    """24 train images (6 per class) and 8 val images (2 per class)."""
    rng = np.random.default_rng(seed)
    protos = rng.normal(size=(len(captions), CLIP_DIM)).astype(np.float32)
    embeds, records = [], []
    for i in range(32):
        k = i % len(captions)
        embeds.append(protos[k] + 0.1 * rng.normal(size=CLIP_DIM).astype(np.float32))
        records.append(
            {"image": f"{i}.jpg", "captions": [captions[k]], "split": "train" if i < 24 else "val"}
        )
    return write_embeddings(directory, np.stack(embeds), records, clip=CLIP)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models: threads only add overhead, and the machine is shared.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return make_tokenizer()


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return write_toy_set(tmp_path_factory.mktemp("toy") / "embeds")


@pytest.fixture(scope="module")
def gpt() -> GPT2LMHead:
    torch.manual_seed(0)
    return GPT2LMHead(TINY_GPT2)


@pytest.fixture(scope="module")
def hf_gpt2_dir(tmp_path_factory) -> Path:
    """A tiny Hugging Face GPT-2 directory, as save_pretrained writes it."""
    transformers = pytest.importorskip("transformers")
    c = TINY_GPT2
    torch.manual_seed(1)
    model = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            vocab_size=c.vocab_size,
            n_positions=c.n_positions,
            n_embd=c.n_embd,
            n_layer=c.n_layer,
            n_head=c.n_head,
        )
    )
    folder = tmp_path_factory.mktemp("hf_gpt2")
    model.save_pretrained(folder)
    return folder


def opts(variant: str = "mlp", **changes) -> TrainOptions:
    base = dict(
        prefix_length=4,
        clip_length=2,
        mapper_layers=1,
        mapper_heads=2,
        lr=1e-2,
        warmup_steps=2,
        batch_size=8,
        epochs=2,
        dropout=0.0,
    )
    return TrainOptions(variant, **{**base, **changes})


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_equal_weights(a, b) -> None:
    a, b = state(a) if not isinstance(a, dict) else a, state(b) if not isinstance(b, dict) else b
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"differ: {different[:5]}"


# --- learning ------------------------------------------------------------------------------------


def test_mlp_learns_the_captions_and_to_stop(toy, tok, gpt, tmp_path):
    from clipcap.models.generate import generate

    out = tmp_path / "run"
    result = train(opts(epochs=20), toy, gpt2=gpt, out=out, tokenizer=tok, progress=False)

    assert result.step == 60  # 24 captions / batch 8 = 3 steps per epoch
    assert [h["step"] for h in result.history] == list(range(3, 61, 3))  # one evaluation per epoch
    assert result.val_loss < 0.1 * result.history[0]["val_loss"]
    assert result.train_loss == result.history[-1]["train_loss"]

    # The final directory is a complete checkpoint with its tokenizer and a summary.
    model = load_checkpoint(out)
    assert_equal_weights(model, result.model)
    assert model.config.generation.stop_token_ids == (EOS,)
    assert model.config.source_format == "clipcap-onnx" and model.config.clip == CLIP
    assert load_tokenizer(out / "tokenizer.json").get_vocab() == tok.get_vocab()
    summary = json.loads((out / "trainer.json").read_text())
    assert summary["step"] == 60 and summary["val_loss"] == result.val_loss
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert rows == result.history

    # Greedy decoding with the model's own defaults writes each class's caption, then stops at EOS.
    val = load_embeddings(toy, "val")
    for generation, record in zip(generate(model, torch.from_numpy(val.embeds)), val.records, strict=True):
        assert generation.tokens == [*tok.encode(record["captions"][0]).ids, EOS]


@pytest.mark.parametrize("variant", ["mlp", "transformer"])
def test_each_variant_trains_what_it_should(variant, toy, tok, gpt, tmp_path):
    result = train(opts(variant, max_steps=3), toy, gpt2=gpt, out=tmp_path, tokenizer=tok, progress=False)
    model, before = result.model, gpt.state_dict()
    gpt_changed = [k for k, v in model.gpt.state_dict().items() if not torch.equal(v, before[k])]
    config = model.config
    trained = set(load_trainer_tensors(tmp_path / "checkpoint-0000003"))
    if variant == "transformer":
        assert gpt_changed == []  # GPT-2 frozen: bitwise its source
        assert config.mapper.kind == "transformer" and config.normalize_prefix  # the original's choice
        assert (config.mapper.clip_length, config.mapper.num_layers, config.mapper.num_heads) == (2, 1, 2)
        assert all(k.startswith(("optimizer.clip_project.", "rng.")) for k in trained)
    else:
        assert len(gpt_changed) == len(before)  # all of GPT-2
        assert config.mapper.kind == "mlp" and not config.normalize_prefix
        assert config.mapper.hidden_dim == TINY_GPT2.n_embd * 4 // 2  # E*P//2, as the original
        assert "optimizer.gpt.transformer.wte.weight.exp_avg" in trained
    assert result.history[-1]["train_loss"] < np.log(len(WORDS)) + 1


def load_trainer_tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(checkpoint / "trainer.safetensors"))


# --- the loss: EOS, labels, padding ------------------------------------------------------------


def test_captions_end_with_eos_and_labels_mask_only_padding(toy, tok):
    data = caption_data(load_embeddings(toy, "train"), tok, EOS, None, limit=60)
    longest = max(len(tok.encode(c).ids) for c in CAPTIONS) + 1
    assert data.max_tokens == longest and data.truncated == 0
    for row in range(len(data)):
        n = int(data.lengths[row])
        assert data.tokens[row, n - 1] == EOS
        assert data.tokens[row, : n - 1].tolist() == tok.encode(CAPTIONS[row % 4]).ids

    batch = data.batch(torch.arange(8), prefix_length=4, device=torch.device("cpu"))
    real = batch.attention_mask[:, 4:].bool()
    assert torch.equal(batch.labels[real], batch.tokens[real])
    assert (batch.labels[~real] == IGNORE_INDEX).all()
    assert (batch.labels == 0).any()  # "!" is id 0, a real token: learned, never ignored
    assert batch.attention_mask[:, :4].all()  # the prefix is attended, and carries no label

    # Cut to 5: "the cat sits !" and "a red ball ." fit with their EOS; the other two are cut, and
    # a cut caption does not end there, so it gets no EOS.
    cut = caption_data(load_embeddings(toy, "train"), tok, EOS, 5, limit=60)
    assert cut.max_tokens == 5 and cut.truncated == 12 and (cut.lengths == 5).all()
    assert ((cut.tokens[:, -1] == EOS) == torch.isin(cut.image % 4, torch.tensor([1, 2]))).all()


def test_padding_never_changes_the_loss(toy, tok, gpt):
    data = caption_data(load_embeddings(toy, "train"), tok, EOS, None, limit=60)
    model = build_model(opts(), gpt, CLIP_DIM, None, EOS).train()  # dropout 0: train mode is deterministic
    batch = data.batch(torch.arange(8), prefix_length=4, device=torch.device("cpu"))
    extra = 5
    padded = type(batch)(
        clip=batch.clip,
        tokens=torch.cat((batch.tokens, torch.randint(0, len(WORDS), (8, extra))), dim=1),  # any ids
        attention_mask=torch.cat((batch.attention_mask, torch.zeros(8, extra, dtype=torch.long)), dim=1),
        labels=torch.cat((batch.labels, torch.full((8, extra), IGNORE_INDEX)), dim=1),
    )
    loss, loss_padded = caption_loss(model, batch, 4), caption_loss(model, padded, 4)
    torch.testing.assert_close(loss_padded, loss, rtol=1e-6, atol=1e-6)
    # The loss sums exactly the caption tokens, EOS included.
    assert int((batch.labels != IGNORE_INDEX).sum()) == int(data.lengths[:8].sum())


# --- checkpoints and resuming ---------------------------------------------------------------------


def test_resume_equals_an_uninterrupted_run(toy, tok, gpt, tmp_path, monkeypatch):
    # Dropout on and two micro-batches: the RNG and accumulation must continue exactly too.
    o = opts(epochs=3, dropout=0.1, grad_accum=2, save_every=2, keep_checkpoints=10)
    a = train(o, toy, gpt2=gpt, out=tmp_path / "a", tokenizer=tok, progress=False)
    assert a.step == 9

    # Interrupted after step 5 (in epoch 1); the newest checkpoint is step 4 (epoch 1, batch 1).
    import clipcap.train.loop as train_module

    real_step = train_module._Run._train_step

    def crash_at_6(run, index):
        if run.step == 5:
            raise KeyboardInterrupt
        return real_step(run, index)

    monkeypatch.setattr(train_module._Run, "_train_step", crash_at_6)
    with pytest.raises(KeyboardInterrupt):
        train(o, toy, gpt2=gpt, out=tmp_path / "b", tokenizer=tok, progress=False)
    monkeypatch.undo()
    saved = json.loads((tmp_path / "b" / "checkpoint-0000004" / "trainer.json").read_text())
    assert (saved["step"], saved["epoch"], saved["batch"]) == (4, 1, 1)
    b = train(o, toy, gpt2=gpt, out=tmp_path / "b", tokenizer=tok, resume="auto", progress=False)

    # Explicitly from a checkpoint of run a (mid-epoch 0) into another directory; the tokenizer
    # comes from the checkpoint.
    c = train(
        o, toy, gpt2=gpt, out=tmp_path / "c", resume=tmp_path / "a" / "checkpoint-0000002", progress=False
    )

    for other in (b, c):
        assert other.step == 9
        assert_equal_weights(other.model, a.model)
        assert other.history == a.history
    adam = load_trainer_tensors(tmp_path / "a" / "checkpoint-0000009")
    for other in ("b", "c"):
        resumed = load_trainer_tensors(tmp_path / other / "checkpoint-0000009")
        assert all(torch.equal(adam[k], resumed[k]) for k in adam)


def test_resume_refuses_other_options_and_data_but_may_extend(toy, tok, gpt, tmp_path):
    out = tmp_path / "run"
    train(opts(epochs=1), toy, gpt2=gpt, out=out, tokenizer=tok, progress=False)
    with pytest.raises(ConfigError, match="already holds training checkpoints"):
        train(opts(epochs=1), toy, gpt2=gpt, out=out, tokenizer=tok, progress=False)
    with pytest.raises(ConfigError, match=r"lr: 0\.01 -> 0\.001.*seed: 0 -> 1"):
        train(
            opts(epochs=2, lr=1e-3, seed=1),
            toy,
            gpt2=gpt,
            out=out,
            tokenizer=tok,
            resume="auto",
            progress=False,
        )
    other = write_toy_set(tmp_path / "other", [*CAPTIONS[:3], "a blue dog with a ball on the mat ."])
    with pytest.raises(ConfigError, match="training data differs"):
        train(opts(epochs=2), other, gpt2=gpt, out=out, tokenizer=tok, resume="auto", progress=False)
    with pytest.raises(ConfigError, match="not a training checkpoint"):
        train(opts(epochs=2), toy, gpt2=gpt, out=out, tokenizer=tok, resume=tmp_path, progress=False)

    longer = train(opts(epochs=2), toy, gpt2=gpt, out=out, tokenizer=tok, resume="auto", progress=False)
    assert longer.step == 6 and [h["step"] for h in longer.history] == [3, 6]
    # Going back to step 3 here would leave the later checkpoint for 'auto' to pick up next time.
    with pytest.raises(ConfigError, match="holds later checkpoints \\(checkpoint-0000006\\)"):
        train(opts(epochs=2), toy, gpt2=gpt, out=out, tokenizer=tok, resume=out / "checkpoint-0000003")


def test_checkpoints_are_complete_and_pruned(toy, tok, gpt, tmp_path):
    train(opts(save_every=1, keep_checkpoints=2), toy, gpt2=gpt, out=tmp_path, tokenizer=tok, progress=False)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "checkpoint-0000005",
        "checkpoint-0000006",
        "config.json",
        "history.jsonl",
        "model.safetensors",
        "tokenizer.json",
        "trainer.json",
    ]  # the oldest four pruned; no temporary directory left
    checkpoint = tmp_path / "checkpoint-0000005"
    assert sorted(p.name for p in checkpoint.iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "trainer.json",
        "trainer.safetensors",
    ]
    load_checkpoint(checkpoint)
    saved = json.loads((checkpoint / "trainer.json").read_text())
    assert (saved["step"], saved["epoch"], saved["batch"]) == (5, 1, 2)
    assert saved["options"]["max_tokens"] == 11 and saved["options"]["normalize_prefix"] is False
    assert saved["scheduler"]["last_epoch"] == 5 and saved["param_groups"][0]["weight_decay"] == 0.0
    assert [h["step"] for h in saved["history"]] == [3]
    tensors = load_trainer_tensors(checkpoint)
    assert {
        "optimizer.clip_project.model.0.weight.exp_avg",
        "optimizer.clip_project.model.0.weight.step",
    } <= set(tensors)
    assert tensors["rng.cpu.0"].dtype == torch.uint8


# --- GPT-2 sources ----------------------------------------------------------------------------------


def test_gpt2_from_a_hugging_face_directory(hf_gpt2_dir, toy, tok, tmp_path):
    from safetensors.torch import load_file

    hf = load_file(str(hf_gpt2_dir / "model.safetensors"))
    result = train(
        opts("transformer", max_steps=1), toy, gpt2=hf_gpt2_dir, out=tmp_path, tokenizer=tok, progress=False
    )
    ours = result.model.gpt.state_dict()
    for key, value in hf.items():
        assert torch.equal(ours[key if key.startswith("transformer.") else "transformer." + key], value), key

    # The hub's own files are GPT2Model's: bare names, and old ones carry causal-mask buffers.
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((hf_gpt2_dir / "config.json").read_text())
    legacy = {k.removeprefix("transformer."): v for k, v in hf.items() if k != "lm_head.weight"}
    legacy["h.0.attn.bias"] = torch.ones(1, 1, 64, 64)
    torch.save(legacy, bare / "pytorch_model.bin")
    loaded, _ = load_gpt2(bare)
    assert torch.equal(loaded.transformer.wte.weight, hf["transformer.wte.weight"])


def test_gpt2_from_a_clipcap_checkpoint(toy, tok, gpt, tmp_path):
    source = build_model(opts(), gpt, CLIP_DIM, None, EOS)
    with torch.no_grad():
        source.gpt.transformer.ln_f.bias.add_(1.0)  # not the fixture's GPT-2
    save_checkpoint(source, tmp_path / "ckpt")
    result = train(
        opts("transformer", max_steps=1),
        toy,
        gpt2=tmp_path / "ckpt",
        out=tmp_path / "out",
        tokenizer=tok,
        progress=False,
    )
    assert_equal_weights(result.model.gpt, source.gpt)


def test_gpt2_sources_that_cannot_load(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(transformers.GPT2LMHeadModel, "from_pretrained", offline)
    with pytest.raises(ConfigError, match="Offline\\? Pass a local GPT-2 directory"):
        load_gpt2("gpt2")
    with pytest.raises(ConfigError, match="no such file"):
        load_gpt2(str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="neither a Hugging Face GPT-2 directory"):
        load_gpt2(tmp_path / "junk.pt")


# --- bad inputs --------------------------------------------------------------------------------------


def test_bad_inputs_are_config_errors(toy, tok, gpt, tmp_path):
    def run(o, **kw):
        kw = {"gpt2": gpt, "out": tmp_path / "out", "tokenizer": tok, "progress": False, **kw}
        return train(o, toy, **kw)

    with pytest.raises(ConfigError, match="variant must be one of mlp, transformer"):
        opts("big")
    with pytest.raises(ConfigError, match="not divisible by grad_accum=3"):
        opts(grad_accum=3)
    with pytest.raises(ConfigError, match=r"lr must be > 0.*dropout must be in"):
        opts(lr=0, dropout=1.0)
    with pytest.raises(ConfigError, match="has 18 tokens but GPT-2's vocabulary has 17"):
        run(opts(), tokenizer=make_tokenizer([*WORDS[:-2], "extra", "[UNK]", "<|endoftext|>"]))
    no_eos = Tokenizer(
        models.WordLevel({w: i for i, w in enumerate([*WORDS[:-1], "</s>"])}, unk_token="[UNK]")
    )
    with pytest.raises(ConfigError, match="no <\\|endoftext\\|> token"):
        run(opts(), tokenizer=no_eos)
    with pytest.raises(
        ConfigError, match=r"no 'nope' rows to train on \(its splits: train \(24\), val \(8\)\)"
    ):
        run(opts(train_split="nope"))
    with pytest.raises(ConfigError, match="fewer than batch_size=32"):
        run(opts(batch_size=32))
    with pytest.raises(ConfigError, match="max_tokens=100 does not fit"):
        run(opts(max_tokens=100))
    with pytest.raises(ConfigError, match="use auto, cpu, cuda or cuda:N"):
        run(opts(), device="tpu")
    with pytest.raises(ConfigError, match="mapper_heads=3 does not divide"):
        run(opts("transformer", mapper_heads=3))
    assert not (tmp_path / "out").exists()  # nothing written by a refused run


def test_the_batch_must_split_evenly_between_processes(toy, tok, gpt, tmp_path, monkeypatch):
    from clipcap.train.env import Environment

    # As torchrun's third process would see it; refused before any collective call.
    monkeypatch.setattr(Environment, "setup", classmethod(lambda cls, device: cls(torch.device("cpu"), 3, 0)))
    with pytest.raises(ConfigError, match="batch_size=8 is not divisible by 3 processes x grad_accum=1"):
        train(opts(), toy, gpt2=gpt, out=tmp_path, tokenizer=tok, progress=False)


# --- the command line -------------------------------------------------------------------------------


def test_cli_trains_resumes_and_reports(hf_gpt2_dir, toy, tok, tmp_path, capsys):
    tok.save(str(tmp_path / "tok.json"))
    out = tmp_path / "run"
    args = [
        "train",
        "--data",
        str(toy),
        "--gpt2",
        str(hf_gpt2_dir),
        "--variant",
        "transformer",
        "-o",
        str(out),
    ]
    args += ["--tokenizer", str(tmp_path / "tok.json"), "--prefix-length", "4", "--clip-length", "2"]
    args += ["--mapper-layers", "1", "--mapper-heads", "2", "--batch-size", "8", "--lr", "0.01"]
    args += ["--warmup-steps", "1", "--no-progress"]
    assert main([*args, "--max-steps", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{out}: model after 2 steps, train loss ")
    assert line.endswith(f"next: clipcap export {out} -o {out}-bundle")  # export finds tokenizer.json
    assert (out / "model.safetensors").is_file() and (out / "checkpoint-0000002").is_dir()

    assert main([*args, "--max-steps", "4", "--resume", "auto"]) == 0
    assert "model after 4 steps" in capsys.readouterr().out
    assert load_checkpoint(out).config.mapper.kind == "transformer"

    assert main([*args, "--max-steps", "5", "--resume", "auto", "--seed", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clipcap train: error: cannot resume") and "seed: 0 -> 3" in err and "\n" not in err
    elsewhere = [*args[:4], str(tmp_path / "nope.pt"), *args[5:8], str(tmp_path / "other"), *args[9:]]
    assert main(elsewhere) == 2
    assert "no such file" in capsys.readouterr().err


def test_python_dash_m_cli_runs_and_help_needs_no_torch():
    done = subprocess.run(
        [sys.executable, "-m", "clipcap.cli", "train", "--help"], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0 and "torchrun --standalone --nproc_per_node 2" in done.stdout
    assert "(default: 2e-05)" in done.stdout and "(default: 5000)" in done.stdout  # the paper's
    blocked = (
        "import sys, runpy; sys.modules['torch'] = None; runpy.run_module('clipcap.cli', run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", blocked, "train", "--help"], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0, done.stderr


# --- more than one process ------------------------------------------------------------------------


@pytest.mark.slow
def test_torchrun_two_processes_match_one(hf_gpt2_dir, toy, tok, tmp_path):
    """2 CPU processes (gloo), global batch 8 split 4 + 4, against 1 process with batch 8."""
    tok.save(str(tmp_path / "tok.json"))
    flags = ["--prefix-length", "4", "--batch-size", "8", "--lr", "0.01", "--warmup-steps", "2"]
    flags += ["--epochs", "2", "--dropout", "0", "--tokenizer", str(tmp_path / "tok.json"), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += [
        "-m",
        "clipcap.cli",
        "train",
        "--data",
        str(toy),
        "--gpt2",
        str(hf_gpt2_dir),
        "--variant",
        "mlp",
    ]
    done = subprocess.run(
        [*command, "-o", str(tmp_path / "ddp"), *flags],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("model after 6 steps") == 1  # rank 0 alone reports
    saved = json.loads((tmp_path / "ddp" / "checkpoint-0000006" / "trainer.json").read_text())
    assert saved["world_size"] == 2
    assert {"rng.cpu.0", "rng.cpu.1"} <= set(load_trainer_tensors(tmp_path / "ddp" / "checkpoint-0000006"))

    one = train(
        opts(epochs=2, prefix_length=4),
        toy,
        gpt2=hf_gpt2_dir,
        out=tmp_path / "one",
        tokenizer=tok,
        progress=False,
    )
    ddp = load_checkpoint(tmp_path / "ddp")
    a, b = state(ddp), state(one.model)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    history = [json.loads(line) for line in (tmp_path / "ddp" / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [h["step"] for h in one.history]
    for h, g in zip(history, one.history, strict=True):
        assert h["train_loss"] == pytest.approx(g["train_loss"], rel=1e-5)
        assert h["val_loss"] == pytest.approx(g["val_loss"], rel=1e-5)


def test_gpt2_dropout_acts_only_in_training_mode():
    torch.manual_seed(0)
    plain, dropped = GPT2LMHead(TINY_GPT2), GPT2LMHead(TINY_GPT2, dropout=0.5)
    dropped.load_state_dict(plain.state_dict())
    x = torch.randn(2, 5, TINY_GPT2.n_embd)
    expected, _ = plain.eval()(x, all_logits=True)
    assert torch.equal(dropped.eval()(x, all_logits=True)[0], expected)
    assert not torch.allclose(dropped.train()(x, all_logits=True)[0], expected)
    assert torch.equal(plain.train()(x, all_logits=True)[0], expected)  # dropout 0: train mode is eval's
    with pytest.raises(ValueError, match="dropout"):
        GPT2LMHead(TINY_GPT2, dropout=1.0)


def test_mixed_precision_on_cpu_trains_and_resumes(toy, tok, gpt, tmp_path):
    o = opts(amp=True, max_steps=4, save_every=2, keep_checkpoints=5)
    a = train(o, toy, gpt2=gpt, out=tmp_path / "a", tokenizer=tok, progress=False)
    assert all(np.isfinite(h["train_loss"]) for h in a.history)
    b = train(
        o, toy, gpt2=gpt, out=tmp_path / "b", resume=tmp_path / "a" / "checkpoint-0000002", progress=False
    )
    assert_equal_weights(b.model, a.model)
