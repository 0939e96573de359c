"""tfvae.studies.reproduce (and scripts/reproduce_tables.py): the paper's numbers, plans, the tables over
seeds, findings judged on paired differences, reuse of runs and evaluations, refusal of runs trained
with other settings, and a whole reproduction on the tiny phantom."""

import json
import os

import numpy as np
import pytest

from script_loader import ROOT, load_script
from tfvae import config as config_lib
from tfvae.studies import paper
from tfvae.studies import reproduce as rp
from tests.test_tuning import tiny_search

rt = load_script("reproduce_tables")


# the paper's tables as printed (Zhou et al. 2020, Tables 1 and 2 and Sec. 3), transcribed by hand
PAPER_TABLE1 = """32 0.860 0.900 0.853 0.901 0.831
64 0.856 0.900 0.809 0.900 0.800
256 0.838 0.871 0.853 0.871 0.803"""
PAPER_TABLE2 = """0.1 0.857 0.899 0.805 0.899 0.810 0.861
0.5 0.856 0.903 0.809 0.903 0.808 0.865
1.0 0.856 0.900 0.809 0.900 0.800 0.861
2.0 0.856 0.900 0.803 0.900 0.778 0.862
10.0 0.859 0.905 0.810 0.905 0.749 0.864"""


def test_paper_numbers_match_the_paper_text():
    for line in PAPER_TABLE1.splitlines():
        latent, *values = line.split()
        assert [paper.TABLE1_LATENT[int(latent)][p] for p in paper.TABLE1_PREDICTORS] == [float(v) for v in values]
    for line in PAPER_TABLE2.splitlines():
        beta, *values = line.split()
        assert [paper.TABLE2_BETA[float(beta)][p] for p in paper.TABLE2_PREDICTORS] == [float(v) for v in values]
    assert paper.ENSEMBLE == {"beta": 10.0, "latent_dim": 64, "auroc": 0.903}
    assert paper.settings() == [(32, 1.0), (64, 1.0), (256, 1.0), (64, 0.1), (64, 0.5), (64, 2.0), (64, 10.0)]


def test_the_rows_above_are_printed_in_the_paper():
    reference = os.path.join(os.path.dirname(ROOT), "shared", "reference", "paper_zhou2020_vae_beta_vae.txt")
    if not os.path.exists(reference):
        pytest.skip(f"the paper's text is not at {reference} (the project's shared reference, outside the repository)")
    text = open(reference).read()
    for line in (PAPER_TABLE1 + "\n" + PAPER_TABLE2).splitlines():
        assert line in text, line


def fake(auroc: dict, seed_shift=0.0) -> dict:
    return {p: {"auroc": v + seed_shift, "auprc": 0.5, "auroc_brain": v - 0.1 + seed_shift,
                "auprc_brain": 0.2, "dice_fpr01": 0.3} for p, v in auroc.items()}


def fake_per_setting(shift=0.0, combi_slope=-0.01, seeds=3):
    """Results shaped like evaluation.evaluate's, for every setting, with per-seed jitter."""
    out = {}
    for latent, beta in paper.settings():
        runs = []
        for s in range(seeds if (latent, beta) in ((64, 1.0), (64, 10.0)) else 1):
            r = {"rec_error": 0.80, "elbo_grad": 0.85, "kl_grad": 0.70, "rec_grad": 0.85 + shift, "combi": 0.75,
                 "intensity": 0.9, "recommended": 0.97}
            r["combi"] += combi_slope * paper.BETAS.index(beta) if latent == 64 else 0
            if latent == 64:
                r["proj_rec_error"] = 0.81
            runs.append(fake(r, seed_shift=0.002 * s * (1 if s % 2 else -1)))
        out[(latent, beta)] = runs
    return out


