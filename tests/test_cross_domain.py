"""tfvae.studies.cross_domain (scripts/reproduce_tables.py --cross-domain): the study's report and its
targets on known numbers, and a whole (tiny) study: trained once, evaluated on a shifted site,
calibrated on its healthy scans, reused when run again, its section replaced in the document."""

import json
import os

import pytest

from tfvae import config as config_lib
from tfvae.studies import cross_domain


def result(fpr01, fpr05, dice, best, fixed_fpr01=0.05, fixed_dice=0.4, p90=0.02, worst=0.04):
    """One seed's results; ``p90``/``worst`` (None: evidence made before they were measured): the
    90th percentile and maximum of the volumes' own FPR@1%."""
    r = {"measured_fpr01": fpr01, "measured_fpr05": fpr05, "dice_fpr01": dice, "best_dice": best,
         "auroc_brain": 0.98, "auprc_brain": 0.8,
         "fixed_threshold": {"measured_fpr01": fixed_fpr01, "measured_fpr05": 0.1, "dice_fpr01": fixed_dice,
                             "estimated_fpr01": fixed_fpr01 * 0.9}}
    if p90 is not None:
        r["measured_fpr01_volumes"] = {"mean": fpr01, "std": 0.01, "median": fpr01, "p90": p90, "max": worst, "n": 20}
    return {"recommended": r, "intensity": r}


def test_targets_are_judged_on_the_means_over_seeds():
    results = {"default": [result(0.012, 0.04, 0.70, 0.75, p90=0.02), result(0.014, 0.05, 0.72, 0.76, p90=0.03)],
               "bias": [result(0.025, 0.08, 0.66, 0.70, fixed_dice=0.68)] * 2,  # FPR@1% above 2 %, Dice below fixed
               "combined": [result(0.010, 0.02, 0.45, 0.70)] * 2,  # FPR@5% below 2.5 %, Dice low and far from best
               "contrast": [result(0.012, 0.04, 0.70, 0.75, p90=0.045, worst=0.2)] * 2}  # pooled fine, p90 above 3 %
    verdicts = cross_domain.judge_targets(results)
    assert verdicts["default"] == {"fpr01": True, "fpr05": True, "dice01": True, "dice_gap": True, "fpr01_p90": True,
                                   "dice_vs_fixed": True}
    assert verdicts["bias"]["fpr01"] is False and verdicts["bias"]["dice01"] is True
    assert verdicts["bias"]["dice_vs_fixed"] is False  # issue 30: per scan 0.66 against the fixed threshold's 0.68
    assert verdicts["combined"] == {"fpr01": True, "fpr05": False, "dice01": False, "dice_gap": False,
                                    "fpr01_p90": True, "dice_vs_fixed": True}
    # issue 30: the pooled rate in range, but one volume in ten above 3 %: missed
    assert verdicts["contrast"] == {"fpr01": True, "fpr05": True, "dice01": True, "dice_gap": True, "fpr01_p90": False,
                                    "dice_vs_fixed": True}
    assert not cross_domain.targets_met(verdicts)
    no_loss = verdicts["default_no_loss"]  # per scan 0.70 / 0.72 against fixed 0.4: better
    assert no_loss["verdict"] == "better" and no_loss["mean"] == pytest.approx(0.31)
    text = cross_domain.render(results, {("bias", 3): [result(0.011, 0.05, 0.6, 0.7)]}, verdicts, [0, 1],
                               cross_domain.BASE_CONFIG, [], "cmd")
    assert text.startswith(cross_domain.BEGIN) and text.endswith(cross_domain.END)
    assert "| combined (design set) |" in text and "| bias (design set) | 3 |" in text  # combined: a design site since issue 30
    # pooled FPR@1% fixed and per scan, then the volumes' 90th percentile and maximum, mean ± std over seeds
    assert ("| FPR@1% fixed | FPR@1% per scan | FPR@1% per scan, p90 of volumes | max of volumes | FPR@5% fixed |"
            in text)
    assert "| default (design set) | 5.00% ± 0.00 | 1.30% ± 0.14 | 2.50% ± 0.71 | 4.00% ± 0.00 | 10.00% ± 0.00 |" in text
    assert "| contrast (design set) | 5.00% ± 0.00 | 1.20% ± 0.00 | 4.50% ± 0.00 | 20.00% ± 0.00 |" in text
    assert "**missed fpr01, dice_vs_fixed**" in text and "every target met" in text
    assert "- contrast (design set): met fpr01, fpr05, dice01, dice_gap, dice_vs_fixed; **missed fpr01_p90**" in text
    assert "90th percentile over the test volumes at most 3%" in text


