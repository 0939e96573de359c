"""evaluate.py end to end on the tiny phantom, and the pieces it is made of."""

import glob
import json
import os

import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import average_precision_score, roc_auc_score

from script_loader import load_script
from tfvae import config as config_lib
from tfvae.data import preprocessing
from tfvae.data import pipelines as data
from tfvae.maps.ensemble import split_volumes
from tfvae.evaluation.evaluate import FAR_MM, far_from_lesions
from tfvae.maps.predictors import ALL_PREDICTORS
from tfvae.data.preprocessing import SliceGeometry

METRICS = ("auroc", "auprc", "auroc_brain", "auprc_brain", "best_dice", "dice_fpr01", "dice_fpr05")




evaluate_script = load_script("evaluate")


@pytest.fixture(scope="module")
def evaluated(tiny_run):
    assert evaluate_script.main(["--run-dir", tiny_run, "--set", "evaluate.nifti_maps=all"]) == 0
    with open(os.path.join(tiny_run, "eval", "results.json")) as f:
        return tiny_run, json.load(f)


def split_arrays(run, split):
    config = config_lib.load(os.path.join(run, "config.json"))
    examples = list(data.load_split(config["data"], split).as_numpy_iterator())
    return examples, config


def test_results_hold_every_predictor_and_metric(evaluated):
    """results.json, results.csv and results.md say the same, in ALL_PREDICTORS order, every
    predictor over every test pixel (the ensemble over its scored volumes only)."""
    import csv

    run, results = evaluated
    assert list(results) == list(ALL_PREDICTORS)
    examples, _ = split_arrays(run, "test")
    total = sum(ex["label"].size for ex in examples)
    with open(os.path.join(run, "eval", "results.csv")) as f:
        rows = {row["predictor"]: row for row in csv.DictReader(f)}
    with open(os.path.join(run, "eval", "results.md")) as f:
        md = f.read()
    for name, r in results.items():
        for metric in METRICS:
            assert 0.0 <= r[metric] <= 1.0, (name, metric)
            assert float(rows[name][metric]) == pytest.approx(r[metric], abs=1e-12), (name, metric)
        assert (r["pixels"] == total) == (name != "ensemble"), name
        assert f"| {name} | {r['auroc']:.3f} | {r['auprc']:.3f} |" in md, name
    for path in ("figures/tumour_slices.png", "figures/healthy_slices.png"):
        assert os.path.isfile(os.path.join(run, "eval", path)), path


