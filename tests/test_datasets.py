"""clipcap.data.datasets: each reader on tiny files; bad rows skipped and counted, never raised."""

from __future__ import annotations

import json

import pytest

from clipcap.data.datasets import Example, read_coco, read_conceptual, read_dataset, read_folder
from clipcap.errors import ConfigError, DataError


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# --- COCO --------------------------------------------------------------------------------------------


def karpathy_entry(cocoid, split, *captions, filepath="val2014"):
    return {
        "filepath": filepath,
        "filename": f"COCO_{filepath}_{cocoid:012d}.jpg",
        "cocoid": cocoid,
        "split": split,
        "sentences": [{"raw": c, "tokens": c.lower().split()} for c in captions],
    }


def test_karpathy_splits_and_restval(tmp_path):
    data = {
        "images": [
            karpathy_entry(1, "train", "A dog.", "A brown dog.", filepath="train2014"),
            karpathy_entry(2, "restval", "A cat."),
            karpathy_entry(3, "val", "A bird."),
            karpathy_entry(4, "test", "A fish."),
        ]
    }
    (tmp_path / "dataset_coco.json").write_text(json.dumps(data))
    result = read_coco(tmp_path / "dataset_coco.json", tmp_path / "coco")
    assert result.format == "coco-karpathy" and not result.skipped
    assert result.examples[0] == Example(
        tmp_path / "coco/train2014/COCO_train2014_000000000001.jpg", ("A dog.", "A brown dog."), "1", "train"
    )
    assert [e.split for e in result.examples] == ["train", "train", "val", "test"]  # restval -> train
    assert result.examples[1].image == tmp_path / "coco/val2014/COCO_val2014_000000000002.jpg"


def test_karpathy_bad_entries(tmp_path):
    data = {
        "images": [
            karpathy_entry(1, "train", "A dog.", "  "),  # one empty sentence: dropped, image kept
            karpathy_entry(2, "train", ""),  # nothing left: image skipped
            "not an object",
            {"filepath": "val2014", "cocoid": 3, "sentences": []},  # no filename
            {**karpathy_entry(5, "val"), "sentences": [{"tokens": ["a", "cow"]}]},  # tokens, no raw
        ]
    }
    (tmp_path / "k.json").write_text(json.dumps(data))
    result = read_coco(tmp_path / "k.json")
    assert [(e.image_id, e.captions) for e in result.examples] == [("1", ("A dog.",)), ("5", ("a cow",))]
    assert result.skipped == {"empty caption": 3, "malformed": 1, "missing field": 1}
    assert len(result.problems) == 5 and "images[2]: not an object" in result.problems[3]


def test_clipcap_train_caption_groups_by_image(tmp_path):
    for folder, number in (("train2014", 1), ("val2014", 2)):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / f"COCO_{folder}_{number:012d}.jpg").write_bytes(b"")
    rows = [
        {"image_id": 2, "caption": "A cat.", "id": 10},
        {"image_id": 1, "caption": "A dog.", "id": 11},
        {"image_id": 2, "caption": "A black cat.", "id": 12},
        {"image_id": 3, "caption": "Nowhere.", "id": 13},
        {"image_id": 4, "caption": " ", "id": 14},
        {"caption": "no id"},
        {"image_id": "abc", "caption": "bad id"},
    ]
    (tmp_path / "train_caption.json").write_text(json.dumps(rows))
    result = read_dataset(tmp_path / "train_caption.json")
    assert result.format == "coco-clipcap"
    assert [(e.image_id, e.captions, e.split) for e in result.examples] == [
        ("2", ("A cat.", "A black cat."), "train"),
        ("1", ("A dog.",), "train"),
        ("3", ("Nowhere.",), "train"),
    ]
    images = [e.image for e in result.examples]
    assert images[0] == tmp_path / "val2014/COCO_val2014_000000000002.jpg"  # only in val2014
    assert images[1] == tmp_path / "train2014/COCO_train2014_000000000001.jpg"
    assert images[2] == tmp_path / "train2014/COCO_train2014_000000000003.jpg"  # neither: train2014's
    assert result.skipped == {"empty caption": 1, "missing field": 1, "malformed": 1}


