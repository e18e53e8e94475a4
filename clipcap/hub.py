"""Checkpoints and bundles on the Hugging Face Hub, named ``hf:OWNER/REPO[/PATH][@REVISION]``.

Downloads go through huggingface_hub into its cache (``HF_HOME``), so ``HF_HUB_OFFLINE=1`` works
from a cache filled before; what comes back is then opened and checked as any local file (a
bundle's SHA-256s, its confinement to its own folder). Torch-free: the runtime uses it.

    hf:saad1926q/clipcap-image-captioning/coco_prefix_best_200k.pt    a checkpoint file
    hf:me/coco-mlp-bundle                                             a bundle at a repo's root
    hf:me/bundles/coco-mlp-int8@v1                                    a bundle in a folder, at a tag
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipcap.errors import ClipCapError, OptionsError

PREFIX = "hf:"
_REF = re.compile(r"^hf:(?P<repo>[\w.-]+/[\w.-]+)(?P<path>(?:/[^@/]+)*)/?(?:@(?P<revision>[^@/][^@]*))?$")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


@dataclass(frozen=True)
class HubRef:
    repo: str  # OWNER/REPO
    path: str  # a file or folder inside the repository; "" for its root
    revision: str | None  # a branch, tag or commit; None for the default branch

    def __str__(self) -> str:
        path = f"/{self.path}" if self.path else ""
        return f"{PREFIX}{self.repo}{path}" + (f"@{self.revision}" if self.revision else "")


def is_hub_ref(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def parse(value: str) -> HubRef:
    match = _REF.match(value)
    if not match:
        raise OptionsError(
            f"{value!r} is not a Hub name: write hf:OWNER/REPO, hf:OWNER/REPO/PATH or either with @REVISION"
        )
    return HubRef(match["repo"], match["path"].strip("/"), match["revision"])


def download_file(value: str, error: type[ClipCapError] = OptionsError) -> Path:
    """The local path of a Hub file (a checkpoint), downloaded into the cache when not there yet."""
    ref = parse(value)
    if not ref.path:
        raise OptionsError(f"{value}: name the file in the repository, e.g. hf:{ref.repo}/model.pt")
    hub = _hub()
    with _hub_errors(ref, error):
        return Path(hub.hf_hub_download(ref.repo, ref.path, revision=ref.revision))


def download_folder(value: str, error: type[ClipCapError] = OptionsError) -> Path:
    """The local folder of a Hub folder (a bundle: the repository's root or one folder in it)."""
    ref = parse(value)
    hub = _hub()
    patterns = [f"{ref.path}/*"] if ref.path else None
    with _hub_errors(ref, error):
        root = Path(hub.snapshot_download(ref.repo, revision=ref.revision, allow_patterns=patterns))
    folder = root / ref.path if ref.path else root
    if not folder.is_dir() or not any(folder.iterdir()):
        raise error(f"{value}: the repository has no folder {ref.path!r}; check the path")
    return folder


def download_bundle(value: str) -> Path:
    """The local folder of a bundle on the Hub: its manifest first, then exactly the files the
    manifest lists (so other bundles in the same repository are not fetched), into the cache."""
    import json

    from clipcap.errors import BundleError
    from clipcap.manifest import MANIFEST_NAME

    ref = parse(value)
    prefix = f"{ref.path}/" if ref.path else ""
    hub = _hub()
    with _hub_errors(HubRef(ref.repo, prefix + MANIFEST_NAME, ref.revision), BundleError):
        manifest_file = Path(hub.hf_hub_download(ref.repo, prefix + MANIFEST_NAME, revision=ref.revision))
    try:
        files = list(json.loads(manifest_file.read_text()).get("files", {}))
    except (OSError, ValueError, AttributeError) as e:
        raise BundleError(f"{value}: its {MANIFEST_NAME} is not a bundle manifest ({e})") from None
    with _hub_errors(ref, BundleError):
        hub.snapshot_download(
            ref.repo,
            revision=ref.revision,
            allow_patterns=[prefix + MANIFEST_NAME, *(prefix + f for f in files)],
        )
    return manifest_file.parent


def local_checkpoint(value: str) -> str:
    """A checkpoint argument as a local path: Hub names are downloaded (a file, or the folder of
    this project's own format), local paths come back unchanged."""
    if not is_hub_ref(value):
        return value
    ref = parse(value)
    if ref.path.endswith(CHECKPOINT_SUFFIXES):
        return str(download_file(value))
    return str(download_folder(value))


class _hub_errors:
    """huggingface_hub's exceptions as one error naming the Hub name and what to do."""

    def __init__(self, ref: HubRef, error: type[ClipCapError]) -> None:
        self.ref, self.error = ref, error

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or not isinstance(exc, Exception) or isinstance(exc, ClipCapError):
            return False
        errors = _hub().errors
        offline = _hub().constants.HF_HUB_OFFLINE
        where = str(self.ref)
        if isinstance(exc, errors.RepositoryNotFoundError):
            problem = f"no repository {self.ref.repo!r} on the Hub (a private one needs `hf auth login`)"
        elif isinstance(exc, errors.RevisionNotFoundError):
            problem = f"the repository has no revision {self.ref.revision!r}"
        elif isinstance(exc, errors.LocalEntryNotFoundError) or offline:
            why = "HF_HUB_OFFLINE is set" if offline else "the Hub cannot be reached"
            problem = (
                f"not in the Hugging Face cache and {why}: download it once with network "
                f"(`hf download {self.ref.repo}`), or pass a local path"
            )
        elif isinstance(exc, errors.EntryNotFoundError):  # after its subclass LocalEntryNotFoundError
            problem = f"the repository has no file {self.ref.path!r}; check the path"
        elif isinstance(exc, OSError | errors.HfHubHTTPError):
            problem = f"the download failed ({type(exc).__name__}: {exc}); try again, or pass a local path"
        else:
            return False
        raise self.error(f"{where}: {problem}") from None


def _hub() -> Any:
    # A dependency of the plain install (tokenizers needs it too); imported on use.
    import huggingface_hub
    import huggingface_hub.constants
    import huggingface_hub.errors

    return huggingface_hub


# --- publishing -------------------------------------------------------------------------------------


def model_card(manifest: dict[str, Any], repo: str, folder: str = "") -> str:
    """A Hub model card (README.md) for a bundle: what it is, where it came from, how it was
    verified, how to caption with it. Everything in it is read off the manifest."""
    model, clip = manifest["model"], manifest.get("clip") or {}
    generation, verification = manifest.get("generation", {}), manifest.get("verification") or {}
    name = f"hf:{repo}" + (f"/{folder}" if folder else "")
    greedy = verification.get("greedy") or {}
    graphs = verification.get("graphs") or []
    worst = max((g.get("max_abs_diff", 0.0) for g in graphs), default=None)
    verdict = {True: "passed", False: "FAILED", None: "skipped"}[verification.get("passed")]
    lines = [
        "---",
        "library_name: onnx",
        "pipeline_tag: image-to-text",
        "tags: [clipcap, image-captioning, onnx, onnxruntime, clipcap-onnx]",
        "---",
        "",
        f"# ClipCap ({manifest.get('variant', '?')} variant), ONNX bundle, {manifest['precision']}",
        "",
        "A [ClipCap](https://arxiv.org/abs/2111.09734) image captioner exported by "
        f"{manifest.get('created_by', 'clipcap-onnx')}: a CLIP image "
        "encoder, the mapping network and GPT-2 with its KV cache as ONNX graphs, captioned with "
        "ONNX Runtime alone (no PyTorch).",
        "",
        "| | |",
        "| --- | --- |",
        f"| source checkpoint format | {manifest.get('source_format', '?')} |",
        f"| precision | {manifest['precision']} |",
        f"| CLIP | {clip.get('backend', '?')} {clip.get('model', '?')} ({model['clip_dim']}-d embeddings) |",
        f"| mapper | {model['mapper']}, prefix length {model['prefix_length']} |",
        f"| GPT-2 | {model['n_layer']} layers x {model['embed_dim']}, {model['n_head']} heads, "
        f"vocabulary {model['vocab_size']} |",
        f"| decoding defaults | {generation.get('strategy', 'greedy')}, at most "
        f"{generation.get('max_new_tokens', '?')} tokens, "
        f"stop tokens {generation.get('stop_token_ids', [])} |",
        f"| verification against PyTorch | {verdict}: greedy captions identical "
        f"{greedy.get('exact_sequences', '?')}/{greedy.get('sequences', '?')}, token agreement "
        f"{greedy.get('token_agreement', '?')}, largest output difference {worst} |",
        "",
        "## Caption with it",
        "",
        "```sh",
        "pip install clipcap-onnx",
        f"clipcap caption photo.jpg --bundle {name}",
        "```",
        "",
        "```python",
        "from clipcap.runtime import Captioner",
        "",
        f'print(Captioner("{name}").caption("photo.jpg").text)',
        "```",
        "",
        "Every file is listed with its SHA-256 in `clipcap.json`, and checked when the bundle opens.",
        "",
    ]
    return "\n".join(lines)


def push_bundle(
    bundle: str | Path,
    repo: str,
    *,
    folder: str = "",
    private: bool = False,
    revision: str | None = None,
    message: str | None = None,
) -> str:
    """Upload a bundle (checked first, as the runtime checks it) to a Hub model repository, with a
    model card at the repository's root; returns the commit's URL."""
    from clipcap.runtime.bundle import open_bundle

    bundle = Path(bundle)
    manifest = open_bundle(bundle, check_files=True).manifest  # never publish a broken bundle
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise OptionsError(f"{repo!r} is not a Hub repository name: write OWNER/REPO")
    hub = _hub()
    if hub.constants.HF_HUB_OFFLINE:
        raise OptionsError(
            f"cannot push to {repo}: HF_HUB_OFFLINE is set; unset it and log in (`hf auth login`)"
        )
    api = hub.HfApi()
    ref = HubRef(repo, folder.strip("/"), revision)
    with _hub_errors(ref, OptionsError):
        api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        operations = [
            hub.CommitOperationAdd(
                path_in_repo="README.md", path_or_fileobj=model_card(manifest, repo, folder).encode()
            )
        ]
        operations += [
            hub.CommitOperationAdd(
                path_in_repo=f"{ref.path}/{p.name}" if ref.path else p.name, path_or_fileobj=p
            )
            for p in sorted(bundle.iterdir())
            if p.is_file()
        ]
        info = api.create_commit(
            repo,
            operations,
            commit_message=message or f"clipcap-onnx bundle ({manifest['precision']})",
            revision=revision,
        )
    return str(info.commit_url)