def test_streamed_metrics_equal_sklearn_on_the_whole_test_split(evaluated):
    """The intensity baseline needs no model: recompute its metrics from the raw test split."""
    run, results = evaluated
    examples, _ = split_arrays(run, "test")
    scores = np.concatenate([ex["image"].ravel() for ex in examples])
    labels = np.concatenate([ex["label"].ravel() > 0 for ex in examples])
    brain = np.concatenate([ex["brain_mask"].ravel() > 0 for ex in examples])
    r = results["intensity"]
    assert r["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    assert r["auprc"] == pytest.approx(average_precision_score(labels, scores), abs=1e-6)
    assert r["auroc_brain"] == pytest.approx(roc_auc_score(labels[brain], scores[brain]), abs=1e-6)
    assert r["pixels"] == labels.size


def test_thresholds_are_calibrated_on_healthy_validation_pixels(evaluated):
    run, results = evaluated
    examples, _ = split_arrays(run, "validation")
    brain_scores = np.concatenate([ex["image"][ex["brain_mask"] > 0] for ex in examples])
    for key, fpr in (("dice_fpr01", 0.01), ("dice_fpr05", 0.05)):
        flagged = np.mean(brain_scores >= results["intensity"][f"{key}_threshold"])
        assert fpr / 2 < flagged <= fpr
    # the healthy reference a scan's threshold is fitted to: the validation brain pixels' quantiles
    for rate, threshold in results["intensity"]["healthy_reference"].items():
        assert float(rate) - 0.01 < np.mean(brain_scores >= threshold) <= float(rate)


def test_the_ensemble_never_scores_a_volume_it_was_fitted_on(evaluated):
    run, results = evaluated
    examples, _ = split_arrays(run, "test")
    fit = results["ensemble"]["coefficients"]["fit_volumes"]
    scored_pixels = sum(ex["label"].size for ex in examples if ex["volume_id"].decode() not in fit)
    assert fit and results["ensemble"]["pixels"] == scored_pixels
    assert results["ensemble"]["scored_volumes"] == len({ex["volume_id"] for ex in examples}) - len(fit)


def test_maps_are_written_in_each_source_volume_grid(evaluated):
    run, results = evaluated
    examples, _ = split_arrays(run, "test")
    geometry = {ex["volume_id"].decode(): (tuple(ex["source_shape"]), ex["source_affine"]) for ex in examples}
    fit = results["ensemble"]["coefficients"]["fit_volumes"]
    for volume_id, (shape, affine) in geometry.items():
        ensemble_map = os.path.join(run, "eval", "maps", f"{volume_id}_ensemble.nii.gz")
        assert os.path.exists(ensemble_map) == (volume_id not in fit)  # no in-sample ensemble maps
        for name in ("rec_grad", "proj_rec_error", "label", "image"):
            img = nib.load(os.path.join(run, "eval", "maps", f"{volume_id}_{name}.nii.gz"))
            assert img.shape == shape
            np.testing.assert_allclose(img.affine, affine)
        label = nib.load(os.path.join(run, "eval", "maps", f"{volume_id}_label.nii.gz")).get_fdata()
        assert set(np.unique(label)) <= {0, 1, 2, 4} and label.any()


def test_figures_and_metrics_reach_the_runs_tensorboard(evaluated):
    """In the run's evaluation folder: the figures, one text card with the whole table, and the
    metrics under the tags the HParams dashboard lists as metrics (its group: that folder)."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    from tfvae.evaluation.reporting import EVAL_METRICS, EVAL_PREDICTORS, EVALUATION_RUN, eval_tag

    run, results = evaluated
    values = {}
    for path in glob.glob(os.path.join(run, "logs", EVALUATION_RUN, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                values[v.tag] = v
    assert {"views/tumour_slices", "views/healthy_slices", "evaluation/results"} <= set(values)
    table = tf.make_ndarray(values["evaluation/results"].tensor).item().decode()
    assert all(f"| {p} |" in table for p in results)  # every predictor in the one summary card
    scalars = [t for t in values if t.startswith("test/")]
    assert len(scalars) == len(EVAL_PREDICTORS) * len(EVAL_METRICS)  # no dozens of single-point cards
    for predictor in EVAL_PREDICTORS:
        for metric in EVAL_METRICS:
            logged = float(tf.make_ndarray(values[eval_tag(predictor, metric)].tensor))
            assert logged == pytest.approx(results[predictor][metric], abs=1e-6)
    # the HParams metrics name exactly those tags in that folder, and the validation loss in its own
    listed = []
    for path in glob.glob(os.path.join(run, "logs", "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                if v.metadata.plugin_data.plugin_name == "hparams" and v.tag == "_hparams_/experiment":
                    data = plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
                    listed = [(m.name.group, m.name.tag) for m in data.experiment.metric_infos]
                    columns = [h.name for h in data.experiment.hparam_infos]
    assert ("validation", "loss") in listed
    assert {(EVALUATION_RUN, eval_tag(p, m)) for p in EVAL_PREDICTORS for m in EVAL_METRICS} <= set(listed)
    # TensorBoard shows the first five by name: beta, latent size, epochs, learning rate, precision
    assert sorted(columns)[:5] == ["model.beta", "model.latent_dim", "train.epochs", "train.learning_rate",
                                   "train.precision_used"] and len(columns) == 7


def test_same_seed_same_numbers_and_no_silent_overwrite(evaluated, capsys):
    run, results = evaluated
    assert evaluate_script.main(["--run-dir", run]) == 2
    assert "--overwrite" in capsys.readouterr().err
    other = os.path.join(run, "eval_again")
    assert evaluate_script.main(["--run-dir", run, "--out", other, "--predictors", "rec_error", "ensemble"]) == 0
    with open(os.path.join(other, "results.json")) as f:
        again = json.load(f)
    assert list(again) == ["rec_error", "ensemble"]
    for name in again:
        for metric in METRICS:
            assert again[name][metric] == results[name][metric], (name, metric)


def test_unknown_predictor_is_a_one_line_error(tiny_run, capsys):
    with pytest.raises(SystemExit) as stop:  # on the command line: argparse's choices, before TensorFlow loads
        evaluate_script.main(["--run-dir", tiny_run, "--out", os.path.join(tiny_run, "x"), "--predictors", "rec_eror"])
    assert stop.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "invalid choice: 'rec_eror'" in last and "rec_error" in last
    assert evaluate_script.main(["--run-dir", tiny_run, "--out", os.path.join(tiny_run, "x"),
                                 "--set", 'evaluate.predictors=["rec_eror"]']) == 2  # in a config
    err = capsys.readouterr().err.strip()
    assert "evaluate.predictors" in err and "\n" not in err


def test_split_volumes_is_seeded_disjoint_and_never_empty():
    ids = [f"v{i}" for i in range(20)] * 3
    fit, scored = split_volumes(ids, 0.1, seed=0)
    assert len(fit) == 2 and len(scored) == 18 and not set(fit) & set(scored)
    assert split_volumes(ids, 0.1, seed=0) == (fit, scored)
    assert split_volumes(ids, 0.1, seed=1) != (fit, scored)
    assert split_volumes(["a", "b"], 0.1, seed=0)[1]
    with pytest.raises(ValueError, match="at least 2 test volumes"):
        split_volumes(["a"], 0.1, seed=0)


def test_postprocessing_is_reported_beside_the_raw_metrics(tiny_run):
    out = os.path.join(tiny_run, "eval_pp")
    assert evaluate_script.main(["--run-dir", tiny_run, "--out", out, "--predictors", "rec_error", "intensity",
                                 "--set", "postprocess.median_size=3", "postprocess.erode_brain=1",
                                 "postprocess.min_component_voxels=4", "postprocess.positive_only=true"]) == 0
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    for name in ("rec_error", "intensity"):
        pp = results[name]["postprocessed"]
        assert all(0 <= pp[m] <= 1 for m in METRICS)
        assert pp["auroc"] != results[name]["auroc"]
    with open(os.path.join(out, "results.md")) as f:
        assert "| rec_error +pp |" in f.read()
    assert glob.glob(os.path.join(out, "maps", "*_rec_error_postprocessed.nii.gz"))


def test_every_predictor_is_also_measured_on_the_ensembles_volumes(evaluated):
    """The ensemble is compared like with like: each predictor's metrics over the scored volumes only."""
    run, results = evaluated
    examples, _ = split_arrays(run, "test")
    fit = set(results["ensemble"]["coefficients"]["fit_volumes"])
    scored = [ex for ex in examples if ex["volume_id"].decode() not in fit]
    scores = np.concatenate([ex["image"].ravel() for ex in scored])
    labels = np.concatenate([ex["label"].ravel() > 0 for ex in scored])
    same = results["intensity"]["ensemble_volumes"]
    assert same["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    assert same["auprc"] == pytest.approx(average_precision_score(labels, scores), abs=1e-6)
    for name in ALL_PREDICTORS:
        assert "ensemble_volumes" in results[name], name
    assert results["ensemble"]["ensemble_volumes"]["auroc"] == results["ensemble"]["auroc"]


def test_the_recommended_map_is_first_and_its_settings_come_from_validation(evaluated):
    run, results = evaluated
    assert list(results)[0] == "recommended"
    config = config_lib.load(os.path.join(run, "config.json"))
    validation_volumes = len({ex["volume_id"] for ex, in zip(split_arrays(run, "validation")[0])})
    selection = results["recommended"]["selection"]
    assert selection["lesions"] == config["recommended"]["synthetic_copies"] * validation_volumes
    settings = results["recommended"]["settings"]
    best = max(selection["table"], key=lambda row: row["auprc"])
    # the sizes in mm, recorded with the validation grid (slice spacing, row, column) and their voxels there
    geometry = preprocessing.SliceGeometry.from_arrays(*(split_arrays(run, "validation")[0][0][k] for k in
                                                         ("source_shape", "source_affine", "crop")))
    grid = list(geometry.voxel_mm())
    assert {k: settings[k] for k in ("median_mm", "gaussian_sigma_mm")} == {
        "median_mm": best["median_mm"], "gaussian_sigma_mm": best["gaussian_sigma_mm"]}
    assert settings["voxel_mm"] == pytest.approx(grid)
    assert settings["median_voxels"] == (
        [int(2 * np.floor(best["median_mm"] / v / 2 + 1e-6) + 1) for v in grid] if best["median_mm"] else 0)
    assert settings["sigma_voxels"] == (pytest.approx([best["gaussian_sigma_mm"] / v for v in grid], abs=1e-6)
                                        if best["gaussian_sigma_mm"] else 0.0)
    low, high = results["combi"]["kl_grad_range"]
    assert 0 <= low < high


def test_ensemble_scores_are_log_odds_that_do_not_saturate_and_take_any_features():
    from tfvae.maps.ensemble import PredictorEnsemble

    rng = np.random.default_rng(0)
    label = rng.random((2, 200, 200)) < 0.2
    maps = {"intensity": (label * 8.0 + rng.normal(size=label.shape)).astype(np.float32),
            "rec_error": rng.random(label.shape).astype(np.float32)}
    ensemble = PredictorEnsemble(features=["intensity", "rec_error"], seed=0)
    ensemble.add_volume("a", {k: v[:1] for k, v in maps.items()}, label[:1])
    ensemble.fit()
    score = ensemble.score({k: v[1:] for k, v in maps.items()})
    probability = ensemble.pipeline.predict_proba(np.stack([maps[f][1:].ravel() for f in ensemble.features], 1))[:, 1]
    usable = (probability > 1e-9) & (probability < 1 - 1e-9)  # where float64 log-odds are accurate
    log_odds = np.log(probability[usable]) - np.log1p(-probability[usable])
    np.testing.assert_allclose(score.ravel()[usable], log_odds, rtol=1e-4, atol=1e-4)
    confident = probability.astype(np.float32) == 1.0
    assert confident.sum() > 10 and len(np.unique(score.ravel()[confident])) == confident.sum()  # no ties
    assert roc_auc_score(label[1:].ravel(), score.ravel()) > 0.99
    assert ensemble.coefficients()["features"] == ["intensity", "rec_error"]


def test_per_volume_rows_agree_with_the_labels_and_the_thresholds(evaluated):
    import csv

    run, results = evaluated
    with open(os.path.join(run, "eval", "per_volume.csv")) as f:
        rows = list(csv.DictReader(f))
    examples, _ = split_arrays(run, "test")
    volumes = sorted({ex["volume_id"].decode() for ex in examples})
    intensity = {r["volume"]: r for r in rows if r["predictor"] == "intensity"}
    assert sorted(intensity) == volumes
    pooled_fp = pooled_healthy = fixed_fp = far_fp = far_healthy = 0
    for vid in volumes:
        mine = [ex for ex in examples if ex["volume_id"].decode() == vid]
        # brute force: each brain pixel's distance (mm) to the nearest lesion pixel of its stacked volume
        spacing = SliceGeometry.from_arrays(mine[0]["source_shape"], mine[0]["source_affine"], mine[0]["crop"]).voxel_mm()
        stacked = np.stack([np.squeeze(ex["label"]) > 0 for ex in mine])
        in_brain = np.stack([np.squeeze(ex["brain_mask"]) > 0 for ex in mine])
        where = np.argwhere(in_brain) * np.asarray(spacing)
        lesions = np.argwhere(stacked) * np.asarray(spacing)
        nearest = (np.min(np.linalg.norm(where[:, None] - lesions[None], axis=-1), axis=1) if len(lesions)
                   else np.full(len(where), np.inf))
        lesion = sum(int(((ex["label"] > 0) & (ex["brain_mask"] > 0)).sum()) for ex in mine)
        brain = np.concatenate([ex["image"][ex["brain_mask"] > 0] for ex in mine])
        labels = np.concatenate([ex["label"][ex["brain_mask"] > 0] > 0 for ex in mine])
        r = intensity[vid]
        assert (float(r["lesion_ml"]) > 0) == (lesion > 0)
        # the volume's own threshold: the calibrated one moved along the least-squares line through the
        # Q-Q plot of the volume's brain scores against the healthy reference's 20th-80th percentiles
        reference = results["intensity"]["healthy_reference"]
        bulk = [reference[f"{round(1 - p, 6):g}"] for p in np.linspace(0.2, 0.8, 9)]
        scale, offset = np.polyfit(bulk, np.quantile(brain, np.linspace(0.2, 0.8, 9)), 1)
        threshold = offset + scale * results["intensity"]["dice_fpr01_threshold"]
        assert float(r["threshold_fpr0.01"]) == pytest.approx(threshold, rel=1e-5)
        flagged = brain >= float(r["threshold_fpr0.01"])
        expected = 2 * (flagged & labels).sum() / max(flagged.sum() + labels.sum(), 1)
        assert float(r["dice_fpr0.01"]) == pytest.approx(expected, abs=1e-4)
        assert float(r["measured_fpr0.01"]) == pytest.approx((flagged & ~labels).sum() / (~labels).sum(), abs=1e-5)
        pooled_fp += (flagged & ~labels).sum()
        pooled_healthy += (~labels).sum()
        far = ~labels & (nearest > FAR_MM)  # argwhere's order is the brain mask's
        assert float(r["measured_fpr0.01_far"]) == pytest.approx((flagged & far).sum() / far.sum(), abs=1e-5)
        far_fp += (flagged & far).sum()
        far_healthy += far.sum()
        fixed_fp += ((brain >= results["intensity"]["dice_fpr01_threshold"]) & ~labels).sum()
        if labels.any():
            assert float(r["auroc_brain"]) == pytest.approx(roc_auc_score(labels, brain), abs=1e-4)
    # the test set's measured false-positive rate: over all its healthy brain pixels, per-scan and fixed
    assert results["intensity"]["measured_fpr01"] == pytest.approx(pooled_fp / pooled_healthy, abs=1e-9)
    assert far_healthy < pooled_healthy  # the lesions' borders are left out
    assert results["intensity"]["measured_fpr01_far"] == pytest.approx(far_fp / far_healthy, abs=1e-9)
    assert results["intensity"]["fixed_threshold"]["measured_fpr01"] == pytest.approx(fixed_fp / pooled_healthy, abs=1e-9)
    with open(os.path.join(run, "eval", "results.md")) as f:
        assert "intensity: the scan itself thresholded" in f.read()


def test_the_volumes_measured_rates_are_reported_beside_the_pooled_one(evaluated):
    """results.json's median, 90th percentile and maximum of the measured FPR are numpy's over the
    volumes of per_volume.csv (per-scan thresholds), and over each volume's rate at the calibrated
    threshold (brute force on the intensity map, the scan itself); the fallbacks are the volumes whose
    fallback column is not empty; results.md and the printed table show the 1% ones."""
    import csv

    from tfvae.evaluation import reporting

    run, results = evaluated
    with open(os.path.join(run, "eval", "per_volume.csv")) as f:
        rows = list(csv.DictReader(f))
    for name, r in results.items():
        mine = [row for row in rows if row["predictor"] == name]
        assert mine and r["volumes"] == len(mine), name
        for rate, measured in ((0.01, "measured_fpr01"), (0.05, "measured_fpr05")):
            rates = np.array([float(row[f"measured_fpr{rate:g}"]) for row in mine if row[f"measured_fpr{rate:g}"]])
            volumes = r[f"{measured}_volumes"]
            assert volumes["n"] == len(rates) > (0 if name == "ensemble" else 1), (name, rate)  # 1: its scored one
            for stat, expected in (("median", np.percentile(rates, 50)), ("p90", np.percentile(rates, 90)),
                                   ("max", rates.max()), ("mean", rates.mean())):
                assert volumes[stat] == pytest.approx(expected, abs=2e-5), (name, rate, stat)  # the CSV's 5 digits
            assert volumes["median"] <= volumes["p90"] <= volumes["max"]
            fell_back = [row for row in mine if row[f"fallback_fpr{rate:g}"]]
            assert r[measured.replace("measured_", "fallback_")] == len(fell_back), (name, rate)
    # at the calibrated threshold: each test volume's rate, brute force on the intensity map
    examples, _ = split_arrays(run, "test")
    fixed = []
    for vid in sorted({ex["volume_id"].decode() for ex in examples}):
        mine = [ex for ex in examples if ex["volume_id"].decode() == vid]
        brain = np.concatenate([ex["image"][ex["brain_mask"] > 0] for ex in mine])
        healthy = ~np.concatenate([ex["label"][ex["brain_mask"] > 0] > 0 for ex in mine])
        flagged = brain >= results["intensity"]["dice_fpr01_threshold"]
        fixed.append((flagged & healthy).sum() / healthy.sum())
    volumes = results["intensity"]["fixed_threshold"]["measured_fpr01_volumes"]
    assert volumes["n"] == len(fixed)
    assert volumes["p90"] == pytest.approx(np.percentile(fixed, 90), abs=1e-9)
    assert volumes["median"] == pytest.approx(np.median(fixed), abs=1e-9)
    assert volumes["max"] == pytest.approx(max(fixed), abs=1e-9)
    assert volumes["p90"] != pytest.approx(results["intensity"]["measured_fpr01_volumes"]["p90"], abs=1e-9)
    with open(os.path.join(run, "eval", "results.md")) as f:
        md = f.read()
    assert "| FPR@1% | FPR@1% p90 | max | FPR@1% >6mm |" in md and "| fallbacks |" in md
    for name, r in results.items():
        v = r["measured_fpr01_volumes"]
        assert (f"| {100 * r['measured_fpr01']:.2f}% | {100 * v['p90']:.2f}% | {100 * v['max']:.2f}% | "
                f"{100 * r['measured_fpr01_far']:.2f}% |") in md, name
        assert md.count(f"| {name} |") == 1 and f"| {r['fallback_fpr01']}/{r['volumes']} |" in md, name
    printed = reporting.text_table(results).splitlines()
    assert "FPR@1%  FPR@1% p90" in printed[0] and printed[0].rstrip().endswith("fallbacks")
    with open(os.path.join(run, "eval", "results.csv")) as f:
        table = {row["predictor"]: row for row in csv.DictReader(f)}
    assert float(table["intensity"]["measured_fpr01_p90"]) == results["intensity"]["measured_fpr01_volumes"]["p90"]


def test_a_fallback_is_counted_and_its_reason_and_missing_estimate_reach_per_volume_csv(tmp_path):
    """Measures and PerVolume on two volumes whose thresholds are given: one fitted, one that fell
    back (a NaN estimate). results: 1 fallback of 2 volumes, the NaN left out of the mean estimate;
    per_volume.csv: the fallback's reason and warnings, the estimates empty, and the warnings of
    the fitted one computed with the share of its brain pixels flagged."""
    import csv
    import types

    from tfvae.evaluation import reporting
    from tfvae.thresholds import scan_threshold
    from tfvae.thresholds.calibration import FPRS
    from tfvae.evaluation.evaluate import Measures, PerVolume

    rng = np.random.default_rng(0)
    shape = (4, 16, 16, 1)
    brain = np.zeros(shape, np.float32)
    brain[:, 2:14, 2:14] = 1
    label = np.zeros(shape, np.float32)
    label[1:3, 6:9, 6:9] = 1
    nan = float("nan")
    # far from the healthy reference (warned), 5 % estimated not healthy, but a quarter of the brain flagged (warned)
    fitted = {k: scan_threshold.ScanThreshold(0.9, 1.0, fpr, "per_scan", 0.8 * fpr, 6 * fpr, lesion_share=0.05)
              for k, fpr in FPRS.items()}
    fell = {k: scan_threshold.ScanThreshold(1.0, 1.0, fpr, "per_scan", nan, nan, fallback=True,
                                            reason="its scores are tied") for k, fpr in FPRS.items()}
    measures, per_volume = Measures({k: 1.0 for k in FPRS}), PerVolume(["rec_error"])
    scores = []
    for i, chosen in enumerate((fitted, fell)):
        score = rng.random(shape).astype(np.float32) * 1.2 * brain  # 0 outside the brain: never flagged
        scores.append(score)
        measures.update(score, label, brain > 0, chosen)
        volume = types.SimpleNamespace(
            volume_id=f"v{i}", label=label, brain_mask=brain, ensemble_fit=False, far=np.ones(shape[:3], bool),
            geometry=types.SimpleNamespace(voxel_mm=lambda: (1.0, 1.0, 1.0)), variants={"raw": {"rec_error": score}},
            thresholds={"raw": {"rec_error": chosen}})
        per_volume.update(volume)
    result = measures.result()
    assert result["volumes"] == 2 and result["fallback_fpr01"] == 1 and result["fallback_fpr05"] == 1
    assert result["estimated_fpr01"] == pytest.approx(0.8 * 0.01)  # the NaN of the fallback left out
    path = str(tmp_path / "per_volume.csv")
    reporting.write_per_volume(per_volume.rows, path)
    with open(path, newline="") as f:
        first, second = csv.DictReader(f)
    assert second["fallback_fpr0.01"] == "its scores are tied" and first["fallback_fpr0.01"] == ""
    for column in ("estimated_fpr0.01", "estimated_fpr0.05_at_calibrated", "estimated_lesion_share"):
        assert second[column] == "", column  # not estimated: empty, not "nan"
    assert float(first["estimated_fpr0.01"]) == pytest.approx(0.008) and float(first["estimated_lesion_share"]) == 0.05
    assert "could not be matched to the healthy reference (its scores are tied)" in second["warnings_fpr0.01"]
    # the fitted volume: its warnings as ScanThreshold gives them with the share of its brain pixels flagged
    share = float((scores[0][..., 0][brain[..., 0] > 0] >= 0.9).mean())
    assert 0.2 < share < 0.3
    for key, fpr in FPRS.items():
        expected = fitted[key].warnings(flagged_share=share)
        assert len(expected) == 2 and first[f"warnings_fpr{fpr:g}"] == " | ".join(expected)
        assert f"{100 * share:.0f}% of the brain is flagged" in first[f"warnings_fpr{fpr:g}"]


def test_figures_use_one_colour_scale_per_map_from_healthy_validation(evaluated):
    import matplotlib

    from tfvae.evaluation import reporting

    run, results = evaluated
    config = config_lib.load(os.path.join(run, "config.json"))
    examples, _ = split_arrays(run, "validation")
    brain = np.concatenate([ex["image"][ex["brain_mask"] > 0] for ex in examples])
    low, high = results["intensity"]["display_range"]
    assert np.mean(brain >= high) <= 0.001 < np.mean(brain >= low) and np.mean(brain >= low) > 0.98
    rng = np.random.default_rng(0)
    item = lambda tumour: {"title": "t", "image": rng.normal(size=(32, 32, 1)), "label":
                           np.full((32, 32, 1), 2 if tumour else 0, np.uint8), "reconstruction": np.zeros((32, 32, 1)),
                           "projected": np.ones((32, 32, 1)), "projected_reconstruction": np.zeros((32, 32, 1)),
                           "intensity": rng.normal(size=(32, 32, 1)) * (5 if tumour else 1)}
    scales = {"intensity": (low, high)}
    figs = [reporting.figure([item(True), item(True)], ["intensity"], "tumour", scales, {"intensity": high}),
            reporting.figure([item(False), item(False)], ["intensity"], "healthy", scales, {"intensity": high})]
    clims = [ax.images[0].get_clim() for fig in figs for ax in fig.axes
             if ax.images and ax.images[0].get_cmap().name == "inferno"]
    assert len(clims) == 4 and all(c == pytest.approx((low, high)) for c in clims)  # the same on every row
    from matplotlib.colors import to_rgba

    input_panel = figs[0].axes[0]  # row 1, "input + ground truth": the 1%-FPR mask outlined on the input too
    titles = [" ".join(ax.get_title().split()) for ax in figs[0].axes[:4]]  # (wrapped to their panels)
    assert titles[0] == "input + ground truth"
    # the grey panels: what the recommended map subtracts (g(mu(x_T))), named so -- not the projected input x_T
    assert titles == ["input + ground truth", "reconstruction", "restored reconstruction", "intensity"]
    assert any(np.allclose(c.get_edgecolor()[0], to_rgba(reporting.MASK_COLOUR)) for c in input_panel.collections
               if len(c.get_edgecolor()))
    for fig, labels in zip(figs, ({"edema"}, set())):  # the legend names the labels drawn, and the mask
        texts = {t.get_text() for t in fig.legends[0].get_texts()}
        assert texts == labels | {"mask at 1% FPR (on the input: intensity)"}
        sizes = [t.get_fontsize() for ax in fig.axes for t in ax.get_xticklabels() + [ax.title] if t.get_text()]
        assert sizes and min(sizes) >= reporting.FONT  # readable at 100 % zoom
        assert any(ax.get_label() == "<colorbar>" for ax in fig.axes)
        # the colour bar says the map's unit
        assert [ax.get_xlabel() for ax in fig.axes if ax.get_label() == "<colorbar>"] == ["intensity, z"]
        matplotlib.pyplot.close(fig)
    del config
    from tfvae.config.predictor_names import ALL_PREDICTORS

    assert set(reporting.MAP_UNITS) == set(ALL_PREDICTORS)  # every map has its unit


def test_a_second_evaluation_reuses_the_stored_calibration_and_gives_the_same_results(evaluated, tmp_path,
                                                                                       monkeypatch):
    from tfvae.evaluation import evaluate as evaluation
    from tfvae.maps import recommended as recommended_lib
    from tfvae.runs.run import Run

    run, results = evaluated
    calls = []
    real = evaluation.calibrate

    def recording(scorer, validation, predictors, *args, **kwargs):
        calls.append(list(predictors))
        return real(scorer, validation, predictors, *args, **kwargs)

    monkeypatch.setattr(evaluation, "calibrate", recording)
    monkeypatch.setattr(recommended_lib, "select", lambda *a, **k: pytest.fail("the recommended map's sizes "
                                                                             "were chosen again"))
    again = Run(run).evaluate(out_dir=str(tmp_path / "again"))
    assert calls == [["ensemble"]]  # only the ensemble, fitted on this evaluation's test volumes
    assert json.dumps(again, sort_keys=True) == json.dumps(results, sort_keys=True)


def test_a_test_split_without_lesions_is_refused_before_scoring(tiny_run, tmp_path, capsys):
    from tfvae_datasets import testing_trees as tt

    src = tmp_path / "scans"
    for i in range(2):  # test cases whose segmentations are all empty
        image, _, _ = tt.brain(seed=i)
        tt.save(src / f"case{i}.nii.gz", image)
        tt.save(src / f"case{i}_seg.nii.gz", np.zeros(image.shape, np.uint8))
    out = tmp_path / "eval"
    assert evaluate_script.main(["--run-dir", tiny_run, "--out", str(out), "--set", "data.test_name=nifti_folder",
                                 f"data.manual_dir={src}", "data.test_split=test"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]  # after TFDS's build progress: one line
    assert line.startswith("error: nifti_folder/default_32px split 'test': none of its 2 volume(s) has a lesion "
                           "(case0, case1)") and not out.exists()
    assert not [p for p in os.listdir(tmp_path) if "partial" in p]  # nothing half-made left


def test_an_evaluation_folder_that_is_a_file_is_refused(tiny_run, tmp_path):
    from tfvae.runs.run import Run, RunDirError

    a_file = tmp_path / "eval"
    a_file.write_text("mine")
    with pytest.raises(RunDirError, match="is a file, not a folder"):
        Run(tiny_run).evaluate(out_dir=str(a_file))
    assert a_file.read_text() == "mine"


def test_a_full_disk_during_an_evaluation_is_one_line_and_nothing_in_place(tiny_run, tmp_path, capsys, monkeypatch):
    import errno

    from tfvae.evaluation import evaluate as evaluation

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "eval" / "results.json"))

    monkeypatch.setattr(evaluation.reporting, "write_results", disk_full)
    out = tmp_path / "eval"
    assert evaluate_script.main(["--run-dir", tiny_run, "--out", str(out), "--predictors", "intensity"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"error: {out / 'results.json'}: no space left on device (") and line.endswith(
        f"free space on that disk, or evaluate into another folder (--out DIR); nothing was put in place ({out} is "
        "as it was)")
    assert not out.exists()  # no evaluation folder that looks complete
    assert not [p for p in os.listdir(tmp_path) if "partial" in p]  # and no temporary one left to refuse the next


def test_intensity_filtered_is_the_recommended_recipe_without_a_model(evaluated):
    """Recomputed with scipy from the raw test split: max(x, 0), 3D median, 3D Gaussian, brain mask."""
    from scipy import ndimage

    run, results = evaluated
    r = results["intensity_filtered"]
    best = max(r["selection"]["table"], key=lambda row: row["auprc"])  # chosen label-free, on synthetic lesions
    assert (r["settings"]["median_mm"], r["settings"]["gaussian_sigma_mm"]) == (best["median_mm"],
                                                                               best["gaussian_sigma_mm"])
    k, sigma = r["settings"]["median_mm"], r["settings"]["gaussian_sigma_mm"]
    examples, _ = split_arrays(run, "test")
    scores, labels = [], []
    for vid in sorted({ex["volume_id"] for ex in examples}):
        mine = sorted((ex for ex in examples if ex["volume_id"] == vid), key=lambda ex: ex["slice_index"])
        image = np.stack([ex["image"][..., 0] for ex in mine])
        brain = np.stack([ex["brain_mask"][..., 0] > 0 for ex in mine])
        voxel = preprocessing.SliceGeometry.from_arrays(mine[0]["source_shape"], mine[0]["source_affine"],
                                                        mine[0]["crop"]).voxel_mm()  # this volume's own grid
        out = np.maximum(image, 0)
        if k:  # per axis the odd number of voxels nearest to k / voxel size
            window = [min(range(1, 2 * int(k / v) + 4, 2), key=lambda n: (abs(n - k / v), -n)) for v in voxel]
            out = ndimage.median_filter(out, size=window, mode="nearest")
        if sigma:
            out = ndimage.gaussian_filter(out, sigma=[sigma / v for v in voxel], mode="nearest")
        out = np.where(brain, out, 0)
        scores.append(out[brain])
        labels.append(np.stack([ex["label"][..., 0] for ex in mine])[brain] > 0)
    assert r["auroc_brain"] == pytest.approx(roc_auc_score(np.concatenate(labels), np.concatenate(scores)), abs=1e-6)


def test_permuted_test_labels_change_no_setting_and_no_threshold(tiny_run, tmp_path):
    """Nothing label-free may see a test label: the filtered maps' sizes, the Combi range, every
    threshold and healthy reference come out the same when the test labels are scrambled."""
    import tensorflow as tf

    from tfvae.evaluation import evaluate as evaluation
    from tfvae.runs.run import Run

    run = Run(tiny_run)
    config = config_lib.resolve(run.config(), ['evaluate.predictors=["recommended", "intensity_filtered", '
                                               '"combi", "intensity"]', "evaluate.write_nifti=false"])
    test = data.load_split(config["data"], "test")
    validation = data.load_split(config["data"], "validation")
    scrambled = test.map(lambda ex: {**ex, "label": tf.reverse(ex["label"], axis=[0, 1])})
    outs = [evaluation.evaluate(run.model(), config, split, validation, str(tmp_path / name), verbose=False)[0]
            for name, split in (("plain", test), ("scrambled", scrambled))]
    for p in ("recommended", "intensity_filtered", "combi", "intensity"):
        a, b = outs[0][p], outs[1][p]
        for key in ("dice_fpr01_threshold", "dice_fpr05_threshold", "healthy_reference", "settings", "kl_grad_range"):
            assert a.get(key) == b.get(key), (p, key)
    assert outs[0]["intensity"]["auroc"] != outs[1]["intensity"]["auroc"]  # the labels did change


def test_the_reference_pixel_set_is_whole_slices_but_the_first_and_last(tiny_run, tmp_path):
    """evaluate.pixel_set=reference: every axial slice of the scan's grid but the first and last N, each
    resized whole (background included), as Zimmerer et al. score; the labels from each phantom's original
    segmentation (made again from its seed) resampled once by nearest neighbour, the slices our preprocessing
    drops included; recomputed here with nibabel, scipy and sklearn."""
    from scipy import ndimage

    from tfvae.runs.run import Run
    from tfvae_datasets.brain_phantom import phantom
    from tfvae_datasets.brain_phantom.brain_phantom_dataset_builder import subject_seed

    run = Run(tiny_run)
    results = run.evaluate(overrides=['evaluate.predictors=["intensity"]', "evaluate.pixel_set=reference",
                                      "evaluate.reference_skip=2", "evaluate.write_nifti=false"],
                           out_dir=str(tmp_path / "eval"), verbose=False)
    examples, config = split_arrays(tiny_run, "test")
    cfg = data.builder(config["data"]).builder_config
    scores, labels = [], []
    for vid in sorted({ex["volume_id"] for ex in examples}):
        mine = sorted((ex for ex in examples if ex["volume_id"] == vid), key=lambda ex: ex["slice_index"])
        geometry = preprocessing.SliceGeometry.from_arrays(mine[0]["source_shape"], mine[0]["source_affine"],
                                                           mine[0]["crop"])
        index = [ex["slice_index"] for ex in mine]
        vol = preprocessing.to_canonical(preprocessing.slices_to_volume(
            np.stack([ex["image"] for ex in mine]), index, geometry, order=1), geometry.source_affine)[:, :, 2:-2]
        scores.append(ndimage.zoom(vol, (32 / vol.shape[0], 32 / vol.shape[1], 1), order=1, grid_mode=True,
                                   mode="grid-constant").ravel())
        subject = phantom.synthesize_subject(subject_seed(cfg.split_seed("test"), "test", int(vid.decode().rsplit("_", 1)[1])),
                                             tumours=True, voxel_mm=cfg.voxel_mm, shift=cfg.shift)
        np.testing.assert_allclose(subject.affine, geometry.source_affine)
        seg = np.asarray(nib.as_closest_canonical(nib.Nifti1Image(subject.label, subject.affine)).dataobj)[:, :, 2:-2]
        nearest = [np.abs(np.arange(n)[None, :] - ((np.arange(32) + 0.5) * n / 32 - 0.5)[:, None]).argmin(axis=1)
                   for n in seg.shape[:2]]  # each pixel centre's nearest voxel
        label = seg[np.ix_(*nearest, np.arange(seg.shape[2]))] > 0
        labels.append(label.ravel())
    scores, labels = np.concatenate(scores), np.concatenate(labels)
    assert results["intensity"]["auroc_reference"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    assert results["intensity"]["auprc_reference"] == pytest.approx(average_precision_score(labels, scores), abs=1e-6)
    assert results["intensity"]["auroc_reference"] != results["intensity"]["auroc"]  # another pixel population
    assert labels.mean() < np.mean([(ex["label"] > 0).mean() for ex in examples])  # more background than ours


def test_the_set_up_scores_each_healthy_volume_once_and_changes_no_map(tiny_run):
    """Scorer.fit keeps the healthy volumes' network passes for the calibration (none is made
    again); the maps made from them equal a fresh scorer's; a slice's restored residual does not
    depend on the slices it is projected with (what the selection relies on), to 1e-5."""
    from tfvae.thresholds import calibration
    from tfvae.maps import scoring
    from tfvae.runs.run import Run

    run = Run(tiny_run)
    config = run.config()
    predictors = [p for p in ALL_PREDICTORS if p != "ensemble"]
    healthy = list(scoring.as_volumes(run.healthy_split(config)))
    scorer = scoring.Scorer(run.model(), config, predictors)
    scorer.fit(healthy)
    passes = []
    real_network, real_projection = scorer.pixel.network, scorer.projection
    scorer.pixel.network = lambda x: passes.append("network") or real_network(x)
    scorer.projection = lambda x: passes.append("projection") or real_projection(x)
    calibrated = calibration.calibrate(scorer, healthy, predictors, config["postprocess"])
    assert passes == []  # every network output of the calibration was kept by fit
    fresh = scoring.Scorer(run.model(), config, predictors)
    fresh.pixel.kl_range, fresh.sizes, fresh.grids = scorer.pixel.kl_range, scorer.sizes, scorer.grids
    kept = scorer(healthy[0].image, healthy[0].brain_mask, healthy[0].geometry.voxel_mm())
    made = fresh(healthy[0].image, healthy[0].brain_mask, healthy[0].geometry.voxel_mm())
    for name in kept:
        np.testing.assert_array_equal(kept[name], made[name], err_msg=name)
    assert calibration.calibrate(fresh, healthy, predictors, config["postprocess"]) == calibrated
    images = healthy[0].image
    whole = fresh._positive_residual(images)
    part = fresh._positive_residual(images[3:7])
    np.testing.assert_allclose(part, whole[3:7], rtol=1e-5, atol=1e-5 * float(np.abs(whole).max()))


def test_every_stage_of_the_set_up_is_announced_with_its_progress(tiny_run, tmp_path, capsys):
    from tfvae.runs.run import Run

    Run(tiny_run).evaluate(out_dir=str(tmp_path / "eval"), overrides=["recommended.synthetic_copies=2"])
    lines = capsys.readouterr().out.splitlines()
    stages = ["the reference Combi's KL-grad range", "choosing the recommended map's filter sizes",
              "choosing the intensity_filtered map's filter sizes", "scoring the test split",
              "calibrating the thresholds"]
    # the ensemble's volumes are scored first; the rest of the test split after the calibration
    assert "; first the 1 volume(s) the ensemble is fitted on" in next(l for l in lines if l.startswith(stages[3]))
    continued = next(i for i, line in enumerate(lines) if line.endswith(", continued"))
    where = [next(i for i, line in enumerate(lines) if line.startswith(stage)) for stage in stages]
    assert where == sorted(where) and continued > where[-1], lines
    assert lines[where[0] + 1].split()[1] == "slices"  # the count once the stage is done (a log, not a terminal)
    from tfvae.maps import scoring

    volumes = len(list(scoring.as_volumes(Run(tiny_run).healthy_split())))
    assert lines[where[1] + 1].startswith(f"{2 * volumes}/{2 * volumes} ")  # 2 synthetic lesions per volume


def test_nifti_maps_are_those_asked_for_and_the_disk_use_is_said(tiny_run, tmp_path, capsys):
    out = tmp_path / "eval"
    assert evaluate_script.main(["--run-dir", tiny_run, "--out", str(out), "--set",
                                 'evaluate.predictors=["recommended", "rec_error", "intensity"]']) == 0
    written = sorted(os.listdir(out / "maps"))
    kinds = {name.split("_", 2)[-1] for name in written}
    assert kinds == {"recommended.nii.gz", "image.nii.gz", "label.nii.gz"}, kinds  # the default: recommended
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(out) for f in names)
    files = sum(len(names) for _, _, names in os.walk(out))
    printed = capsys.readouterr().out
    last = printed.strip().splitlines()[-1]
    assert last == f"results, maps and figures: {out} ({size / 1e6:.0f} MB in {files} files)"
    assert printed.count("results, maps and figures:") == 1  # after the table only
    # from Python, the same line ends Run.evaluate
    from tfvae.runs.run import Run

    Run(tiny_run).evaluate(out_dir=str(tmp_path / "py"), overrides=['evaluate.predictors=["intensity"]'])
    said = capsys.readouterr().out.strip().splitlines()[-1]
    assert said.startswith(f"results, maps and figures: {tmp_path / 'py'} (") and said.endswith(" files)")
    with pytest.raises(config_lib.ConfigError, match="evaluate.nifti_maps"):
        config_lib.resolve({}, ["evaluate.nifti_maps=some"])


def test_the_nifti_maps_asked_for_are_chosen_once_for_every_volume(tmp_path):
    from tfvae.evaluation.evaluate import NiftiMaps

    asked = NiftiMaps(str(tmp_path), ["ensemble"], scored=["rec_error", "ensemble", "intensity"])
    assert asked.wanted("ensemble") and not asked.wanted("rec_error")  # also on the ensemble's fit volumes
    fallback = NiftiMaps(str(tmp_path), ["recommended"], scored=["rec_error", "intensity"])
    assert fallback.wanted("rec_error") and not fallback.wanted("intensity")
    every = NiftiMaps(str(tmp_path), "all", scored=["rec_error", "recommended", "intensity"])
    assert every.wanted("rec_error") and every.wanted("recommended") and not every.wanted("intensity")


def test_far_from_lesions_counts_millimetres_per_axis():
    label = np.zeros((5, 9, 9), bool)
    label[2, 4, 4] = True
    far = far_from_lesions(label, (3.0, 2.0, 1.0))  # slices 3 mm apart, rows 2 mm, columns 1 mm
    assert FAR_MM == 6.0
    assert not far[0, 4, 4] and far[0, 4, 8]  # 6 mm away along the slices (not more); sqrt(36 + 16) mm
    assert not far[2, 1, 4] and far[2, 0, 4]  # 6 mm and 8 mm along the rows
    assert not far[2, 4, 0] and not far[2, 4, 8]  # 4 mm along the columns
    assert far_from_lesions(np.zeros((2, 3, 3)), (1.0, 1.0, 1.0)).all()  # no lesion: everything is far
    from tfvae.evaluation import reporting
    assert f"more than {FAR_MM:g} mm from any lesion" in reporting.legend()  # the printed legend says the same


# --- issue 31: refused, interrupted and failed evaluations leave nothing behind; damaged thresholds -----
def _copy_of(tiny_run, tmp_path):
    import shutil

    run_dir = str(tmp_path / "R")
    shutil.copytree(tiny_run, run_dir, ignore=shutil.ignore_patterns("eval*"))
    return run_dir


def test_a_refused_evaluation_removes_its_own_partial_folder_so_the_next_one_runs(tiny_run, tmp_path):
    from tfvae.thresholds.calibration import CalibrationError
    from tfvae.runs.run import Run

    run = Run(_copy_of(tiny_run, tmp_path))
    out = str(tmp_path / "eval")
    fast = ['evaluate.predictors=["intensity"]']
    with pytest.raises(CalibrationError, match="no calibration named 'mysite'"):  # refused once it had begun
        run.evaluate(overrides=[*fast, "threshold.calibration=mysite"], out_dir=out, verbose=False)
    assert not os.path.exists(out) and not [p for p in os.listdir(tmp_path) if "tfvae-partial" in p]
    assert set(run.evaluate(overrides=fast, out_dir=out, verbose=False)) == {"intensity"}  # no --overwrite needed


def test_ctrl_c_during_an_evaluation_is_one_line_and_leaves_nothing(tiny_run, tmp_path, capsys, monkeypatch):
    from tfvae.evaluation import evaluate as evaluation

    real = evaluation.evaluate_run

    def interrupted(run, config, out_dir, **kwargs):
        os.makedirs(os.path.join(out_dir, "maps"))  # some of it written
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "evaluate_run", interrupted)
    out = tmp_path / "eval"
    assert evaluate_script.main(["--run-dir", tiny_run, "--out", str(out), "--predictors", "intensity"]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"interrupted (Ctrl-C): nothing was put in place ({out} is as it was)"
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if "tfvae-partial" in p]
    monkeypatch.setattr(evaluation, "evaluate_run", real)
    assert evaluate_script.main(["--run-dir", tiny_run, "--out", str(out), "--predictors", "intensity"]) == 0


def test_a_full_disk_reported_without_a_file_name_names_the_evaluation(tiny_run, tmp_path, capsys, monkeypatch):
    """nibabel's gzip writer reports a full disk as ``[Errno 28] No space left on device`` with no file
    (field report: ``error: : No space left on device``)."""
    import errno

    from tfvae.evaluation import evaluate as evaluation

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(evaluation, "write_maps", full)
    out = tmp_path / "eval"
    assert evaluate_script.main(["--run-dir", tiny_run, "--out", str(out), "--predictors", "intensity"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"error: {out}: no space left on device (") and " free there); free space on that disk" \
        in line and line.endswith(f"nothing was put in place ({out} is as it was)")
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if "tfvae-partial" in p]


def test_a_damaged_thresholds_file_is_one_line_naming_it(tiny_run, tmp_path, capsys):
    from tfvae.thresholds.calibration import CalibrationError, ThresholdStore

    run_dir = _copy_of(tiny_run, tmp_path)
    path = os.path.join(run_dir, "thresholds.json")
    with open(path, "w") as f:
        f.write('{"calibrations": [{"key": {"checkpoint_sha256": "ab')  # a copy that stopped halfway
    with pytest.raises(CalibrationError) as e:
        ThresholdStore(path)
    assert str(e.value).startswith(f"{path}: not valid JSON (line 1, column ") and "cut short or damaged?" in \
        str(e.value) and "Run.calibrate(name=...)" in str(e.value)
    assert evaluate_script.main(["--run-dir", run_dir, "--out", str(tmp_path / "eval"), "--predictors",
                                 "intensity"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"error: {path}: not valid JSON") and line.endswith(
        "move it away (or put back a good copy) and run again -- calibrations of your own scans (tfvae calibrate "
        "--name NAME) must then be made again")
    assert not (tmp_path / "eval").exists()


def test_an_existing_evaluation_is_refused_in_the_callers_own_terms(evaluated, capsys):
    from tfvae.runs.run import Run, RunDirError

    run, _ = evaluated
    with pytest.raises(RunDirError) as e:
        Run(run).evaluate()
    assert str(e.value).endswith("already exists; pass overwrite=True to replace it, or evaluate into another "
                                 "folder (out_dir=...)")
    assert evaluate_script.main(["--run-dir", run]) == 2
    assert capsys.readouterr().err.endswith("already exists; pass --overwrite to replace it, or evaluate into "
                                            "another folder (--out DIR)\n")


def test_a_test_split_of_one_volume_is_evaluated_without_the_ensemble(tiny_run, tmp_path, capsys):
    """Field case 05 (one BraTS case): evaluation stopped with 'the ensemble needs at least 2 test
    volumes'. With the default predictors the ensemble -- fitted on some test volumes, scored on the
    others -- is left out with a note; asked for by name it is still the one-line error."""
    from tfvae_datasets import testing_trees

    manual = tmp_path / "brats"
    testing_trees.brats_case(str(manual), "Brats18_TCIA_001_1", seed=3)
    data = ["data.test_name=brats", f"data.manual_dir={manual}", f"data.data_dir={tmp_path / 'tfds'}"]
    evaluate = evaluate_script
    assert evaluate.main(["--run-dir", tiny_run, "--out", str(tmp_path / "eval"), "--set", *data]) == 0
    assert "the test split has 1 volume(s): the ensemble" in capsys.readouterr().out
    results = json.load(open(tmp_path / "eval" / "results.json"))
    assert "rec_error" in json.dumps(results) and '"ensemble"' not in json.dumps(results)
    assert evaluate.main(["--run-dir", tiny_run, "--out", str(tmp_path / "eval2"), "--predictors", "ensemble",
                          "--set", *data]) == 2
    assert "the ensemble needs at least 2 test volumes" in capsys.readouterr().err


def test_excluded_volumes_must_be_the_splits_and_leave_a_lesion(tiny_run, tmp_path):
    from tfvae.data import pipelines as data
    from tfvae.runs.run import Run

    run = Run(tiny_run)
    config = run.config()
    ids = sorted({v.decode() for v in data.load_split(config["data"], "test").map(lambda ex: ex["volume_id"])
                  .as_numpy_iterator()})
    with pytest.raises(data.DataError, match=r"^evaluate.exclude_volumes: test_9999 is not a volume of"):
        run.evaluate(overrides=['evaluate.exclude_volumes=["test_9999"]'], out_dir=str(tmp_path / "a"))
    with pytest.raises(data.DataError, match="evaluate.exclude_volumes leaves no volume with a lesion"):
        run.evaluate(overrides=[f"evaluate.exclude_volumes={json.dumps(ids)}"], out_dir=str(tmp_path / "b"))
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")  # refused before scoring
    data.check_lesions(config["data"], "test", exclude=ids[:1])  # one left out, one with a lesion left: fine
