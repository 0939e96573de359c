"""Which beta each objective picks (tfvae.studies.search_study): its auroc column against a real
auroc search of the same settings, its test columns leaving the held-apart volumes out, its picks,
and its table against its evidence."""

import csv
import json
import os

import pytest

from script_loader import load_script
from tests.test_tuning import tiny_search
from tfvae.studies import search_study


def _row(beta, **values):
    base = {"beta": beta, "neg_elbo": 0.0, "val_loss": 0.0, "val_auroc": 0.5, "test_recommended_auroc_brain": 0.5,
            "test_rec_grad_auroc_brain": 0.5, "test_recommended_dice_fpr01": 0.1}
    return base | values


def test_picks_take_the_best_value_of_each_objective_in_its_direction():
    rows = [_row(0.1, neg_elbo=10.0, val_loss=1.0, val_auroc=0.7, test_recommended_auroc_brain=0.90),
            _row(1.0, neg_elbo=9.0, val_loss=2.0, val_auroc=0.8, test_recommended_auroc_brain=0.95,
                 test_recommended_dice_fpr01=0.3, test_rec_grad_auroc_brain=0.6),
            _row(10.0, neg_elbo=9.5, val_loss=3.0, val_auroc=0.9, test_recommended_auroc_brain=0.93)]
    assert search_study.picks(rows) == {"neg_elbo": 1.0, "val_loss": 0.1, "auroc": 10.0,
                                        "test AUROC (recommended)": 1.0, "test AUROC (rec_grad)": 1.0,
                                        "test Dice@1% (recommended)": 1.0}


@pytest.mark.parametrize("extra, message", [({"objective": "auroc"}, "objective 'auroc'"),
                                            ({"objective_split": "test"}, "objective_split 'test'"),
                                            ({"objective_volumes": 2}, "would hold apart all 2 volumes")])
def test_a_search_the_study_cannot_read_is_refused_before_training(tmp_path, tiny_data_dir, extra, message):
    search_file = tiny_search(tmp_path, tiny_data_dir, **({"objective_volumes": 1} | extra))
    with pytest.raises(ValueError, match=message):
        search_study.report(search_file, str(tmp_path / "study"), [0], str(tmp_path / "s.md"))
    assert not (tmp_path / "study").exists()  # nothing trained


@pytest.mark.slow
def test_the_study_scores_trials_as_an_auroc_search_would(tmp_path, tiny_data_dir):
    search_file = tiny_search(tmp_path, tiny_data_dir, objective_volumes=1)  # neg_elbo: it varies beta
    md = str(tmp_path / "search.md")
    evidence = search_study.report(search_file, str(tmp_path / "study"), [0], md, command="test")
    rows = evidence["results"]["0"]
    assert [r["beta"] for r in rows] == [0.5, 4.0]

    # the same settings searched with the auroc objective: the same trained runs, the same objective values
    with open(search_file) as f:
        raw = json.load(f)
    auroc_file = tmp_path / "auroc.json"
    auroc_file.write_text(json.dumps(raw | {"objective": "auroc"}))
    auroc_dir = str(tmp_path / "auroc_search")
    assert load_script("tune").main(["--search", str(auroc_file), "--dir", auroc_dir, "--quiet"]) == 0
    for trial, row in zip(("0", "1"), rows):
        with open(os.path.join(auroc_dir, "trials", trial, "objective.json")) as f:
            objective = json.load(f)
        assert objective["values"]["model.beta"] == row["beta"]
        assert row["val_auroc"] == pytest.approx(objective["val_auroc"], abs=1e-4)
        assert row["auroc_volumes"] == objective["objective_volume_ids"] and len(row["auroc_volumes"]) == 1

        # the test columns: the study's evaluation, without the held-apart volume
        evaluation = os.path.join(str(tmp_path / "study"), "s0", "trials", row["trial_id"], "eval_search_study")
        with open(os.path.join(evaluation, "per_volume.csv"), newline="") as f:
            volumes = {r["volume"] for r in csv.DictReader(f)}
        assert volumes and not volumes & set(row["auroc_volumes"])
        with open(os.path.join(evaluation, "results.json")) as f:
            results = json.load(f)
        assert row["test_recommended_auroc_brain"] == results["recommended"]["auroc_brain"]

    # the table is what its evidence renders, between the markers; a second call reuses every score
    text = open(md, encoding="utf-8").read()
    begin, end = search_study.MARKERS
    assert text[text.index(begin) + len(begin):text.index(end)].strip() == search_study.body(evidence).strip()
    assert os.path.isfile(search_study.evidence_path(md))
    results_file = os.path.join(evaluation, "results.json")
    before = os.path.getmtime(results_file)
    again = search_study.report(search_file, str(tmp_path / "study"), [0], md, command="test")
    assert again["results"] == evidence["results"] and os.path.getmtime(results_file) == before


def test_the_published_table_is_what_its_evidence_renders():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "docs", "search_beta_picks.json")) as f:
        evidence = json.load(f)
    text = open(os.path.join(root, "docs", "search.md"), encoding="utf-8").read()
    begin, end = search_study.MARKERS
    assert text[text.index(begin) + len(begin):text.index(end)].strip() == search_study.body(evidence).strip()
    rows = [r for seed_rows in evidence["results"].values() for r in seed_rows]
    assert len(evidence["results"]) == 3 and len(rows) == 15 and evidence["stamp"]["data"]
    for r in rows:  # the auroc objective's volumes were left out of the test columns
        assert len(r["auroc_volumes"]) == 2
