"""`import clipcap` and `import clipcap.runtime` never import torch: the runtime install needs none."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module",
    [
        "clipcap",
        "clipcap.runtime",
        "clipcap.cli",
        "clipcap.tokenizer",
        "clipcap.export",
        "clipcap.data.datasets",
        "clipcap.data.embeddings",
        "clipcap.train.options",
        "clipcap.eval.evaluate",
        "clipcap.eval.metrics",
        "clipcap.demo.synthetic",
        "clipcap.demo.run",
    ],
)
def test_light_modules_leave_torch_out(module):
    heavy = "{'torch', 'transformers', 'open_clip'}"
    code = f"import sys, {module}; print({heavy} & set(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "set()"


def test_lazy_names_resolve():
    pytest.importorskip("torch")
    import clipcap

    assert clipcap.load_checkpoint.__module__ == "clipcap.models.checkpoints"
    assert clipcap.ClipCapModel.__name__ == "ClipCapModel"
    with pytest.raises(AttributeError):
        clipcap.no_such_thing  # noqa: B018


def test_subpackages_map_to_top_level_folders():
    import clipcap.export
    import clipcap.runtime

    assert clipcap.runtime.__file__.replace("\\", "/").endswith("runtime/__init__.py")
    assert clipcap.export.__file__.replace("\\", "/").endswith("export/__init__.py")
