"""tfvae calibrate: a run's thresholds and recommended-map sizes from healthy scans of the user's own
scanner, stored under a name keyed by the scans' content, used by localize and evaluate."""

import os
import shutil

import nibabel as nib
import numpy as np
import pytest

from script_loader import load_script
from tfvae.thresholds import calibration, healthy_scans
from tfvae.data import pipelines as data
from tfvae.runs.run import Run
from tfvae_datasets.brain_phantom import brain_phantom_dataset_builder as builder_lib
from tfvae_datasets.brain_phantom import phantom

calibrate_script = load_script("calibrate")
localize_script = load_script("localize")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Three healthy scans and one tumour scan of a 'site' with a strong bias field, as NIfTI files;
    one healthy scan has a brain mask beside it."""
    folder = tmp_path_factory.mktemp("site")
    healthy = folder / "healthy"
    healthy.mkdir()
    for seed in (41, 42, 43):
        subject = phantom.synthesize_subject(seed, tumours=False, voxel_mm=4.0, shift=builder_lib.BIAS)
        nib.save(nib.Nifti1Image(subject.image, subject.affine), str(healthy / f"control{seed}_t2.nii.gz"))
    mask = phantom.synthesize_subject(41, tumours=False, voxel_mm=4.0, shift=builder_lib.BIAS).brain_mask
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), subject.affine), str(healthy / "control41_t2_mask.nii.gz"))
    patient = phantom.synthesize_subject(44, tumours=True, voxel_mm=4.0, shift=builder_lib.BIAS)
    nib.save(nib.Nifti1Image(patient.image, patient.affine), str(folder / "patient_t2.nii.gz"))
    return folder


@pytest.fixture
def run(tiny_run, tmp_path):
    run_dir = str(tmp_path / "run")
    shutil.copytree(tiny_run, run_dir, ignore=shutil.ignore_patterns("eval*", "thresholds.json"))
    return Run(run_dir)


def brain_scores(run, config, predictor, volumes):
    scorer = run.scorer([predictor], config=config)
    return np.concatenate([scorer(v.image, v.brain_mask, v.geometry.voxel_mm())[predictor][v.brain_mask > 0]
                           for v in volumes])


def test_thresholds_flag_the_asked_rate_of_the_sites_healthy_scans(run, site):
    # the Gaussian pinned off (the median is still chosen on the scans): what the selection chose here while the
    # sizes counted voxels; among the millimetre candidates it takes a 3 mm sigma, half a pixel of this 32-pixel
    # grid, whose maps of this 2-epoch model leave one of the 3 healthy scans 0.72% above the others' 0.1%
    # threshold, past the screening's 0.6% limit: the screening is not what this test is about
    sigma_off = "recommended.gaussian_sigma_mm=0"
    found = run.calibrate([str(site / "healthy")], name="site1", predictors=["intensity", "recommended"],
                          overrides=[sigma_off])
    assert found["volumes"] == 3 and found["slices"] > 0
    pairs = found["scans"]
    assert [os.path.basename(p["mask"] or "") for p in pairs] == ["control41_t2_mask.nii.gz", "", ""]
    config = run.config(["threshold.calibration=site1", sigma_off])
    volumes = healthy_scans.read(pairs, config, data.builder(config["data"]).builder_config)
    for predictor in ("intensity", "recommended"):
        scores = brain_scores(run, config, predictor, volumes)
        for fpr in (0.01, 0.05):
            flagged = np.mean(scores >= found["thresholds"][predictor][f"{fpr:g}"])
            assert fpr / 2 < flagged <= fpr, (predictor, fpr, flagged)
    # the validation split's thresholds are another calibration, untouched beside it
    assert run.threshold("intensity", 0.01) != found["thresholds"]["intensity"]["0.01"]
    store = calibration.ThresholdStore(run.thresholds_path)
    keys = [e["key"] for e in store.entries if e["key"]["predictor"] == "intensity"]
    assert sorted("healthy_set" in k for k in keys) == [False, True]
    recommended = next(e for e in store.entries if e["key"]["predictor"] == "recommended" and "healthy_set" in e["key"])
    assert {"median_mm", "gaussian_sigma_mm", "voxel_mm"} <= set(recommended["reference"]["recommended"])


def test_localize_and_evaluate_use_the_calibration(run, site, tmp_path, capsys):
    assert calibrate_script.main(["--run-dir", run.dir, "--name", "site1", str(site / "healthy"),
                                  "--predictors", "intensity"]) == 0
    printed = capsys.readouterr().out
    assert "calibration 'site1': 3 healthy scan(s)" in printed and "intensity: threshold" in printed
    stored = calibration.ThresholdStore(run.thresholds_path)
    config = run.config(["threshold.calibration=site1"])
    key = stored.key(calibration.file_digest(run.model_path()), "intensity", config)
    out = str(tmp_path / "out")
    assert localize_script.main(["--run-dir", run.dir, str(site / "patient_t2.nii.gz"), "--out", out,
                                 "--predictor", "intensity", "--calibration", "site1", "--set",
                                 "threshold.mode=fixed"]) == 0
    import csv

    with open(os.path.join(out, "summary.csv")) as f:
        row = next(csv.DictReader(f))
    assert float(row["threshold"]) == pytest.approx(stored.threshold(key, 0.01), rel=1e-5)
    assert row["threshold_from"] == "thresholds.json (the healthy scans of calibration site1)"
    results = run.evaluate(overrides=["threshold.calibration=site1", 'evaluate.predictors=["intensity"]',
                                      "evaluate.write_nifti=false"], out_dir=str(tmp_path / "eval"))
    assert results["intensity"]["dice_fpr01_threshold"] == pytest.approx(stored.threshold(key, 0.01), rel=1e-6)


def test_an_unknown_or_changed_calibration_is_one_line(run, site, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert localize_script.main(["--run-dir", run.dir, str(site / "patient_t2.nii.gz"), "--out", out,
                                 "--calibration", "nowhere"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no calibration named 'nowhere'" in err and "\n" not in err
    scans = tmp_path / "copies"
    shutil.copytree(site / "healthy", scans)
    run.calibrate([str(scans)], name="copies", predictors=["intensity"])
    img = nib.load(str(scans / "control42_t2.nii.gz"))
    nib.save(nib.Nifti1Image(img.get_fdata().astype(np.float32) * 1.5, img.affine), str(scans / "control42_t2.nii.gz"))
    assert localize_script.main(["--run-dir", run.dir, str(site / "patient_t2.nii.gz"), "--out", out,
                                 "--calibration", "copies", "--predictor", "rec_error"]) == 2
    err = capsys.readouterr().err.strip()
    assert "calibration 'copies': its scans changed" in err and "\n" not in err
    assert calibrate_script.main(["--run-dir", run.dir, "--name", "bad name!", str(scans)]) == 2
    err = capsys.readouterr().err  # the command line's terms: the flag, not the config key
    assert "--name 'bad name!': must be a name of letters" in err and "threshold.calibration" not in err


def test_a_lesion_map_in_a_healthy_folder_is_refused_whatever_its_name(tmp_path):
    """Review of issue 31: a binary lesion map named like a scan (wmh.nii.gz, tumor.nii.gz) in a
    healthy folder was calibrated on; by its content (a few integer values) it is one line. And
    FreeSurfer's aparc+aseg is named as a label map (its '+' split the words)."""
    from tfvae.data import labelmaps
    from tfvae.data.nifti import BadInputError
    from tfvae_datasets.brain_phantom import brain_phantom_dataset_builder as builder_lib

    subject = phantom.synthesize_subject(3, tumours=True, voxel_mm=4.0)
    path = tmp_path / "wmh.nii.gz"
    nib.save(nib.Nifti1Image((subject.label > 0).astype(np.uint8), subject.affine), str(path))
    config = {"data": {"image_size": 32, "clip": None}}
    with pytest.raises(BadInputError, match="a label map or mask, not a scan; move it out"):
        healthy_scans.read([{"scan": str(path), "mask": None}], config, builder_lib.Builder.builder_configs["tiny"])
    assert labelmaps.name_kind("aparc+aseg") == "label" and labelmaps.name_kind("sub-01_synthseg") == "label"
