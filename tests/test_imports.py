"""The layering, checked per package: which modules may import torch, and how folders map to
import names. The runtime install (no torch) depends on the torch-free ones."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "open_clip")

# Every module of these packages is torch-free, today's and tomorrow's: a new module is checked
# without anyone adding it here. (`__main__` modules run a program when imported: left out.)
TORCH_FREE_PACKAGES = ("clipcap.runtime", "clipcap.serve", "clipcap.scale", "clipcap.cli", "clipcap.eval")

# The rest of the tree: the torch-free modules by name (the others import torch at the top).
TORCH_FREE_MODULES = (
    "clipcap",
    "clipcap.errors",
    "clipcap.options",
    "clipcap.config",
    "clipcap.tokenizer",
    "clipcap.manifest",
    "clipcap.logs",
    "clipcap.machine",
    "clipcap.jsonfile",
    "clipcap.hub",
    "clipcap.models",
    "clipcap.models.clip_downloads",
    "clipcap.data",
    "clipcap.data.datasets",
    "clipcap.data.dataset_base",
    "clipcap.data.coco",
    "clipcap.data.conceptual",
    "clipcap.data.folder",
    "clipcap.data.embeddings",
    "clipcap.data.embed_shards",
    "clipcap.train",
    "clipcap.train.options",
    "clipcap.demo",
    "clipcap.demo.synthetic",
    "clipcap.demo.run",
    "clipcap.demo.report",
    "clipcap.demo.progress",
    "clipcap.export",
    "clipcap.benchmarks",
    "clipcap.benchmarks.options",
    "clipcap.benchmarks.timing",
    "clipcap.benchmarks.coldstart",
    "clipcap.benchmarks.serve_options",
    "clipcap.benchmarks.serve_targets",
    "clipcap.benchmarks.report",
    "clipcap.benchmarks.report_targets",
    "clipcap.benchmarks.report_markdown",
    "clipcap.benchmarks.report_plot",
    "clipcap.benchmarks.run_sections",
)


def _modules_of(package: str) -> list[str]:
    try:
        pkg = importlib.import_module(package)
    except ImportError:  # e.g. clipcap.serve's own extra is not installed here
        return []
    return [package] + [
        f"{package}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__) if m.name != "__main__"
    ]


def _heavy_after_import(module: str) -> str:
    code = f"import sys, {module}; print(sorted({set(HEAVY)!r} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


@pytest.mark.parametrize(
    "module", [*TORCH_FREE_MODULES, *(m for p in TORCH_FREE_PACKAGES for m in _modules_of(p))]
)
def test_torch_free_modules_leave_torch_out(module):
    if module.startswith("clipcap.serve") or module.startswith("clipcap.scale.ray_serve"):
        pytest.importorskip("fastapi")
    if module.startswith("clipcap.scale.ray"):
        pytest.importorskip("ray")  # the [ray] extra's modules
    assert _heavy_after_import(module) == "[]"


def test_every_package_is_covered():
    """Each subpackage is named above, so a new one states its rule."""
    import clipcap

    packages = {f"clipcap.{m.name}" for m in pkgutil.iter_modules(clipcap.__path__) if m.ispkg}
    packages |= {"clipcap.export", "clipcap.runtime", "clipcap.serve", "clipcap.scale", "clipcap.benchmarks"}
    named = set(TORCH_FREE_PACKAGES) | set(TORCH_FREE_MODULES) | {"clipcap.assets"}
    assert packages <= named, packages - named


def test_lazy_names_resolve():
    pytest.importorskip("torch")
    import clipcap

    assert clipcap.load_checkpoint.__module__ == "clipcap.models.checkpoints"
    assert clipcap.ClipCapModel.__name__ == "ClipCapModel"
    with pytest.raises(AttributeError):
        clipcap.no_such_thing  # noqa: B018


@pytest.mark.parametrize(
    ("package", "folder"),
    [
        ("clipcap.export", "export"),
        ("clipcap.runtime", "runtime"),
        ("clipcap.serve", "serve"),
        ("clipcap.scale", "scale"),
        ("clipcap.benchmarks", "benchmarks"),
    ],
)
def test_subpackages_map_to_top_level_folders(package, folder):
    module = importlib.import_module(package)
    assert module.__file__.replace("\\", "/").endswith(f"{folder}/__init__.py")


@pytest.mark.parametrize("name", ["clipcap.tests", "clipcap.clipcap", "clipcap.runtime.runtime"])
def test_checkout_folders_are_not_importable_through_the_package(name):
    """Folders map to import names through pyproject alone: nothing extends the package's path."""
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(name)
