"""Thresholds on healthy validation slices and the run's thresholds.json: calibrated at the asked
false-positive rate, keyed so that another predictor, post-processing or checkpoint is never served
a stale threshold."""

import json
import os
import shutil

import numpy as np
import pytest

from tfvae import config as config_lib
from tfvae.thresholds import calibration, scan_threshold
from tfvae.data import pipelines as data
from tfvae.runs.run import Run


def validation_brain_scores(run, config, predictor):
    from tfvae.maps.scoring import volumes

    scorer = run.scorer([predictor], config=config)
    out = []
    for volume in volumes(data.load_split(config["data"], "validation")):
        out.append(scorer(volume.image, volume.brain_mask)[predictor][volume.brain_mask > 0])
    return np.concatenate(out)


def test_a_threshold_flags_the_asked_rate_of_healthy_brain_pixels(tiny_run, tmp_path):
    run_dir = str(tmp_path / "run")
    shutil.copytree(tiny_run, run_dir, ignore=shutil.ignore_patterns("eval*", "thresholds.json"))
    run = Run(run_dir)
    config = run.config()
    for fpr in (0.02, 0.1):
        threshold = run.threshold("rec_error", fpr)
        flagged = np.mean(validation_brain_scores(run, config, "rec_error") >= threshold)
        assert fpr / 2 < flagged <= fpr, (fpr, flagged)
    entries = json.loads(open(run.thresholds_path).read())["calibrations"]
    # the asked rates, and the whole healthy reference a per-scan threshold is fitted to
    expected = {"0.02", "0.1"} | {f"{rate:g}" for rate in scan_threshold.REFERENCE_FPRS}
    assert len(entries) == 1 and set(entries[0]["thresholds"]) == expected
    assert entries[0]["key"]["checkpoint_sha256"] == calibration.file_digest(run.model_path())


def test_another_predictor_postprocessing_or_checkpoint_is_calibrated_anew(tiny_run, tmp_path):
    run_dir = str(tmp_path / "run")
    shutil.copytree(tiny_run, run_dir, ignore=shutil.ignore_patterns("eval*", "thresholds.json"))
    run = Run(run_dir)
    store = calibration.ThresholdStore(run.thresholds_path)
    config = run.config()
    digest = calibration.file_digest(run.model_path())
    # a planted (wrong) threshold is served for exactly its key ...
    store.put(store.key(digest, "rec_error", config), {0.05: 123.0})
    assert run.threshold("rec_error", 0.05) == 123.0
    # ... and for nothing else: another predictor, post-processing, checkpoint content
    assert run.threshold("intensity", 0.05) != 123.0
    smoothed = config_lib.resolve(config, ["postprocess.median_size=3"])
    assert run.threshold("rec_error", 0.05, config=smoothed) != 123.0
    with open(run.model_path(), "ab") as f:  # the final model changes (e.g. retrained): new content
        f.write(b"\0")
    assert store.key(calibration.file_digest(run.model_path()), "rec_error", config) != store.key(digest, "rec_error", config)
    keys = [e["key"] for e in calibration.ThresholdStore(run.thresholds_path).entries]
    assert len(keys) == len({json.dumps(k, sort_keys=True) for k in keys}) >= 3


def test_the_store_is_written_whole(tmp_path):
    path = tmp_path / "thresholds.json"
    store = calibration.ThresholdStore(str(path))
    key = {"checkpoint_sha256": "x", "predictor": "p", "settings": {"a": 1}}
    store.put(key, {0.01: 1.5}, {"recommended": {"median_mm": 7.0, "gaussian_sigma_mm": 3.0}})
    assert not [p for p in os.listdir(tmp_path) if p != "thresholds.json"]  # no temporary file left
    again = calibration.ThresholdStore(str(path))
    assert again.threshold(key, 0.01) == 1.5 and again.threshold(key, 0.05) is None
    assert again.reference(key) == {"recommended": {"median_mm": 7.0, "gaussian_sigma_mm": 3.0}}
    with pytest.raises(ValueError, match="fpr"):
        Run(str(tmp_path)).threshold("rec_error", 1.5)


def test_thresholds_stored_with_the_voxel_counted_filters_are_not_served_to_the_millimetre_ones(tmp_path):
    """An old run's thresholds.json holds the recommended map's thresholds and sizes keyed by its config's
    recommended section (median_size / gaussian_sigma, voxels); the same run read now (median_mm /
    gaussian_sigma_mm) makes another key: calibrated and chosen again, never the old filter's thresholds."""
    store = calibration.ThresholdStore(str(tmp_path / "thresholds.json"))
    config = config_lib.resolve({"recommended": {"median_size": None, "gaussian_sigma": None}})
    old_settings = calibration.map_settings(config)
    old_settings["recommended"] = {"restore": True, "median_size": None, "gaussian_sigma": None, "synthetic_copies": 3}
    old_key = {"checkpoint_sha256": "d", "predictor": "recommended", "settings": old_settings}
    store.put(old_key, {0.01: 0.3}, {"recommended": {"median_size": 3, "gaussian_sigma": 2.0, "voxel_mm": [2, 3, 3]}})
    new_key = store.key("d", "recommended", config)
    assert new_key["settings"]["recommended"]["median_mm"] is None
    assert store.threshold(new_key, 0.01) is None and store.reference(new_key) is None
    assert store.threshold(old_key, 0.01) == 0.3  # still there, for nothing
    # sizes given in mm are part of the key too
    assert store.key("d", "recommended", config_lib.resolve(config, ["recommended.median_mm=7"])) != new_key


def test_a_scan_localized_with_the_voxel_counted_filters_is_made_again_not_skipped(tmp_path):
    """localize skips a done scan whose record's settings are today's: a record written before the recommended
    map's sizes were millimetres (map.recommended.median_size null) differs from today's (median_mm null)."""
    from tfvae.evaluation import localization

    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"x")
    config = config_lib.resolve({})
    now = {f"map.{k}": v for k, v in localization._flat(calibration.map_settings(config)).items()}
    old = {k: v for k, v in now.items() if not k.startswith("map.recommended.")}
    old.update({"map.recommended.restore": True, "map.recommended.median_size": None,
                "map.recommended.gaussian_sigma": None, "map.recommended.synthetic_copies": 3})
    inputs = {"scan": {**localization._file(str(scan)), "sha256": "s"}}
    found = localization.differences({"settings": old, "inputs": inputs}, now, str(scan), None)
    assert ("--set recommended.median_mm", "voxels (before mm)", "none") in found
    assert ("--set recommended.gaussian_sigma_mm", "voxels (before mm)", "none") in found
    assert localization.differences({"settings": now, "inputs": inputs}, now, str(scan), None) == []