def test_coco_of_another_shape_is_refused(tmp_path):
    (tmp_path / "x.json").write_text('{"annotations": []}')
    with pytest.raises(DataError, match="Karpathy"):
        read_coco(tmp_path / "x.json")
    (tmp_path / "y.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_coco(tmp_path / "y.json")


# --- Conceptual Captions -----------------------------------------------------------------------------


def test_conceptual_default_names_and_third_column(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "00000001.png").write_bytes(b"")  # another extension, found
    tsv = tmp_path / "cc.tsv"
    tsv.write_text(
        "a dog on grass\thttp://x/0.jpg\n"
        "a cat\thttp://x/1.jpg\n"
        "\n"  # a blank line still counts as a row: the numbering follows the download's
        "a bird\thttp://x/3.jpg\tbirds/b.jpg\n"
        "a caption with \r inside\thttp://x/4.jpg\r\n"
    )
    result = read_conceptual(tsv, images, split="val")
    assert result.format == "conceptual" and not result.skipped
    assert [(e.image.relative_to(images).as_posix(), e.image_id) for e in result.examples] == [
        ("00000000.jpg", "0"),
        ("00000001.png", "1"),
        ("birds/b.jpg", "3"),
        ("00000004.jpg", "4"),
    ]
    assert result.examples[0].captions == ("a dog on grass",) and {e.split for e in result.examples} == {
        "val"
    }
    assert result.examples[3].captions == ("a caption with \r inside",)


def test_conceptual_default_folder_and_split(tmp_path):
    tsv = tmp_path / "cc.tsv"
    tsv.write_text("a dog\thttp://x/0.jpg\n")
    result = read_dataset(tsv)
    assert result.examples == [Example(tmp_path / "00000000.jpg", ("a dog",), "0", "train")]
    assert read_dataset(tsv, split="test").examples[0].split == "test"


# --- A folder with a captions file -------------------------------------------------------------------


def test_jsonl_single_multi_and_merged(tmp_path):
    path = write_jsonl(
        tmp_path / "captions.jsonl",
        [
            {"image": "a.jpg", "caption": "first"},
            {"image": "b.png", "captions": ["one", "two"], "split": "val", "image_id": 7},
            {"image": "a.jpg", "captions": ["second", ""]},
            {"image": "a.jpg", "caption": "third", "split": "test"},  # merged: the first row's split stays
        ],
    )
    result = read_folder(path)
    assert result.format == "folder-jsonl" and not result.skipped
    assert result.examples == [
        Example(tmp_path / "a.jpg", ("first", "second", "third"), "a.jpg", "train"),
        Example(tmp_path / "b.png", ("one", "two"), "7", "val"),
    ]


def test_jsonl_image_root(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"image": "x/a.jpg", "caption": "hi"}])
    assert read_dataset(path, images=tmp_path / "pics").examples[0].image == tmp_path / "pics/x/a.jpg"


def test_csv_with_optional_columns(tmp_path):
    path = tmp_path / "captions.csv"
    path.write_text(
        'image,caption,split,image_id\na.jpg,"a dog, running",val,1\nb.jpg,"a cat\non two lines",,\n'
        "a.jpg,another dog,train,9\n"
    )
    result = read_dataset(tmp_path)  # the folder: finds captions.csv
    assert result.format == "folder-csv" and not result.skipped
    assert result.examples == [
        Example(tmp_path / "a.jpg", ("a dog, running", "another dog"), "1", "val"),
        Example(tmp_path / "b.jpg", ("a cat\non two lines",), "b.jpg", "train"),
    ]


def test_csv_without_the_columns_is_refused(tmp_path):
    (tmp_path / "c.csv").write_text("file,text\na.jpg,hi\n")
    with pytest.raises(DataError, match=r"'image' and 'caption' columns.*file, text"):
        read_dataset(tmp_path / "c.csv")


