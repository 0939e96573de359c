"""The README's "From Python" code, run exactly as printed, on the tiny phantom."""

import json
import pytest
import os
import re

import nibabel as nib
import numpy as np

from script_loader import ROOT


def readme_python_block() -> str:
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text[text.index("## From Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_readme_notebook_code_runs(tiny_data_dir, tmp_path, monkeypatch, capsys):
    from tfvae_datasets.brain_phantom import phantom

    # the folder the code runs in: a quickstart config pointing at the tiny phantom, and a scan
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "quickstart.json").write_text(json.dumps({
        "name": "notebook", "data": {"name": "brain_phantom", "config": "tiny", "image_size": 32,
                                     "data_dir": tiny_data_dir},
        "model": {"latent_dim": 8}, "train": {"epochs": 2, "batch_size": 16, "learning_rate": 0.001},
        "predictors": {"projection_steps": 3}, "recommended": {"synthetic_copies": 1},
        "evaluate": {"num_figures": 1}}))
    subject = phantom.synthesize_subject(101, tumours=True)  # the scan the README's block writes itself
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_python_block(), "README.md", "exec"), namespace)

    run, results, found = namespace["run"], namespace["results"], namespace["found"]
    assert os.path.isfile(tmp_path / "runs" / "notebook" / "model.keras")
    assert os.path.isfile(tmp_path / "runs" / "notebook" / "eval" / "results.json")
    assert list(results)[0] == "recommended"
    assert found.score.shape == subject.image.shape and found.mask.shape == subject.image.shape
    assert found.n_components == len(found.components) >= 1
    assert abs(sum(c["ml"] for c in found.components) - found.volume_ml) < 1e-6
    largest = found.components[0]
    assert largest["voxels"] == max(c["voxels"] for c in found.components)
    # the finding's centroid is in scanner millimetres: inside the scan's field of view
    corners = nib.affines.apply_affine(subject.affine, np.array([[0, 0, 0], np.array(subject.image.shape) - 1]))
    assert np.all(largest["centroid_mm"] >= corners.min(axis=0) - 1) and np.all(largest["centroid_mm"] <= corners.max(axis=0) + 1)
    printed = capsys.readouterr().out
    assert "finding(s)" in printed and str(round(largest["ml"], 3))[:4] in printed
    # localize used the thresholds evaluate stored (same checkpoint, predictor, settings)
    stored = json.loads((tmp_path / "runs" / "notebook" / "thresholds.json").read_text())["calibrations"]
    entry = next(e for e in stored if e["key"]["predictor"] == "recommended")
    assert found.scan_threshold.reference_threshold == entry["thresholds"]["0.01"]
    assert run.threshold("recommended", 0.01) == found.scan_threshold.reference_threshold
    # the scan is cut at its own threshold: the calibrated one moved along the scan's Q-Q line
    chosen = found.scan_threshold
    assert found.threshold == pytest.approx(chosen.offset + chosen.scale * chosen.reference_threshold)
    # a second scan with the same settings reuses the loaded model and threshold; the same scan, the same maps
    localizer = next(iter(run._localizers.values()))
    again = run.localize("my_scan_t2.nii.gz", fpr=0.01)
    assert next(iter(run._localizers.values())) is localizer and len(run._localizers) == 1
    np.testing.assert_array_equal(again.mask, found.mask)
    np.testing.assert_allclose(again.score, found.score, rtol=1e-5, atol=1e-6)
    run.localize("my_scan_t2.nii.gz", fpr=0.05)  # other settings: a new one, the old one released
    assert len(run._localizers) == 1 and next(iter(run._localizers.values())) is not localizer
