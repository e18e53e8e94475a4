"""The package's error types. No heavy imports: the runtime raises these too."""

from __future__ import annotations


class ClipCapError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(ClipCapError, ValueError):
    """A configuration or option value is out of range or inconsistent."""


class CheckpointError(ClipCapError, ValueError):
    """A checkpoint file cannot be loaded: missing, not a checkpoint, wrong keys or shapes.

    The message always names the file and says what is wrong and, where there is one, the fix.
    """

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class MissingDependencyError(ClipCapError, RuntimeError):
    """An optional dependency is not installed in this environment."""


def missing_dependency(package: str, extra: str, error: ImportError) -> MissingDependencyError:
    """The error to raise, ``from error``, when an optional import fails."""
    return MissingDependencyError(
        f"{package} is needed for this and is not installed ({error}). "
        f"Install it with: pip install 'clipcap-onnx[{extra}]'"
    )