@pytest.mark.parametrize(
    "line, reason",
    [
        ("{not json", "malformed"),
        ("[1, 2]", "malformed"),
        ('{"caption": "no image"}', "missing field"),
        ('{"image": "", "caption": "empty image"}', "missing field"),
        ('{"image": "a.jpg"}', "missing field"),
        ('{"image": "a.jpg", "caption": 3}', "missing field"),
        ('{"image": "a.jpg", "captions": "not a list"}', "missing field"),
        ('{"image": "a.jpg", "caption": "   "}', "empty caption"),
        ('{"image": "a.jpg", "captions": ["", " "]}', "empty caption"),
    ],
)
def test_jsonl_bad_rows_skipped(tmp_path, line, reason):
    path = write_jsonl(tmp_path / "c.jsonl", [{"image": "ok.jpg", "caption": "fine"}, line])
    result = read_dataset(path)
    assert [e.image.name for e in result.examples] == ["ok.jpg"]
    assert result.skipped == {reason: 1} and result.skipped_count == 1
    assert len(result.problems) == 1 and "c.jsonl line 2" in result.problems[0]


@pytest.mark.parametrize(
    "line, reason",
    [
        ("only a caption", "malformed"),
        ("too\tmany\tcolumns\there", "malformed"),
        ("  \thttp://x/1.jpg", "empty caption"),
    ],
)
def test_conceptual_bad_rows_skipped(tmp_path, line, reason):
    (tmp_path / "cc.tsv").write_text(f"fine\thttp://x/0.jpg\n{line}\nalso fine\thttp://x/2.jpg\n")
    result = read_dataset(tmp_path / "cc.tsv")
    assert [e.image_id for e in result.examples] == ["0", "2"]
    assert result.skipped == {reason: 1}


@pytest.mark.parametrize(
    "row, reason", [("a.jpg,", "empty caption"), (",a caption", "missing field"), ("a.jpg", "missing field")]
)
def test_csv_bad_rows_skipped(tmp_path, row, reason):
    (tmp_path / "c.csv").write_text(f"image,caption\nok.jpg,fine\n{row}\n")
    result = read_dataset(tmp_path / "c.csv")
    assert [e.image.name for e in result.examples] == ["ok.jpg"] and result.skipped == {reason: 1}


def test_problems_are_capped_but_counts_are_not(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", ["{bad"] * 20 + [{"image": "a.jpg", "caption": "x"}])
    result = read_dataset(path)
    assert result.skipped == {"malformed": 20} and len(result.problems) == 5


# --- Dispatch and file errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, content, found",
    [
        ("d.json", json.dumps({"images": [karpathy_entry(1, "val", "x")]}), "coco-karpathy"),
        ("d.JSON", json.dumps([{"image_id": 1, "caption": "x"}]), "coco-clipcap"),
        ("d.tsv", "x\thttp://u\n", "conceptual"),
        ("d.jsonl", '{"image": "a.jpg", "caption": "x"}\n', "folder-jsonl"),
        ("d.csv", "image,caption\na.jpg,x\n", "folder-csv"),
    ],
)
def test_auto_detection(tmp_path, name, content, found):
    (tmp_path / name).write_text(content)
    result = read_dataset(tmp_path / name)
    assert result.format == found and len(result.examples) == 1


def test_explicit_format_overrides_the_extension(tmp_path):
    (tmp_path / "cc.txt").write_text("x\thttp://u\n")
    with pytest.raises(DataError, match="pass --format"):
        read_dataset(tmp_path / "cc.txt")
    assert read_dataset(tmp_path / "cc.txt", format="conceptual").format == "conceptual"


@pytest.mark.parametrize("name", ["missing.json", "missing.tsv", "missing.jsonl", "missing.csv"])
def test_missing_file_is_a_data_error(tmp_path, name):
    with pytest.raises(DataError, match=f"{name}: no such dataset file"):
        read_dataset(tmp_path / name)


def test_dataset_errors(tmp_path):
    with pytest.raises(DataError, match=r"a directory without captions\.jsonl or captions\.csv"):
        read_dataset(tmp_path)
    with pytest.raises(ConfigError, match="choose one of"):
        read_dataset(tmp_path / "x.json", format="parquet")
    (tmp_path / "d.jsonl").write_text("")
    with pytest.raises(ConfigError, match="--split test: only a Conceptual Captions TSV"):
        read_dataset(tmp_path / "d.jsonl", split="test")
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(DataError, match="not a file"):
        read_coco(tmp_path / "dir.json")
