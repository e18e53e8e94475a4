"""Where a dataset job's results go: a JSON-lines file written row by row, and resumed.

Each row is written whole (one ``write`` of the line and its newline) and flushed, so a job that
is killed loses at most the row it was writing; the operating system keeps every flushed row
even when the process dies. ``--resume`` reads the file back: every complete row's ``input`` is
done and skipped, and a last line without its newline (the row a kill cut short) is cut off and
redone, so no row is lost and none is written twice.

A file that already has rows is never overwritten by accident: without ``resume`` or
``overwrite`` opening it is an ``OptionsError`` saying which to pass.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO

from clipcap.errors import DataError, OptionsError

__all__ = ["JsonlOutput", "result_row"]


def result_row(key: str, caption=None, error: str | None = None) -> dict:
    """The row every dataset job writes, and ``clipcap caption --json`` prints: ``{"input",
    "caption", "tokens", "score"}`` for a caption (a ``clipcap.runtime.Caption``), else
    ``{"input", "error"}``."""
    if caption is None:
        return {"input": key, "error": error}
    return {"input": key, "caption": caption.text, "tokens": caption.tokens, "score": caption.score}


class JsonlOutput:
    """Rows to ``path``; ``done`` holds the inputs a resumed file already has."""

    def __init__(self, path: str | os.PathLike[str], *, resume: bool = False, overwrite: bool = False):
        self.path = Path(path)
        if resume and overwrite:
            raise OptionsError("--resume continues the output file and --overwrite replaces it: pass one")
        if self.path.is_dir():
            raise OptionsError(f"{self.path}: is a directory; -o/--out names a .jsonl file")
        exists = self.path.exists() and self.path.stat().st_size > 0
        if exists and not (resume or overwrite):
            raise OptionsError(
                f"{self.path} already has results: pass --resume to skip what it has and add the "
                "rest, or --overwrite to start it again"
            )
        self.done: set[str] = set()
        self.dropped_partial = False
        if exists and resume:
            self.done, self.dropped_partial = _read_done(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file: IO[str] = open(self.path, "a" if resume else "w", encoding="utf-8")  # noqa: SIM115
        except OSError as e:
            raise OptionsError(f"{self.path}: cannot write the results ({e.strerror or e})") from None

    def write(self, row: dict) -> None:
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> JsonlOutput:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_done(path: Path) -> tuple[set[str], bool]:
    """The inputs of the file's complete rows, read line by line (a file of millions of rows is
    never held whole); a cut-off last line is truncated away."""
    done: set[str] = set()
    complete = 0  # bytes up to the end of the last complete line
    partial = False
    with open(path, "rb+") as file:
        for number, line in enumerate(file, start=1):
            if not line.endswith(b"\n"):
                partial = True  # only the last line can lack its newline
                break
            complete += len(line)
            if not line.strip():
                continue
            try:
                done.add(json.loads(line)["input"])
            except (ValueError, TypeError, KeyError):
                raise DataError(
                    f"{path}:{number}: not a result row (a JSON object with an 'input'); --resume "
                    "continues a file this command wrote: fix or remove that line"
                ) from None
        if partial:
            file.truncate(complete)
    return done, partial
