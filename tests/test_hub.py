"""clipcap.hub: hf:OWNER/REPO names resolved by huggingface_hub from a cache laid out as it lays
one out (blobs, snapshots of links, refs), offline: nothing is downloaded."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from clipcap import hub
from clipcap.errors import OptionsError

huggingface_hub = pytest.importorskip("huggingface_hub")
pytest.importorskip("huggingface_hub.constants")


class HubCache:
    """A Hugging Face cache folder: ``publish`` puts files in a repository at a commit."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def publish(self, repo: str, files: dict[str, bytes], *, revision: str = "main") -> Path:
        folder = self.root / ("models--" + repo.replace("/", "--"))
        commit = hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()
        snapshot = folder / "snapshots" / commit
        for name, data in files.items():
            blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = snapshot / name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / revision).write_text(commit)
        return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """huggingface_hub itself, offline, on a cache of our own (its settings read at call time)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return HubCache(tmp_path / "hub")


@pytest.mark.parametrize(
    ("name", "repo", "path", "revision"),
    [
        ("hf:me/repo", "me/repo", "", None),
        ("hf:me/repo/", "me/repo", "", None),
        ("hf:me/repo/coco_weights.pt", "me/repo", "coco_weights.pt", None),
        ("hf:me/repo/bundles/int8@v1.0", "me/repo", "bundles/int8", "v1.0"),
        ("hf:me/my.repo-2@abc123", "me/my.repo-2", "", "abc123"),
    ],
)
def test_names_parse(name, repo, path, revision):
    ref = hub.parse(name)
    assert (ref.repo, ref.path, ref.revision) == (repo, path, revision)
    assert hub.parse(str(ref)) == ref


@pytest.mark.parametrize("name", ["hf:", "hf:me", "hf:me/repo@", "hf:/repo/x", "me/repo"])
def test_bad_names_say_the_form(name):
    with pytest.raises(OptionsError, match="hf:OWNER/REPO"):
        hub.parse(name)


def test_a_checkpoint_file_resolves_from_the_cache(hub_cache):
    snapshot = hub_cache.publish(
        "saad1926q/clipcap-image-captioning", {"coco_prefix_best_200k.pt": b"weights"}
    )
    path = hub.local_checkpoint("hf:saad1926q/clipcap-image-captioning/coco_prefix_best_200k.pt")
    assert Path(path) == snapshot / "coco_prefix_best_200k.pt" and Path(path).read_bytes() == b"weights"
    assert hub.local_checkpoint("local/coco.pt") == "local/coco.pt"  # local paths pass through


def test_a_folder_resolves_at_a_revision(hub_cache):
    hub_cache.publish("me/bundles", {"int8/clipcap.json": b"{}", "fp32/clipcap.json": b"[]"}, revision="v1")
    folder = hub.download_folder("hf:me/bundles/int8@v1")
    assert folder.name == "int8" and (folder / "clipcap.json").read_bytes() == b"{}"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("hf:me/absent/model.pt", "not in the Hugging Face cache and HF_HUB_OFFLINE is set"),
        ("hf:me/present/other.pt", "not in the Hugging Face cache and HF_HUB_OFFLINE is set"),
        ("hf:me/present", "name the file in the repository"),
    ],
)
def test_missing_files_say_what_to_do(hub_cache, name, message):
    hub_cache.publish("me/present", {"model.pt": b"x"})
    with pytest.raises(OptionsError, match=message) as info:
        hub.download_file(name)
    assert str(info.value).startswith(name)


def test_a_missing_folder_is_named(hub_cache):
    hub_cache.publish("me/bundles", {"int8/clipcap.json": b"{}"})
    with pytest.raises(OptionsError, match="has no folder 'fp16'"):
        hub.download_folder("hf:me/bundles/fp16")


def test_load_checkpoint_takes_a_hub_file(hub_cache, tmp_path):
    """The seed's checkpoint as its users find it: a .pt file in a Hub repository."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import io

    import clipcap
    from tests.conftest import TINY, make_original

    buffer = io.BytesIO()
    torch.save(make_original("original-mlp").state_dict(), buffer)
    hub_cache.publish("me/clipcap", {"coco_weights.pt": buffer.getvalue()})
    (tmp_path / "coco_weights.pt").write_bytes(buffer.getvalue())
    from_hub = clipcap.load_checkpoint("hf:me/clipcap/coco_weights.pt", n_head=TINY["n_head"])
    local = clipcap.load_checkpoint(tmp_path / "coco_weights.pt", n_head=TINY["n_head"])
    assert from_hub.config == local.config
    for (name, a), (_, b) in zip(from_hub.state_dict().items(), local.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(OptionsError, match=r"hf:me/clipcap/other\.pt: not in the Hugging Face cache"):
        clipcap.load_checkpoint("hf:me/clipcap/other.pt")


def test_model_card_is_read_off_the_manifest(tiny_bundle):
    import json

    manifest = json.loads((tiny_bundle[0] / "clipcap.json").read_text())
    card = hub.model_card(manifest, "me/tiny", "fp32")
    assert card.startswith("---\nlibrary_name: onnx\npipeline_tag: image-to-text\n")
    assert "clipcap caption photo.jpg --bundle hf:me/tiny/fp32" in card
    assert 'Captioner("hf:me/tiny/fp32")' in card
    greedy = manifest["verification"]["greedy"]
    assert f"passed: greedy captions identical {greedy['exact_sequences']}/{greedy['sequences']}" in card
    assert f"| precision | {manifest['precision']} |" in card


def test_push_refuses_offline_and_bad_names(tiny_bundle, hub_cache):
    with pytest.raises(OptionsError, match="HF_HUB_OFFLINE is set"):
        hub.push_bundle(tiny_bundle[0], "me/tiny")
    with pytest.raises(OptionsError, match="not a Hub repository name"):
        hub.push_bundle(tiny_bundle[0], "no-owner")


def test_clipcap_push_offline_is_one_line(tiny_bundle, hub_cache, capsys):
    from clipcap.cli import main

    assert main(["push", str(tiny_bundle[0]), "me/tiny"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("clipcap push: error: cannot push to me/tiny: HF_HUB_OFFLINE is set")
        and err.count("\n") == 1
    )


@pytest.mark.parametrize("folder", ["", "bundles/fp32"])
def test_captioner_takes_a_bundle_on_the_hub(tiny_bundle, hub_cache, folder):
    """A bundle published to a repository (its root or a folder) opens by name, offline, checked
    as any bundle (its snapshot files are links into blobs/), and captions as the local one does."""
    import numpy as np
    from clipcap.runtime import Captioner

    prefix = f"{folder}/" if folder else ""
    files = {prefix + p.name: p.read_bytes() for p in tiny_bundle[0].iterdir()}
    files["README.md"] = b"a model card"
    hub_cache.publish("me/tiny", files)
    name = "hf:me/tiny" + (f"/{folder}" if folder else "")
    embeds = np.random.default_rng(0).normal(size=(2, 32)).astype(np.float32)
    got = Captioner(name).caption_embeddings(embeds, max_new_tokens=6)
    assert [c.tokens for c in got] == [
        c.tokens for c in Captioner(tiny_bundle[0]).caption_embeddings(embeds, max_new_tokens=6)
    ]


def test_a_bundle_missing_on_the_hub_says_what_to_do(hub_cache):
    from clipcap.runtime import Captioner

    from clipcap.errors import BundleError

    hub_cache.publish("me/other", {"model.pt": b"x"})
    with pytest.raises(BundleError, match=r"hf:me/other/clipcap\.json: not in the Hugging Face cache"):
        Captioner("hf:me/other")