def test_evidence_without_the_volumes_distribution_renders_and_is_not_judged_on_it():
    """Evidence written before the per-volume distribution was measured: its cells are —, its p90
    target is not judged (None, named as such) and the targets are not all met."""
    old = {"default": [result(0.012, 0.04, 0.70, 0.75, p90=None)] * 2}
    verdicts = cross_domain.judge_targets(old)
    assert verdicts["default"]["fpr01_p90"] is None and verdicts["default"]["fpr01"] is True
    assert not cross_domain.targets_met(verdicts)
    assert cross_domain.targets_met(cross_domain.judge_targets({"default": [result(0.012, 0.04, 0.70, 0.75)] * 2}))
    text = cross_domain.render(old, {}, verdicts, [0, 1], cross_domain.BASE_CONFIG, [], "cmd")
    assert "| default (design set) | 5.00% ± 0.00 | 1.20% ± 0.00 | — | — | 10.00% ± 0.00 |" in text
    assert "- default (design set): met fpr01, fpr05, dice01, dice_gap, dice_vs_fixed; not judged fpr01_p90 (not in the evidence)" in text
    # a mix of seeds with and without it: the cell is over the seeds that have it
    mixed = {"default": [result(0.012, 0.04, 0.70, 0.75, p90=None), result(0.012, 0.04, 0.70, 0.75, p90=0.025)]}
    assert "| 1.20% ± 0.00 | 2.50% | 4.00% |" in cross_domain.render(
        mixed, {}, cross_domain.judge_targets(mixed), [0, 1], cross_domain.BASE_CONFIG, [], "cmd")


def test_the_section_is_replaced_and_the_rest_kept(tmp_path):
    path = str(tmp_path / "doc.md")
    with open(path, "w") as f:
        f.write("# Title\n\nkept above\n")
    cross_domain.write_section(path, f"{cross_domain.BEGIN}\nfirst\n{cross_domain.END}")
    with open(path, "a") as f:
        f.write("\nkept below\n")
    cross_domain.write_section(path, f"{cross_domain.BEGIN}\nsecond\n{cross_domain.END}")
    text = open(path).read()
    assert "kept above" in text and "kept below" in text and "second" in text and "first" not in text
    assert text.count(cross_domain.BEGIN) == 1


