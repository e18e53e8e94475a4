"""clipcap.models.device: one reading of --device for embed, train and eval."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from clipcap.errors import OptionsError  # noqa: E402
from clipcap.models.device import torch_device  # noqa: E402


def test_auto_is_cuda_when_available_else_cpu():
    assert torch_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert torch_device().type == torch_device("auto").type  # the default


@pytest.mark.parametrize("name", ["cpu", torch.device("cpu")])
def test_cpu(name):
    assert torch_device(name) == torch.device("cpu")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("tpu", "use auto, cpu, cuda or cuda:N"),
        ("meta", "use auto, cpu, cuda or cuda:N"),
        ("", "not a torch device"),
    ],
)
def test_unusable_names_are_refused_naming_the_flag(name, message):
    with pytest.raises(OptionsError, match=f"--dev {name}.*{message}|--dev {name!r}.*{message}"):
        torch_device(name, flag="--dev")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_says_what_to_do():
    with pytest.raises(OptionsError, match=r"CUDA is not available.*--device cpu"):
        torch_device("cuda")
