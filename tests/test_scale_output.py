"""A dataset job's output file: rows flushed one by one; resume skips what it has, cuts a half
written last row, and never overwrites results by accident."""

from __future__ import annotations

import json

import pytest
from clipcap.scale.output import JsonlOutput

from clipcap.errors import DataError, OptionsError


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_rows_are_on_disk_as_soon_as_written(tmp_path):
    path = tmp_path / "out" / "captions.jsonl"  # the folder is made
    out = JsonlOutput(path)
    out.write({"input": "a.jpg", "caption": "a dog ü"})
    assert rows(path) == [{"input": "a.jpg", "caption": "a dog ü"}]  # before close
    out.close()


def test_existing_results_need_resume_or_overwrite(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"input": "a.jpg", "caption": "x"}\n')
    with pytest.raises(OptionsError, match=r"already has results: pass --resume .* or --overwrite"):
        JsonlOutput(path)
    with pytest.raises(OptionsError, match="pass one"):
        JsonlOutput(path, resume=True, overwrite=True)
    with JsonlOutput(path, overwrite=True) as out:
        assert out.done == set()
    assert path.read_text() == ""
    (tmp_path / "empty.jsonl").write_text("")
    JsonlOutput(tmp_path / "empty.jsonl").close()  # an empty file holds nothing to lose
    with pytest.raises(OptionsError, match="is a directory"):
        JsonlOutput(tmp_path)


def test_resume_skips_complete_rows_and_cuts_the_partial_last_line(tmp_path):
    path = tmp_path / "c.jsonl"
    complete = '{"input": "a.jpg", "caption": "x"}\n\n{"input": "b.jpg", "error": "bad"}\n'
    path.write_text(complete + '{"input": "c.j')
    with JsonlOutput(path, resume=True) as out:
        assert out.done == {"a.jpg", "b.jpg"} and out.dropped_partial
        out.write({"input": "c.jpg", "caption": "y"})
    assert [r["input"] for r in rows(path)] == ["a.jpg", "b.jpg", "c.jpg"]
    with JsonlOutput(path, resume=True) as again:
        assert again.done == {"a.jpg", "b.jpg", "c.jpg"} and not again.dropped_partial


@pytest.mark.parametrize("line", ["[1, 2]", "not json", '{"caption": "no input"}'])
def test_resume_refuses_a_file_it_did_not_write(tmp_path, line):
    path = tmp_path / "c.jsonl"
    path.write_text(f'{{"input": "a.jpg"}}\n{line}\n')
    with pytest.raises(DataError, match=r"c\.jsonl:2: not a result row"):
        JsonlOutput(path, resume=True)


def test_an_unwritable_file_is_one_error(tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "x").write_text("")
    with pytest.raises(OptionsError, match="cannot write the results"):
        JsonlOutput(tmp_path / "ro" / "x" / "c.jsonl")