@pytest.mark.slow
def test_a_tiny_study_trains_evaluates_calibrates_and_reuses(tiny_data_dir, tmp_path, monkeypatch):
    base = tmp_path / "tiny.json"
    base.write_text(json.dumps({"name": "tiny", "data": {"config": "tiny", "image_size": 32,
                                                          "data_dir": tiny_data_dir},
                                "model": {"latent_dim": 8}, "train": {"epochs": 2, "batch_size": 16},
                                "predictors": {"projection_steps": 3}, "recommended": {"synthetic_copies": 1}}))
    monkeypatch.setattr(cross_domain, "HELD_OUT", ("tiny_combined",))
    md = str(tmp_path / "results.md")
    runs = str(tmp_path / "runs")
    kwargs = dict(base=str(base), seeds=(0,), test_sets=("default", "tiny_combined"), calibration_scans=(1,),
                  log=lambda *a: None)
    first = cross_domain.study(runs, md, **kwargs)
    assert len(first["results"]["tiny_combined"]) == 1 and ("tiny_combined", 1) in first["calibrated"]
    r = first["results"]["tiny_combined"][0]["recommended"]
    assert 0 <= r["measured_fpr01"] <= 1 and "fixed_threshold" in r and r["threshold_mode"] == "per_scan"
    calibrated = first["calibrated"][("tiny_combined", 1)][0]["recommended"]
    assert calibrated["dice_fpr01_threshold"] != r["dice_fpr01_threshold"]  # the site's own healthy scan
    assert os.path.isfile(os.path.join(runs, "healthy_scans", "tiny_combined", "tiny_combined_healthy_00_t2.nii.gz"))
    stamps = {p: os.path.getmtime(os.path.join(runs, "s0", p, "results.json"))
              for p in ("eval_default", "eval_tiny_combined", "eval_tiny_combined_1")}
    second = cross_domain.study(runs, md, **kwargs)  # everything reused
    assert {p: os.path.getmtime(os.path.join(runs, "s0", p, "results.json")) for p in stamps} == stamps
    assert second["report"] == first["report"]
    text = open(md).read()
    assert text.count(cross_domain.BEGIN) == 1 and "| tiny_combined (held out) |" in text
    # the volumes' own FPR@1% beside the pooled one (one seed: no spread), judged against issue 30's 3 %
    volumes = r["measured_fpr01_volumes"]
    assert volumes["n"] >= 1 and volumes["median"] <= volumes["p90"] <= volumes["max"]
    assert (f"| tiny_combined (held out) | {100 * r['fixed_threshold']['measured_fpr01']:.2f}% | "
            f"{100 * r['measured_fpr01']:.2f}% | {100 * volumes['p90']:.2f}% | {100 * volumes['max']:.2f}% |") in text
    assert first["verdicts"]["tiny_combined"]["fpr01_p90"] == (volumes["p90"] <= 0.03)
    # what the model adds: the recipe without a model, an untrained model, a 3-epoch one, the base's
    assert list(first["decomposition"]) == ["intensity (no model)", "intensity through the recipe (no model)",
                                            "recommended, untrained", "recommended, 3 epochs",
                                            "recommended, 2 epochs (the base config)"]
    assert "### What the model adds" in text and "| recommended, untrained |" in text
    evidence = json.load(open(cross_domain.evidence_path(md)))  # beside the document: every seed's results
    assert evidence["results"]["tiny_combined"][0]["recommended"]["measured_fpr01"] == r["measured_fpr01"]
    assert list(evidence["calibrated"]) == ["tiny_combined_1"]
    # stamped: the commit the figures came from and each seed's resolved config, as the run stored it
    import subprocess
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).stdout.strip()
    assert evidence["stamp"]["commit"] == head and evidence["stamp"]["wall_s"] >= 0
    assert evidence["stamp"]["configs"]["0"] == config_lib.load(os.path.join(runs, "s0", "config.json"))
    assert config_lib.load(os.path.join(runs, "s0", "config.json"))["seed"] == 0
    # the section rendered again from the evidence alone is the one written
    assert cross_domain.render_from_evidence(evidence, os.path.basename(cross_domain.evidence_path(md))) == first["report"]


def test_the_published_section_agrees_with_its_evidence():
    """docs/results_phantom.md's cross-domain section is what its evidence file renders to: a
    table edited by hand, or evidence replaced without the section, fails here."""
    docs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
    md = os.path.join(docs, "results_phantom.md")
    evidence = json.load(open(cross_domain.evidence_path(md), encoding="utf-8"))
    text = open(md, encoding="utf-8").read()
    section = text[text.index(cross_domain.BEGIN):text.index(cross_domain.END) + len(cross_domain.END)]
    assert cross_domain.render_from_evidence(evidence, os.path.basename(cross_domain.evidence_path(md))) == section
