"""What a dataset job captions: the inputs a user names, expanded lazily into one item per image.

An input is one of

- an image file's path;
- a directory: every image file under it (recursively, by extension), in a stable order (sorted
  by path, directory by directory), so two runs list the same items in the same order;
- a glob (``photos/**/*.jpg``; ``**`` recurses), matched in sorted order;
- ``-``: a list of inputs on standard input, one per line (each may itself be any of these);
- a manifest: a ``.jsonl`` file of objects or a ``.csv`` file with a header, each row naming an
  image in its ``path`` column (relative paths are relative to the manifest's folder);
- a webdataset-style tar shard (what img2dataset writes): its image members, in the shard's
  order, keyed ``SHARD.tar/MEMBER``; the other members (``.json``, ``.txt``) are skipped.

Everything is a generator: a folder of a million files or a shard set of millions of images is
never listed in memory, and the first image is captioned before the last one is found. A tar
member is read when its turn comes (bounded by ``MAX_MEMBER_BYTES``); paths are read by the
image loader, which refuses anything but a regular file.

An input that cannot be listed (a manifest row without a path, a corrupt shard) becomes one
:class:`Item` carrying its error, so the job reports it in its place and goes on.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import sys
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = ["IMAGE_EXTENSIONS", "MAX_MEMBER_BYTES", "Item", "iter_items"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
"""File endings a directory, a glob or a tar shard counts as images (any case)."""

MAX_MEMBER_BYTES = 64 * 1024 * 1024
"""A tar member larger than this is reported, not read: no photo is that large, a bomb may be."""

MANIFEST_EXTENSIONS = (".jsonl", ".csv")
TAR_EXTENSIONS = (".tar",)
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Item:
    """One image to caption. ``key`` names it in the output (a path, or ``SHARD.tar/MEMBER``) and
    is what ``--resume`` matches; ``source`` is a path or the encoded bytes; ``error`` is set
    instead when the input could not even be listed."""

    key: str
    source: str | bytes | None = None
    error: str | None = None


def iter_items(
    inputs: Iterable[str], *, stdin: IO[str] | None = None, path_column: str = "path"
) -> Iterator[Item]:
    """Every image the inputs name, in order (see the module docstring for what an input is)."""
    for spec in inputs:
        if spec == "-":
            stream = sys.stdin if stdin is None else stdin
            lines = (line.strip() for line in stream)
            # A list on stdin cannot name "-" again (there is one stdin).
            yield from iter_items((line for line in lines if line and line != "-"), path_column=path_column)
        else:
            yield from _expand(spec, path_column)


def _expand(spec: str, path_column: str) -> Iterator[Item]:
    path = Path(spec).expanduser()
    if path.is_dir():
        yield from _walk(path)
    elif path.is_file() and path.suffix.lower() in MANIFEST_EXTENSIONS:
        yield from _manifest(path, path_column)
    elif path.is_file() and path.suffix.lower() in TAR_EXTENSIONS:
        yield from _shard(path)
    elif not path.exists() and _GLOB_CHARS & set(spec):
        matches = sorted(glob.iglob(os.path.expanduser(spec), recursive=True))
        if not matches:
            yield Item(spec, error=f"{spec}: no file matches this pattern")
        for match in matches:
            if os.path.isdir(match):
                continue  # a pattern names files; `dir/*` must not caption a subfolder twice
            yield Item(match, source=match)
    else:
        # A file (or a missing path: the loader says "no such file" in its place).
        yield Item(spec, source=spec)


def _walk(root: Path) -> Iterator[Item]:
    """Image files under root, sorted within each directory, subdirectories after the files."""
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                path = os.path.join(folder, name)
                yield Item(path, source=path)


def _manifest(path: Path, column: str) -> Iterator[Item]:
    base = path.parent
    try:
        with open(path, encoding="utf-8", newline="") as file:
            csv_file = path.suffix.lower() == ".csv"
            rows = _csv_rows(file, column) if csv_file else _jsonl_rows(file, column)
            for line, value, error in rows:
                where = f"{path}:{line}"
                if error is not None:
                    yield Item(where, error=f"{where}: {error}")
                    continue
                target = Path(value).expanduser()
                target = target if target.is_absolute() else base / target
                yield Item(str(target), source=str(target))
    except (OSError, UnicodeDecodeError) as e:
        yield Item(str(path), error=f"{path}: cannot read the manifest ({e})")


def _jsonl_rows(file: IO[str], column: str) -> Iterator[tuple[int, str, str | None]]:
    for number, text in enumerate(file, start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            why = f"not a JSON object ({e.msg}); each line must be one object with a {column!r} key"
            yield number, "", why
            continue
        yield number, *_path_of(row, column)


def _csv_rows(file: IO[str], column: str) -> Iterator[tuple[int, str, str | None]]:
    reader = csv.DictReader(file)
    if reader.fieldnames is None or column not in reader.fieldnames:
        found = ", ".join(reader.fieldnames or []) or "no header"
        yield 1, "", f"the CSV has no {column!r} column (found: {found}); name the image column {column!r}"
        return
    for row in reader:
        yield reader.line_num, *_path_of(row, column)


def _path_of(row: object, column: str) -> tuple[str, str | None]:
    if not isinstance(row, dict):
        return "", f"a {type(row).__name__}, not an object with a {column!r} key"
    value = row.get(column)
    if not isinstance(value, str) or not value.strip():
        return "", f"no {column!r} (a non-empty string) in this row"
    return value.strip(), None


def _shard(path: Path) -> Iterator[Item]:
    """A tar shard's image members, streamed in order (``r|``: no index of the whole archive)."""
    try:
        with tarfile.open(path, mode="r|") as archive:
            for member in archive:
                if not member.isfile() or Path(member.name).suffix.lower() not in IMAGE_EXTENSIONS:
                    continue  # directories, links, the .json/.txt sidecars img2dataset writes
                key = f"{path}/{member.name}"
                if member.size > MAX_MEMBER_BYTES:
                    yield Item(key, error=f"{key}: {member.size} bytes, over the {MAX_MEMBER_BYTES} limit")
                    continue
                file = archive.extractfile(member)
                yield Item(key, source=file.read() if file is not None else b"")
            # tarfile takes a header cut short after the first member for the end of the archive;
            # a whole archive ends with two zero blocks after its last member.
            if path.stat().st_size - archive.offset < 2 * tarfile.BLOCKSIZE:
                raise tarfile.ReadError("it ends inside a member's header: the file was cut short")
    except (tarfile.TarError, OSError, EOFError) as e:
        why = f"{path}: not a readable tar shard ({e}); the items listed before this were kept"
        yield Item(str(path), error=why)
