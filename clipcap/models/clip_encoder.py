"""The CLIP image encoder's base type, shared by the open_clip and Hugging Face backends.

torch is needed to import this module.
"""

from __future__ import annotations

from clipcap.config import ClipSpec
from clipcap.errors import OptionsError, require

torch = require("torch", "export")


class ImageEncoder(torch.nn.Module):
    """Preprocessed pixels ``[B, 3, H, W]`` float32 -> the CLIP image embedding ``[B, D]``, un-normalised.

    Always float32 and in eval mode with frozen weights: ClipCap never trains its CLIP, and a dropout
    or patch dropout switched on by a stray ``.train()`` would change the embedding.
    """

    def __init__(self, spec: ClipSpec) -> None:
        super().__init__()
        self.spec = spec

    @property
    def embed_dim(self) -> int:
        return self.spec.embed_dim

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def train(self, mode: bool = True) -> ImageEncoder:
        # Ignore the mode on purpose: see the class docstring.
        return super().train(False)

    def _freeze(self) -> None:
        self.float()
        self.requires_grad_(False)
        self.eval()


def _square(size: int | tuple[int, ...] | list[int], what: str) -> int:
    if isinstance(size, int):
        return size
    if len(size) == 2 and size[0] == size[1]:
        return int(size[0])
    raise OptionsError(
        f"{what} {tuple(size)} is not square; ClipCap's preprocessing takes square images only"
    )
