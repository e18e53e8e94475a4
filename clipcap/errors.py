"""Every error type the package raises on purpose, in one place. No heavy imports: the runtime and
the server raise these too.

Bad input is a ``ValueError`` (the caller can fix it: a flag, a file, an image); a broken or
missing environment is a ``RuntimeError`` (install something, free a resource). Every message
names its input and says what is wrong and, where there is one, the fix. The command line turns
any of them into one line on stderr and exit status 2.
"""

from __future__ import annotations

from types import ModuleType


class ClipCapError(Exception):
    """Base class of every error this package raises on purpose."""


# --- bad input (ValueError) ----------------------------------------------------------------------


class OptionsError(ClipCapError, ValueError):
    """An option, flag or setting is out of range, inconsistent or unknown."""


# The name this error had before the types were split; kept because users catch it.
ConfigError = OptionsError


class DataError(ClipCapError, ValueError):
    """A data file is malformed: a dataset's rows, an embedding set, a trainer's saved state."""


class BundleError(ClipCapError, ValueError):
    """A bundle is missing a file, altered, malformed, or reaches outside its own directory."""


class CheckpointError(ClipCapError, ValueError):
    """A checkpoint file cannot be loaded: missing, not a checkpoint, wrong keys or shapes.

    The message always names the file and says what is wrong and, where there is one, the fix.
    """

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ImageError(ClipCapError, ValueError):
    """An image input cannot be used: missing, empty, not an image, corrupt, too large, wrong type.

    The message names the input (a path, or a short description such as ``<bytes, 123 bytes>``)
    and says what is wrong and, where there is one, the fix.
    """


# --- the environment (RuntimeError) --------------------------------------------------------------


class ExportError(ClipCapError, RuntimeError):
    """Tracing, conversion or verification failed: the bundle was not written."""


class VerificationError(ExportError):
    """An exported graph does not compute what PyTorch computes (outputs or greedy tokens differ)."""


class MissingDependencyError(ClipCapError, RuntimeError):
    """An optional dependency is not installed in this environment."""


class JavaError(ClipCapError, RuntimeError):
    """A Java program (a tokenizer or scorer) failed to start, crashed or did not answer in time."""


# --- control flow ---------------------------------------------------------------------------------


class MetricSkipped(ClipCapError):
    """A metric cannot run here; the message says why (it goes into Scores.skipped)."""


def missing_dependency(package: str, extra: str, error: ImportError) -> MissingDependencyError:
    """The error to raise, ``from error``, when an optional import fails."""
    return MissingDependencyError(
        f"{package} is needed for this and is not installed ({error}). "
        f"Install it with: pip install 'clipcap-onnx[{extra}]'"
    )


def require(module: str, extra: str, package: str | None = None) -> ModuleType:
    """Import an optional dependency, or raise MissingDependencyError naming the extra to install.

    The one guard for optional imports: ``torch = require("torch", "export")``.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise missing_dependency(package or module.split(".")[0], extra, e) from e


__all__ = [
    "BundleError",
    "CheckpointError",
    "ClipCapError",
    "ConfigError",
    "DataError",
    "ExportError",
    "ImageError",
    "JavaError",
    "MetricSkipped",
    "MissingDependencyError",
    "OptionsError",
    "VerificationError",
    "missing_dependency",
    "require",
]
