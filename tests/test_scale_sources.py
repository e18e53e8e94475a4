"""A dataset job's inputs: every kind expands lazily into items, in a stable order, with errors
in their place."""

from __future__ import annotations

import io
import itertools
import json
import tarfile

import pytest
from clipcap.scale.sources import MAX_MEMBER_BYTES, Item, iter_items


def keys(items) -> list[str]:
    return [item.key for item in items]


@pytest.fixture
def tree(tmp_path):
    """photos/{b.png, a.JPG, notes.txt, sub/{c.webp, z/d.jpeg}}: files before subfolders."""
    root = tmp_path / "photos"
    (root / "sub" / "z").mkdir(parents=True)
    for name in ("b.png", "a.JPG", "notes.txt", "sub/c.webp", "sub/z/d.jpeg"):
        (root / name).write_bytes(b"x")
    return root


def test_a_folder_lists_images_recursively_in_a_stable_order(tree):
    expected = [str(tree / n) for n in ("a.JPG", "b.png", "sub/c.webp", "sub/z/d.jpeg")]
    assert keys(iter_items([str(tree)])) == expected
    assert all(item.source == item.key and item.error is None for item in iter_items([str(tree)]))


def test_globs_match_in_sorted_order_and_a_miss_is_an_error_item(tree):
    assert keys(iter_items([f"{tree}/**/*.jpeg", f"{tree}/*.png"])) == [
        str(tree / "sub/z/d.jpeg"),
        str(tree / "b.png"),
    ]
    assert keys(iter_items([f"{tree}/*"])) == [str(tree / n) for n in ("a.JPG", "b.png", "notes.txt")]
    (miss,) = iter_items([f"{tree}/*.gif"])
    assert miss.source is None and "no file matches" in miss.error


def test_a_plain_path_is_passed_on_even_when_missing(tmp_path):
    # The image loader reports a missing file in its place, like any unreadable image.
    (item,) = iter_items([str(tmp_path / "gone.jpg")])
    assert item == Item(str(tmp_path / "gone.jpg"), source=str(tmp_path / "gone.jpg"))


def test_stdin_lists_inputs_one_per_line(tree):
    stdin = io.StringIO(f"{tree / 'b.png'}\n\n  {tree / 'sub'}  \n-\n")
    assert keys(iter_items(["-"], stdin=stdin)) == [
        str(tree / "b.png"),
        str(tree / "sub/c.webp"),
        str(tree / "sub/z/d.jpeg"),
    ]


def test_a_jsonl_manifest_resolves_paths_next_to_it_and_reports_bad_rows(tmp_path):
    rows = [
        json.dumps({"path": "a.jpg", "caption": "x"}),
        json.dumps({"path": "/abs/b.png"}),
        "",
        "{not json",
        json.dumps({"image": "c.jpg"}),
        json.dumps(["a list"]),
        json.dumps({"path": "  "}),
    ]
    (tmp_path / "list.jsonl").write_text("\n".join(rows) + "\n")
    items = list(iter_items([str(tmp_path / "list.jsonl")]))
    assert [i.source for i in items[:2]] == [str(tmp_path / "a.jpg"), "/abs/b.png"]
    errors = items[2:]
    assert [e.key for e in errors] == [f"{tmp_path / 'list.jsonl'}:{n}" for n in (4, 5, 6, 7)]
    assert all(e.source is None for e in errors)
    assert "not a JSON object" in errors[0].error and "no 'path'" in errors[1].error
    assert "a list, not an object" in errors[2].error


def test_a_csv_manifest_takes_the_path_column_or_names_the_columns_it_found(tmp_path):
    (tmp_path / "list.csv").write_text("id,file\n1,a.jpg\n2,sub/b.png\n")
    (only,) = iter_items([str(tmp_path / "list.csv")])
    assert "no 'path' column (found: id, file)" in only.error
    items = iter_items([str(tmp_path / "list.csv")], path_column="file")
    assert [i.source for i in items] == [str(tmp_path / "a.jpg"), str(tmp_path / "sub/b.png")]


def _shard(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def test_a_tar_shard_yields_its_image_members_as_bytes_in_order(tmp_path):
    shard = tmp_path / "00000.tar"
    _shard(shard, {"000.jpg": b"j0", "000.json": b"{}", "000.txt": b"t", "001.PNG": b"p1", "002.webp": b"w"})
    items = list(iter_items([str(shard)]))
    assert keys(items) == [f"{shard}/000.jpg", f"{shard}/001.PNG", f"{shard}/002.webp"]
    assert [i.source for i in items] == [b"j0", b"p1", b"w"]


def test_a_corrupt_shard_keeps_what_was_listed_and_reports_the_rest(tmp_path):
    good = tmp_path / "good.tar"
    _shard(good, {f"{i:03}.jpg": bytes([i]) * 600 for i in range(4)})
    # Each member is a 512-byte header and 1024 bytes of data: cut in the second one's data, then
    # in its header (which tarfile alone would take for the end of the archive).
    for size, listed in ((1536 + 512 + 300, 1), (1536 + 264, 1)):
        cut = tmp_path / "cut.tar"
        cut.write_bytes(good.read_bytes()[:size])
        items = list(iter_items([str(cut)]))
        assert keys(items[:-1]) == [f"{cut}/000.jpg"][:listed]
        assert items[-1].key == str(cut) and "not a readable tar shard" in items[-1].error
    assert len(list(iter_items([str(good)]))) == 4  # the whole shard has no error
    (garbage,) = iter_items([str(_write(tmp_path / "x.tar", b"not a tar at all" * 40))])
    assert "not a readable tar shard" in garbage.error


def test_an_oversized_member_is_reported_not_read(tmp_path, monkeypatch):
    monkeypatch.setattr("clipcap.scale.sources.MAX_MEMBER_BYTES", 10)
    shard = tmp_path / "s.tar"
    _shard(shard, {"big.jpg": b"x" * 11, "ok.jpg": b"y" * 10})
    big, ok = iter_items([str(shard)])
    assert "11 bytes, over the 10 limit" in big.error and ok.source == b"y" * 10
    assert MAX_MEMBER_BYTES >= 32 * 1024 * 1024  # no real photo is refused


def test_expansion_is_lazy(tmp_path):
    # The first items of an endless stdin list come out before the list ends.
    endless = (f"{tmp_path}/{i}.jpg\n" for i in itertools.count())

    class Stream:
        def __iter__(self):
            return endless

    first = list(itertools.islice(iter_items(["-"], stdin=Stream()), 3))
    assert keys(first) == [f"{tmp_path}/{i}.jpg" for i in range(3)]


def _write(path, data: bytes):
    path.write_bytes(data)
    return path
