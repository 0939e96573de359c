"""scripts/raw_study.py's library (tfvae/studies/raw_study.py) end to end on one coarse raw phantom head
(4 mm, the preprocessing at 4 mm as tests/test_localize_preprocess.py) with the tiny run, and its
figures on arrays whose answers are known."""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tfvae.data import head_preprocessing as hp  # noqa: E402
from tfvae.studies import raw_study  # noqa: E402
from tfvae.commands import localize  # noqa: E402
from tests.test_localize_preprocess import CoarseSettings  # noqa: E402  (what --preprocess runs in those tests)


def test_figures_on_known_arrays():
    label = np.zeros((4, 4, 4), np.uint8)
    label[:2, :2, :2] = 2
    brain = np.ones_like(label)
    score = label.astype(np.float32) + 0.1
    mask = label > 0
    figures = raw_study.map_figures(score, mask, brain, label)
    assert figures["auroc"] == 1.0 and figures["dice"] == 1.0 and figures["healthy_flagged"] == 0.0
    assert raw_study.map_figures(-score, ~mask, brain, label)["auroc"] == 0.0
    assert figures["best_dice"] == 1.0 and "dice_calibrated" not in figures
    assert raw_study.map_figures(score, mask, brain, label, calibrated=5.0)["dice_calibrated"] == 0.0
    rows = [{"seed": 9000 + i, "tumour_ml": 30.0, "a": {"auroc": 0.9, "dice": 0.5},
             "b": {"auroc": 0.9 + d, "dice": 0.5 - d, "brain_dice": 0.96 - d}, "diff": {"auroc": d, "dice": -d}}
            for i, d in enumerate((0.0, 0.01, 0.02))]
    summaries = raw_study.groups(rows)
    summary = summaries["all"]
    assert summary["auroc"]["diff"]["mean"] == pytest.approx(0.01)
    assert summary["auroc"]["target"] == "met on the mean only"  # the interval reaches past 0.02
    assert summary["dice"]["worst_abs_diff"] == pytest.approx(0.02)
    assert summaries["brain_ok"]["seeds"] == [9000, 9001]  # brain Dice >= 0.95
    for text in (raw_study.table(rows, summaries), raw_study.threshold_table(rows)):
        assert max(len(line) for line in text.splitlines()) <= 80 and "9002" in text


def test_a_coarse_head_both_ways(monkeypatch, tiny_run, tmp_path):
    monkeypatch.setattr(hp, "Settings", CoarseSettings)
    work = str(tmp_path / "work")
    cases = raw_study.prepare(work, 1, 9000, coarse=True, log=lambda line: None)
    outcomes = raw_study.preprocess(work, cases, log=lambda line: None)
    assert outcomes["RawPhantom_09000"].status == "ok"
    options = ("--predictor", "rec_error", "--fpr", "0.05")
    folders = raw_study.localize_run(work, tiny_run, cases, outcomes, localize=localize.main, options=options)
    assert folders["rc"] == {"a": 0, "b": 0}
    row = raw_study.measure(cases[0], folders["a"], folders["b"])
    assert "reused" in row["b"]["preprocessed"]  # localize took the study's preprocessing
    assert row["b"]["brain_dice"] > 0.9 and row["a"]["tumour_outside_brain"] == 0
    for side in ("a", "b"):
        assert 0.5 < row[side]["auroc"] <= 1.0 and row[side]["flagged_voxels"] > 0
    assert row["diff"]["auroc"] == pytest.approx(row["b"]["auroc"] - row["a"]["auroc"])
    # again: nothing localized anew, the same figures
    again = raw_study.localize_run(work, tiny_run, cases, raw_study.preprocess(work, cases, log=lambda line: None),
                                   localize=localize.main, options=options)
    assert raw_study.measure(cases[0], again["a"], again["b"]) == row
    json.dumps(row)  # what the script writes
