"""The one reading of a ``--device`` value, for every command that runs PyTorch.

``auto`` (the default, as faster-whisper's) is CUDA when PyTorch sees a GPU, else the CPU.
"""

from __future__ import annotations

import torch

from clipcap.errors import OptionsError


def torch_device(name: str | torch.device = "auto", *, flag: str = "--device") -> torch.device:
    """``name`` as a usable torch device, or OptionsError naming ``flag`` and the fix."""
    if isinstance(name, torch.device):
        device = name
    elif name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(name)
        except (RuntimeError, TypeError) as e:
            raise OptionsError(
                f"{flag} {name!r} is not a torch device ({e}); use auto, cpu, cuda or cuda:N"
            ) from None
    if device.type not in ("cpu", "cuda"):
        raise OptionsError(f"{flag} {name}: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionsError(
                f"{flag} {name}: CUDA is not available to this PyTorch (torch {torch.__version__}, "
                f"CUDA build {torch.version.cuda or 'none'}); use {flag} cpu or a CUDA build of torch"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise OptionsError(
                f"{flag} {name}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0"
            )
    return device
