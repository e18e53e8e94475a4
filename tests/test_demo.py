"""The demo's report: its table and contact sheet (the whole demo runs in CI: `clipcap demo --quick`)."""

from __future__ import annotations

import json

import pytest

from clipcap.demo.run import FULL, QUICK, _contact_sheet, run_demo, summary_table


def _report(**overrides):
    row = {
        "variant": "mlp",
        "exact_match": 0.93,
        "bleu4": 0.97,
        "cider": 7.5,
        "n_heldout": 300,
        "ort_ms_p50": 8.4,
        "torch_ms_p50": 14.0,
        "bundle_mb": 11.5,
        "identical_to_pytorch": 1.0,
    }
    row.update(overrides)
    return {"variants": [row], "mode": "full", "seconds": 250.0, "machine": {"cores": 2}}


def test_summary_table():
    table = summary_table(_report())
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["variant", "exact", "BLEU-4", "CIDEr"]
    assert lines[2].split() == ["mlp", "0.930", "0.970", "7.500", "300", "8.4", "14.0", "11.5", "1.000"]
    assert "full demo, 250 s on 2 cores" in lines[-1]


def test_summary_table_shows_missing_values_as_dashes():
    assert "  -  " in summary_table(_report(bleu4=None))


def test_contact_sheet_marks_wrong_captions(tmp_path):
    from PIL import Image

    from clipcap.demo.synthetic import write_dataset

    captions = write_dataset(tmp_path, 0, 0, 7, seed=1)
    test = [json.loads(line) for line in captions.read_text().splitlines()]
    right = [r["captions"][1] + "." for r in test]  # another phrasing, a full stop: still right
    wrong = ["a purple hexagon"] * len(test)
    rows = [{"variant": "mlp", "_predictions": right}, {"variant": "transformer", "_predictions": wrong}]
    path = _contact_sheet(tmp_path / "sheet.png", test, rows, tmp_path)
    sheet = Image.open(path).convert("RGB")
    assert sheet.width == 6 * 300 and sheet.height > 2 * 128
    colours = set(sheet.getdata())
    assert (0, 130, 0) in colours and (200, 0, 0) in colours and (110, 110, 110) in colours


def test_quick_plan_is_smaller():
    assert QUICK.n_train < FULL.n_train and QUICK.clip_steps < FULL.clip_steps


@pytest.mark.parametrize("variants", [(), ("mlp", "gru")])
def test_bad_variants(tmp_path, variants):
    from clipcap.errors import ConfigError

    with pytest.raises(ConfigError, match="variants must be among"):
        run_demo(tmp_path, variants=variants)
