"""Fail-fast checks before a CLIP's weights are downloaded: the Hugging Face cache, HF_HUB_OFFLINE, a
connection attempt.

Offline, open_clip's and transformers' downloads retry for a minute before they fail; these checks
say the same thing in a second, with the fix first. torch-free: the socket and huggingface_hub only.
"""

from __future__ import annotations

import os
import socket
import urllib.parse
from typing import Any

from clipcap.errors import OptionsError


def _check_download_possible(tag_cfg: dict[str, Any], model_name: str, tag: str) -> None:
    """Fail at once, fix first, when a pretrained tag's weights must be downloaded and cannot be.

    Offline, open_clip's download retries for a minute and logs every retry before it fails; one
    look at the Hugging Face cache and one connection attempt say the same thing in a second.
    """
    hub = tag_cfg.get("hf_hub", "")
    host = "huggingface.co" if hub else urllib.parse.urlparse(tag_cfg.get("url", "")).hostname
    why = _why_not_downloadable(bool(hub) and _in_hub_cache(hub), host)
    if why:
        raise OptionsError(
            f"use local CLIP weights: pass --clip-weights FILE (pretrained=FILE in Python). "
            f"--clip {model_name}:{tag} needs its weights downloaded, they are not in the Hugging Face "
            f"cache, and {why}"
        )


def _check_hub_repo_available(repo: str) -> None:
    """The same fail-fast for a Hugging Face CLIP named by its hub id."""
    why = _why_not_downloadable(_in_hub_cache(f"{repo}/config.json"), "huggingface.co")
    if why:
        raise OptionsError(
            f"use a local CLIP: pass --clip hf:DIR, a save_pretrained directory. The hub id {repo!r} "
            f"is not in the Hugging Face cache, and {why}"
        )


def _why_not_downloadable(cached: bool, host: str | None) -> str | None:
    """None when a download can go ahead (already cached, or online and the host answers), else why not."""
    if cached:
        return None
    if _hub_offline():
        return "HF_HUB_OFFLINE is set"
    if host and _reachable(host):
        return None
    return f"{host} cannot be reached (offline?)"


def _in_hub_cache(hub: str, cache_dir: str | os.PathLike[str] | None = None) -> bool:
    from huggingface_hub import try_to_load_from_cache  # a dependency of the plain install

    repo, filename = os.path.split(hub)  # open_clip's reading: "org/model/" names no file
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    return any(isinstance(try_to_load_from_cache(repo, name, cache_dir=cache_dir), str) for name in names)


def _hub_offline() -> bool:
    from huggingface_hub import constants  # read at call time: tests and users may set it late

    return bool(constants.HF_HUB_OFFLINE)


def _reachable(host: str, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True
