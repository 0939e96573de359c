"""scripts/reproduce_tables.py: the paper's numbers, the tables with and without the comparison,
the findings, reuse of evaluations and refusal of runs trained with other settings."""

import json
import os

import pytest

from script_loader import ROOT, load_script
from tfvae import config as config_lib
from tfvae import paper

rt = load_script("reproduce_tables")


def test_paper_numbers_match_the_paper_text():
    text = open(os.path.join(os.path.dirname(ROOT), "shared", "reference", "paper_zhou2020_vae_beta_vae.txt")).read() \
        if os.path.exists(os.path.join(os.path.dirname(ROOT), "shared", "reference")) else None
    # the beta table's beta=1 row is the latent table's l=64 row (same model)
    for p in paper.TABLE1_PREDICTORS:
        assert paper.TABLE2_BETA[1.0][p] == paper.TABLE1_LATENT[64][p]
    assert paper.TABLE2_BETA[10.0] == {"rec_error": 0.859, "elbo_grad": 0.905, "kl_grad": 0.810, "rec_grad": 0.905,
                                       "combi": 0.749, "proj_rec_error": 0.864}
    assert paper.ENSEMBLE["auroc"] == 0.903
    assert paper.settings() == [(32, 1.0), (64, 1.0), (256, 1.0), (64, 0.1), (64, 0.5), (64, 2.0), (64, 10.0)]
    if text:  # every row as printed in the paper
        for latent, row in paper.TABLE1_LATENT.items():
            assert f"{latent} " + " ".join(f"{row[p]:.3f}" for p in paper.TABLE1_PREDICTORS) in text
        for beta, row in paper.TABLE2_BETA.items():
            assert f"{beta:.1f} " + " ".join(f"{row[p]:.3f}" for p in paper.TABLE2_PREDICTORS) in text


def fake_results(shift=0.0, combi_slope=-0.01):
    """Results shaped like evaluation.evaluate's, for every run of the two tables."""
    out = {}
    for latent, beta in paper.settings():
        r = {"rec_error": 0.80, "elbo_grad": 0.85, "kl_grad": 0.70, "rec_grad": 0.85 + shift, "combi": 0.75,
             "intensity": 0.9}
        r["combi"] += combi_slope * paper.BETAS.index(beta) if latent == 64 else 0
        if latent == 64:
            r["proj_rec_error"] = 0.81
        if beta == 10.0:
            r["ensemble"] = 0.84
        out[(latent, beta)] = {p: {"auroc": v, "auprc": 0.5, "auroc_brain": v - 0.1} for p, v in r.items()}
        if beta == 10.0:
            out[(latent, beta)]["ensemble"].update(coefficients={"fit_volumes": ["a", "b"]}, scored_volumes=18)
    return out


def test_tables_show_the_paper_only_for_brats():
    results = fake_results()
    with_paper, rows = rt.render(results, compare=True, markdown=True)
    without, _ = rt.render(results, compare=False, markdown=False)
    # Table 1, l=32, Rec-Error: ours 0.800, paper 0.860
    assert "| 32 | 0.800 (0.860, -0.060) |" in with_paper
    assert "(0.860" not in without and "0.800" in without
    assert "Proj-Rec-Error" in with_paper and "Ensemble" in with_paper and "(0.903, -0.063)" in with_paper
    # CSV rows: 3 x 6 for Table 1, 5 x 7 for Table 2, the ensemble line
    assert len(rows) == 3 * 6 + 5 * 7 + 1
    row = next(r for r in rows if r[0] == 2 and r[2] == 10.0 and r[3] == "combi")
    assert row[4] == pytest.approx(0.75 - 0.04) and row[7] == 0.749 and row[8] == pytest.approx(0.71 - 0.749)
    brain, _ = rt.render(results, compare=True, markdown=True, metric="auroc_brain")
    assert "| 32 | 0.700 |" in brain and "(0.860" not in brain


def test_findings_say_what_holds():
    holds = rt.findings(fake_results(shift=0.0, combi_slope=-0.01))
    text = "\n".join(holds)
    assert "Rec-grad beats Rec-Error" in text and "7 of 7 runs" in text
    assert "Projection improves Rec-Error" in text and "5 of 5 betas" in text
    assert "Combi degrades as beta grows" in text and "falls in 4 of 4 steps" in text
    assert all(line.endswith("holds.") for line in holds if line.startswith(("Rec-grad beats", "Combi")))
    fails = rt.findings(fake_results(shift=-0.1, combi_slope=0.01))
    rec = next(line for line in fails if line.startswith("Rec-grad beats"))
    combi = next(line for line in fails if line.startswith("Combi degrades"))
    assert rec.endswith("does not hold.") and combi.endswith("does not hold.")


def test_predictors_per_run():
    assert "proj_rec_error" not in rt.predictors_for(32, 1.0)
    assert "proj_rec_error" in rt.predictors_for(64, 0.5) and "ensemble" not in rt.predictors_for(64, 0.5)
    assert "ensemble" in rt.predictors_for(64, 10.0)
    assert all("intensity" in rt.predictors_for(*s) for s in paper.settings())


def test_quick_settings_are_valid_phantom_configs():
    config = config_lib.load(os.path.join(ROOT, "configs", "beta1.json"), rt.QUICK)
    assert config["data"]["name"] == "brain_phantom" and config["data"]["config"] == "default"
    assert config["data"]["test_name"] is None
    assert config["train"]["epochs"] == 12 and config["train"]["learning_rate"] == 0.001


def test_existing_evaluation_is_reused(tmp_path):
    config = config_lib.load(os.path.join(ROOT, "configs", "beta1.json"), rt.QUICK)
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    config_lib.save(config, run / "eval" / "config.json")
    (run / "eval" / "results.json").write_text(json.dumps({"rec_error": {"auroc": 0.5}}))
    # no model.keras: evaluating again would fail, so this must come from the saved results
    assert rt.ensure_evaluated(config, str(run), False, False) == {"rec_error": {"auroc": 0.5}}


def test_run_trained_with_other_settings_is_refused(tmp_path, capsys):
    runs = tmp_path / "runs"
    other = config_lib.load(os.path.join(ROOT, "configs", "beta1.json"), rt.QUICK + ["train.epochs=3"])
    (runs / "l32_b1").mkdir(parents=True)
    config_lib.save(other, runs / "l32_b1" / "config.json")
    with pytest.raises(SystemExit, match="trained with other settings .*train.epochs.*--retrain"):
        rt.main(["--quick", "--runs-dir", str(runs), "--data-dir", str(tmp_path / "tfds"), "--quiet"])


def test_bad_override_is_one_line(capsys):
    assert rt.main(["--quick", "--set", "model.betta=2"]) == 2
    assert "unknown key 'model.betta'" in capsys.readouterr().err