def test_cells_are_mean_and_std_over_seeds_and_show_the_paper_only_for_brats():
    per_setting = fake_per_setting()
    per_setting[(64, 1.0)][2]["rec_error"]["auroc"] = 0.83
    with_paper, rows = rp.render(per_setting, compare_paper=True)
    values = [r["rec_error"]["auroc"] for r in per_setting[(64, 1.0)]]
    cell = f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f} (paper 0.856; not comparable"
    assert cell in with_paper  # no AUROC over the reference's pixels: no difference shown
    for runs in per_setting.values():
        for r in runs:
            for p in r:
                r[p]["auroc_reference"] = r[p]["auroc"] - 0.05
    with_paper, _ = rp.render(per_setting, compare_paper=True)
    # one seed: no spread; the difference to the paper is taken on the reference's pixels
    assert "| 32 | 1 | 0.970 | 0.800 (reference pixels 0.750; paper 0.860, -0.110) |" in with_paper
    without, _ = rp.render(per_setting, compare_paper=False)
    assert "paper 0.860" not in without and "Recommended" in without and "Proj-Rec-Error" in without
    # CSV rows: 3 x 8 for Table 1, 5 x 9 for Table 2 (both intensity baselines)
    assert len(rows) == 3 * 8 + 5 * 9
    row = next(r for r in rows if r[0] == 1 and r[2] == 64 and r[3] == "rec_error")
    assert row[5] == pytest.approx(np.mean(values)) and row[7] == 3 and row[8] == 0.856
    brain, _ = rp.render(per_setting, compare_paper=True, metric="auroc_brain")
    assert "| 32 | 1 | 0.870 | 0.700 |" in brain and "paper 0.860" not in brain


def test_paired_differences_decide_better_worse_or_tie():
    assert rp.judge([0.02, 0.03, 0.025])["verdict"] == "better"
    assert rp.judge([-0.02, -0.03, -0.025])["verdict"] == "worse"
    assert rp.judge([0.02, -0.03, 0.015])["verdict"] == "tie"  # mean within the spread
    j = rp.judge([0.01, 0.03])
    assert j["mean"] == pytest.approx(0.02) and j["spread"] == pytest.approx(np.std([0.01, 0.03], ddof=1))
    assert rp.judge([0.004])["verdict"] == "tie" and rp.judge([0.004], pooled=0.001)["verdict"] == "better"
    assert rp.pooled_spread([[0.0, 0.2], [0.1], [0.0, 0.0]]) == pytest.approx(np.sqrt(0.02 / 2))


def test_findings_say_what_holds():
    holds = rp.findings(fake_per_setting(shift=0.1, combi_slope=-0.01))
    text = "\n".join(holds)
    rec = next(line for line in holds if line.startswith("Rec-grad beats"))
    assert rec.endswith("-> holds.") and "l64 b1: +0.150 ± 0.000 (3 seeds, better)" in rec
    assert any(line.startswith("Projection improves") and line.endswith("-> holds.") for line in holds)
    combi = next(line for line in holds if line.startswith("Combi degrades"))
    assert "l64 b10 - l64 b1 = -0.020" in combi and combi.endswith("-> holds.")
    assert "ELBO-grad and Rec-grad" in text
    fails = rp.findings(fake_per_setting(shift=-0.1, combi_slope=0.01))
    rec = next(line for line in fails if line.startswith("Rec-grad beats"))
    combi = next(line for line in fails if line.startswith("Combi degrades"))
    assert rec.endswith("does not hold.") and combi.endswith("does not hold.")
    ties = rp.findings(fake_per_setting(shift=-0.05))  # Rec-grad == Rec-Error exactly, every seed
    assert next(line for line in ties if line.startswith("Rec-grad beats")).endswith("-> tie.")
    # the claims that failed on the phantom are judged too, beside the ones that hold
    flat = next(line for line in holds if line.startswith("KL-grad does not depend on beta"))
    assert flat.endswith("-> holds.") and "within ±0.005" in flat  # the fake KL-grad is the same at every beta
    latent = next(line for line in holds if line.startswith("A large latent space (256)"))
    assert latent.endswith("-> tie.") and "l256 b1 - l64 b1 = +0.000" in latent  # the fake data: no difference
    moving = fake_per_setting()
    for r in moving[(64, 10.0)]:
        r["kl_grad"]["auroc"] -= 0.08
    line = next(l for l in rp.findings(moving) if l.startswith("KL-grad does not depend on beta"))
    assert "l64 b10 - l64 b1 = -0.080" in line and line.endswith("-> does not hold.")


def test_comparable_is_judged_by_size_not_by_sign():
    # a consistent but tiny gap (ELBO-grad 0.002 below Rec-grad on every seed) is "worse" by sign, comparable by size
    tiny = rp.judge([-0.002, -0.002, -0.002])
    assert tiny["verdict"] == "worse" and rp.comparable(tiny)
    assert not rp.comparable(rp.judge([-0.004, -0.005, -0.006]))  # |d| + s = 0.006
    assert not rp.comparable(rp.judge([0.02, -0.03, 0.015]))  # a tie by sign, but the spread is too wide
    per_setting = fake_per_setting()
    for runs in per_setting.values():
        for r in runs:
            r["elbo_grad"]["auroc"] = r["rec_grad"]["auroc"] - 0.002
    line = next(l for l in rp.findings(per_setting) if l.startswith("ELBO-grad and Rec-grad"))
    assert line.endswith("-> holds.") and "(3 seeds, worse; within ±0.005)" in line
    for runs in per_setting.values():
        for r in runs:
            r["elbo_grad"]["auroc"] = r["rec_grad"]["auroc"] - 0.02
    line = next(l for l in rp.findings(per_setting) if l.startswith("ELBO-grad and Rec-grad"))
    assert line.endswith("-> does not hold.") and "beyond ±0.005" in line


def test_target_is_judged_beyond_the_seed_spread():
    per_setting = fake_per_setting()
    for r in per_setting[(64, 1.0)]:
        r["recommended"].update(auprc_brain=0.9, dice_fpr01=0.6)
    table, verdicts = rp.target_table(per_setting)
    assert "| 64 | 1 | 3 |" in table
    line = next(v for v in verdicts if v.startswith("latent 64, beta 1 "))
    assert line.endswith("met, beyond the seed spread.") and "4.5x" in line
    failing = next(v for v in verdicts if v.startswith("latent 64, beta 10 "))
    assert failing.endswith("not met.")  # AUPRC ratio 1x, Dice 0.3
    assert "FPR@1% >6mm recommended" in table.splitlines()[0] and "—" in table  # no FPRs in these results
    # what the model adds over intensity_filtered: paired per seed, judged against the spread
    for s, r in enumerate(per_setting[(64, 1.0)]):
        r["intensity_filtered"] = {"auroc_brain": 0.80, "auprc_brain": 0.5 + 0.01 * s, "dice_fpr01": 0.6}
        r["recommended"].update(measured_fpr01=0.02 + 0.001 * s, measured_fpr01_far=0.007)
    table, verdicts = rp.target_table(per_setting)
    row = next(l for l in table.splitlines() if l.startswith("| 64 | 1 | 3 |"))
    assert "| 2.10 ± 0.10% | 0.70 ± 0.00% |" in row
    added = next(v for v in verdicts if v.startswith("latent 64, beta 1 (3 seeds), what the model adds"))
    auroc = [r["recommended"]["auroc_brain"] - 0.80 for r in per_setting[(64, 1.0)]]
    assert f"AUROC brain {np.mean(auroc):+.3f} ± {np.std(auroc, ddof=1):.3f} (better)" in added
    assert "AUPRC brain +0.390 ± 0.010 (better)" in added and "Dice@1%FPR +0.000 ± 0.000 (tie)" in added


def test_plans_are_validated_and_name_the_file_and_key(tmp_path):
    plan = rp.load_plan(rp.QUICK_PLAN)
    assert plan.seeds == 3 and plan.seeds_for(64, 10.0) == [0, 1, 2] and plan.seeds_for(32, 1.0) == [0]
    assert rp.load_plan(rp.QUICK_PLAN, seeds=5).seeds_for(64, 1.0) == [0, 1, 2, 3, 4]
    runs = rp.configs(plan)
    assert len(runs) == 2 * 3 + 5
    config = runs[(64, 10.0, 2)]
    assert config["seed"] == 2 and config["model"]["beta"] == 10.0 and config["data"]["name"] == "brain_phantom"
    assert config["train"]["learning_rate"] == 1e-4 and config["train"]["patience"] > 0
    assert config["evaluate"]["predictors"][0] == "recommended" and "ensemble" in config["evaluate"]["predictors"]
    assert config["augment"]["flip"]  # the paper's augmentation
    assert len(rp.configs(rp.load_plan(rp.PAPER_PLAN))) == 7
    bad = tmp_path / "plan.json"
    for content, words in (({"base": "beta1.json", "sedes": 2}, ["plan.json", "unknown key 'sedes'"]),
                           ({"base": "beta1.json", "seeds": "3"}, ["plan.json", "seeds", "'3'"]),
                           ({"base": "beta1.json", "seeded_settings": [[48, 1]]}, ["seeded_settings", "[48, 1]"]),
                           ({"seeds": 2}, ["missing key 'base'"]),
                           ({"base": "beta1.json", "studies": {"beta_search": {"seeds": 0}}},
                            ["beta_search.seeds", "a list of integers", "0"]),
                           ({"base": "beta1.json", "studies": {"second_restoration": {"sets": ["default"]}}},
                            ["second_restoration.sets", "[test set, tumours, role]"]),
                           ({"base": "beta1.json", "studies": {"threshold_study": {"design_sets": "default"}}},
                            ["threshold_study.design_sets", "a list of test-set names"])):
        bad.write_text(json.dumps(content))
        with pytest.raises(config_lib.ConfigError) as err:
            rp.load_plan(str(bad))
        assert "\n" not in str(err.value) and all(w in str(err.value) for w in words), str(err.value)


def test_existing_evaluation_is_reused(tmp_path):
    config = rp.configs(rp.load_plan(rp.QUICK_PLAN))[(64, 1.0, 0)]
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    config_lib.save(config, run / "eval" / "config.json")
    (run / "eval" / "results.json").write_text(json.dumps({"rec_error": {"auroc": 0.5}}))
    # no model.keras: evaluating again would fail, so this must come from the saved results
    assert rp.ensure_evaluated(config, str(run)) == {"rec_error": {"auroc": 0.5}}


def test_run_trained_with_other_settings_is_refused(tmp_path, capsys):
    runs = tmp_path / "runs"
    other = rp.configs(rp.load_plan(rp.QUICK_PLAN, overrides=["train.epochs=3"]))[(32, 1.0, 0)]
    (runs / "l32_b1_s0").mkdir(parents=True)
    config_lib.save(other, runs / "l32_b1_s0" / "config.json")
    assert rt.main(["--quick", "--runs-dir", str(runs), "--data-dir", str(tmp_path / "tfds"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "trained with other settings" in err and "train.epochs" in err and "--retrain" in err


def test_bad_override_is_one_line(capsys):
    assert rt.main(["--quick", "--set", "model.betta=2"]) == 2
    assert "unknown key 'model.betta'" in capsys.readouterr().err


@pytest.mark.slow
def test_a_whole_reproduction_on_the_tiny_phantom(tiny_data_dir, tmp_path):
    """Every setting trained for one epoch, two seeds for latent 64 at beta 10, the extras, the
    document; run again, everything is reused."""
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps({
        "base": os.path.join(ROOT, "configs", "beta1.json"),
        "set": ["data.name=brain_phantom", "data.config=tiny", "data.image_size=32", "data.test_name=null",
                "data.test_config=null",
                f"data.data_dir={tiny_data_dir}", "model.filters=null", "train.epochs=1", "train.batch_size=32",
                "train.learning_rate=0.001", "predictors.projection_steps=2", "evaluate.write_nifti=false",
                "evaluate.num_figures=1", "recommended.synthetic_copies=1"],
        "seeds": 2, "seeded_settings": [[64, 10.0]], "extras": True}))
    plan = rp.load_plan(str(plan_path))
    logs = []
    out = rp.reproduce(plan, str(tmp_path / "runs"), str(tmp_path / "tables"), verbose=False, command="test",
                       log=logs.append)
    assert len(out["per_setting"][(64, 10.0)]) == 2 and len(out["per_setting"][(32, 1.0)]) == 1
    md = (tmp_path / "tables" / "tables.md").read_text()
    for heading in ("## The recommended map against the intensity baselines", "### Table 1", "### Table 2",
                    "## The paper's findings", "Reference map-making against plain maps", "Ensemble over",
                    "## Where each run stopped", "| l64_b10_s1 | 1 | 1 |"):
        assert heading in md, heading
    assert os.path.isfile(tmp_path / "runs" / "l64_b10_s1" / "eval_plain" / "results.json")
    plain = json.loads((tmp_path / "runs" / "l64_b10_s1" / "eval_plain" / "results.json").read_text())
    assert list(plain) == rp.PLAIN_MAPS
    logs.clear()
    notes = f"\n{rp.NOTES_MARKER}\n\nWhy these numbers look as they do.\n"
    (tmp_path / "tables" / "tables.md").write_text(md + notes)
    rp.reproduce(plan, str(tmp_path / "runs"), str(tmp_path / "tables"), verbose=False, command="test",
                 log=logs.append)
    assert all("reused" in line for line in logs) and len(logs) == 8
    again = (tmp_path / "tables" / "tables.md").read_text()
    assert again.endswith(notes) and again.count(rp.NOTES_MARKER) == 1  # hand-written notes are kept
    # a document named with --md gets its evidence beside it: every run's cells, the extras, every verdict
    doc = tmp_path / "docs" / "results.md"
    rp.reproduce(plan, str(tmp_path / "runs"), str(tmp_path / "tables"), str(doc), verbose=False, command="test",
                 log=logs.append)
    evidence = json.loads((tmp_path / "docs" / "results.json").read_text())
    assert set(evidence["runs"]) == {rp.run_name(l, b, s) for (l, b), rs in out["per_setting"].items()
                                     for s in range(len(rs))}
    assert evidence["runs"]["l64_b10_s1"]["rec_grad"]["auroc"] == out["per_setting"][(64, 10.0)][1]["rec_grad"]["auroc"]
    assert set(evidence["extras"]) == {"eval_plain", "eval_ensemble_plus"}
    assert evidence["findings"] == out["findings"] and any("does not depend on beta" in f for f in evidence["findings"])


def test_report_only_trains_nothing_and_names_what_is_missing(tiny_data_dir, tmp_path):
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps({
        "base": os.path.join(ROOT, "configs", "beta1.json"),
        "set": ["data.name=brain_phantom", "data.config=tiny", "data.image_size=32", "model.filters=null",
                "data.test_name=null", "data.test_config=null", f"data.data_dir={tiny_data_dir}"], "seeds": 1}))
    out = rp.reproduce(rp.load_plan(str(plan_path)), str(tmp_path / "runs"), str(tmp_path / "tables"),
                       verbose=False, command="test", log=lambda line: None, report_only=True)
    assert len(out["missing"]) == 7 and not (tmp_path / "runs").exists()
    md = (tmp_path / "tables" / "tables.md").read_text()
    assert "**Not finished yet**" in md and "l64_b10_s0" in md


STAMP_KEYS = {"commit", "uncommitted", "command", "configs", "seeds", "data", "wall_s"}


def test_the_published_tables_are_what_their_evidence_renders():
    """docs/results_phantom.md's paper tables (everything above its notes) are ``document`` of their
    evidence, docs/results_phantom.json, which is stamped: a table edited by hand, or evidence
    replaced without its document, fails here."""
    md = os.path.join(ROOT, "docs", "results_phantom.md")
    text = open(md, encoding="utf-8").read()
    evidence = json.load(open(rp.evidence_path(md), encoding="utf-8"))
    assert STAMP_KEYS <= set(evidence["stamp"]), "evidence not stamped: regenerate it (docs/evaluation.md)"
    assert set(evidence["stamp"]["seeds"]) == set(evidence["runs"])  # every run's seed and resolved config
    kept = text[text.index(rp.NOTES_MARKER):]
    expected = rp.document(evidence, "docs/results_phantom.md" if rp.CROSS_DOMAIN_BEGIN in kept else None)
    assert text[:text.index(rp.NOTES_MARKER)].strip() == expected.strip()
    # its figures say what they were designed on: the phantom's default test split is a design set
    assert all("(design set" in line for line in text.splitlines() if line.startswith("### Table"))


def test_the_inventory_names_every_evidence_file_and_its_command():
    """docs/evaluation.md's inventory of the tables names every evidence JSON in docs/ (a new
    table's evidence must say how it is made) and the one command that regenerates them."""
    text = open(os.path.join(ROOT, "docs", "evaluation.md"), encoding="utf-8").read()
    inventory = text[text.index("## Every table and its evidence"):]
    for name in sorted(os.listdir(os.path.join(ROOT, "docs"))):
        if name.endswith(".json"):
            assert f"`{name}`" in inventory, name
    assert "python scripts/reproduce_tables.py --all --plan 2core" in inventory
    assert "python scripts/reproduce_tables.py --all --plan quick" in inventory


def test_all_on_a_tiny_plan_writes_every_table_and_its_stamped_evidence(tiny_data_dir, tmp_path):
    """``--all`` end to end on the tiny phantom (one setting, one seed, one epoch; every study on
    one or two tiny sets): each document written, each table's evidence beside it, stamped, and the
    documents what their evidence renders; run again, nothing is trained, evaluated or dumped."""
    base = tmp_path / "tiny.json"
    base.write_text(json.dumps({"name": "tiny", "data": {"config": "tiny", "image_size": 32,
                                                          "data_dir": tiny_data_dir},
                                "model": {"latent_dim": 8, "filters": None}, "train": {"epochs": 1, "batch_size": 32},
                                "predictors": {"projection_steps": 2}, "recommended": {"synthetic_copies": 1},
                                "evaluate": {"write_nifti": False, "num_figures": 1}}))
    plan = tmp_path / "reproduce_tiny.json"
    plan.write_text(json.dumps({
        "title": "tiny plan: 1 epoch", "base": os.path.join(ROOT, "configs", "beta1.json"),
        "set": ["data.name=brain_phantom", "data.config=tiny", "data.image_size=32", "data.test_name=null",
                "data.test_config=null", f"data.data_dir={tiny_data_dir}", "model.filters=null", "train.epochs=1",
                "train.batch_size=32", "train.learning_rate=0.001", "predictors.projection_steps=2",
                "evaluate.write_nifti=false", "evaluate.num_figures=1", "recommended.synthetic_copies=1"],
        "seeds": 1, "settings": [[32, 1.0]], "extras": False,
        "studies": {"cross_domain": {"base": str(base), "seeds": [0], "test_sets": ["tiny_combined"],
                                     "calibration_sites": []},
                    "threshold_study": {"design_sets": ["tiny"], "share_sites": [], "held_out_sets": ["tiny_combined"],
                                        "held_out_share_sites": [], "screening_sites": []},
                    "lesion_size": {"sets": [["tiny", "2-60 ml", "design set"],
                                             ["tiny_combined", "2-60 ml", "held out"]]},
                    "second_restoration": {"sets": [["tiny", "2-60 ml", "design"]]},
                    "beta_search": {"search": tiny_search(tmp_path, tiny_data_dir, objective_volumes=1),
                                    "seeds": [0]}}}))
    runs, docs = tmp_path / "runs", tmp_path / "docs"
    argv = ["--all", "--plan", str(plan), "--runs-dir", str(runs), "--docs", str(docs), "--quiet"]
    assert rt.main(argv) == 0
    from tfvae.studies import cross_domain, lesion_size_study, search_study, second_restoration_study
    from tfvae.studies import threshold_study as ts

    results_md, threshold_md = docs / "results_phantom.md", docs / "threshold_study.md"
    text = results_md.read_text()
    paper = json.loads((docs / "results_phantom.json").read_text())
    assert STAMP_KEYS <= set(paper["stamp"]) and paper["stamp"]["seeds"] == {"l32_b1_s0": 0}
    assert list(paper["stamp"]["data"]) == ["brain_phantom/tiny_32px@1.0.0"] or all(
        v for v in paper["stamp"]["data"].values())
    assert paper["stamp"]["runs_wall_s"]["l32_b1_s0"]["train_s"] > 0 and paper["stamp"]["wall_s"] > 0
    assert paper["stamp"]["plan"]["title"] == "tiny plan: 1 epoch" and "--all" in paper["stamp"]["command"]
    assert text.startswith(rp.document(paper)) and "(design set; tiny plan: 1 epoch)" in text
    cross = json.loads((docs / "results_phantom_cross_domain.json").read_text())
    assert STAMP_KEYS <= set(cross["stamp"]) and any("tiny_combined" in k for k in cross["stamp"]["data"])
    assert cross_domain.render_from_evidence(cross, "results_phantom_cross_domain.json") in text
    lesion = json.loads((docs / "results_phantom_lesion_size.json").read_text())
    assert STAMP_KEYS <= set(lesion["stamp"]) and set(lesion["results"]) == {"tiny", "tiny_combined"}
    sets = [tuple(s) for s in json.loads(plan.read_text())["studies"]["lesion_size"]["sets"]]
    assert lesion_size_study.body(lesion, sets).strip() in text
    threshold = threshold_md.read_text()
    for section in ("design", "held-out", "bound"):
        evidence = json.loads((docs / f"threshold_study_{section.replace('-', '_')}.json").read_text())
        assert STAMP_KEYS <= set(evidence["stamp"]) and evidence["stamp"]["wall_s"] is not None
        assert ts.section_body(section, evidence).strip() in threshold
    assert not (docs / "threshold_study_screening.json").exists()  # no screening sites in this plan
    restored = json.loads((docs / "results_phantom_second_restoration.json").read_text())
    assert STAMP_KEYS <= set(restored["stamp"]) and set(restored["results"]) == {"tiny"}
    begin, end = second_restoration_study.MARKERS
    assert begin in text and end in text and "second restoration" in text[text.index(begin):text.index(end)]
    picked = json.loads((docs / "search_beta_picks.json").read_text())
    assert STAMP_KEYS <= set(picked["stamp"]) and [r["beta"] for r in picked["results"]["0"]] == [0.5, 4.0]
    assert search_study.body(picked).strip() in (docs / "search.md").read_text()
    # run again: everything reused (no file under runs/ rewritten but the evidence)
    dumps = sorted((runs / "study").rglob("*.npz")) + sorted((runs / "second_restoration").rglob("*.npz"))
    models = [runs / "paper_tiny" / "l32_b1_s0" / "model.keras",
              runs / "search_study" / "s0" / "trials" / "0" / "model.keras"]
    mtimes = {p: p.stat().st_mtime for p in dumps + models}
    assert rt.main(argv) == 0
    assert {p: p.stat().st_mtime for p in mtimes} == mtimes
    assert json.loads((docs / "results_phantom.json").read_text())["runs"] == paper["runs"]
