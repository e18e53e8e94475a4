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
