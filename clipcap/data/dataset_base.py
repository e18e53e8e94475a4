"""What every dataset reader shares: :class:`Example`, :class:`ReadResult` with its skip reasons, and
reading the dataset file itself (a missing, unreadable or undecodable file is a :class:`DataError`;
a bad row never is). Torch-free: the standard library only.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from clipcap.errors import DataError

MAX_PROBLEMS = 5  # messages kept for the summary; the counts cover every skipped row

# Why a row was skipped.
MALFORMED = "malformed"
MISSING_FIELD = "missing field"
EMPTY_CAPTION = "empty caption"


@dataclass(frozen=True)
class Example:
    """One image and its reference captions."""

    image: Path
    captions: tuple[str, ...]
    image_id: str
    split: str = "train"


@dataclass
class ReadResult:
    """What a reader found: the usable examples, and the rows it skipped (reason -> count)."""

    examples: list[Example]
    skipped: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # the first few skip messages
    format: str = ""  # the format read: "coco-karpathy", "coco-clipcap", "conceptual", "folder-jsonl", ...

    def skip(self, reason: str, message: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(message)

    @property
    def skipped_count(self) -> int:
        return sum(self.skipped.values())


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: no such dataset file; check the path")
    if not path.is_file():
        raise DataError(f"{path}: not a file; pass the dataset's captions file")


def _read_json(path: Path) -> Any:
    _check_file(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot be read ({e})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e}); for JSON lines name the file .jsonl") from None


def _lines(path: Path) -> Iterator[str]:
    """The file's lines, read as they are needed (a Conceptual Captions TSV has millions)."""
    # Lines end at "\n" only: a stray "\r" inside a caption must not shift the row numbering.
    with _open_text(path, newline="\n") as f:
        try:
            for line in f:
                yield line.rstrip("\r\n")
        except OSError as e:
            raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None


@contextlib.contextmanager
def _open_text(path: Path, newline: str) -> Iterator[TextIO]:
    # Undecodable bytes become U+FFFD: a stray byte costs one character of one caption, not the file.
    _check_file(path)
    try:
        f = open(path, encoding="utf-8-sig", errors="replace", newline=newline)  # noqa: SIM115 - with f below
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
    with f:
        yield f
