"""localize --preprocess: a raw phantom head (skull on, any pose, bias field; coarse 4 mm voxels)
in, maps and masks out in the raw scan's own grid.

The preprocessing runs at 4 mm with a 4 mm template (``COARSE_SETTINGS``, as
tests/test_head_preprocessing.py: a few seconds a scan); the model is the tiny run of conftest.py.
Bounds, measured with rec_error at 5 % FPR on raw heads 1-5 (this test uses 3): 99.3-100 % of the
mask's voxels lie inside the raw head's true brain mask (the maps are 0 outside the brain mask the
preprocessing made, Dice 0.946-0.951 against the truth); the scan's top 2 % of scores hold 3-11
times the tumour's share of the brain (this head: 8.5). The test asks for MIN_INSIDE and 3 times."""

import csv
import dataclasses
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from script_loader import load_script  # noqa: E402
from tfvae.data import head_preprocessing as hp  # noqa: E402
from tfvae.evaluation import localization  # noqa: E402
from tfvae_datasets.brain_phantom import raw_heads  # noqa: E402

localize_script = load_script("localize")

COARSE = dict(brain_voxel_mm=4.0, voxel_mm=(4.0, 4.0, 4.8))
MIN_INSIDE = 0.95


@dataclasses.dataclass(frozen=True)
class CoarseSettings(hp.Settings):
    """The pipeline at 4 mm, one registration level: what ``--preprocess`` runs in these tests."""

    resolution_mm: float = 4.0
    template_resolution_mm: float = 4.0
    n4_shrink: int = 2
    n4_iterations: tuple = (20, 20)
    registration_shrink: tuple = (1,)
    registration_smoothing_mm: tuple = (2.0,)
    registration_iterations: int = 100
    threads: int = 1


@pytest.fixture
def coarse(monkeypatch):
    monkeypatch.setattr(hp, "Settings", CoarseSettings)  # --preprocess: hp.Settings() is the coarse one


@pytest.fixture(scope="module")
def raw_scan(tmp_path_factory):
    """A raw head with tumours, stored LPS at 4 x 4 x 4.8 mm, and its truth."""
    head = raw_heads.synthesize_raw_head(3, tumours=True, **COARSE)
    folder = tmp_path_factory.mktemp("raw")
    path = folder / "sub03_T2.nii.gz"
    nib.save(head.nifti(), str(path))
    return str(path), head


def _stamps(folder):
    return {n: os.path.getmtime(os.path.join(folder, n)) for n in os.listdir(folder)}


def _rows(out):
    with open(os.path.join(out, "summary.csv"), newline="") as f:
        return list(csv.DictReader(f))


def test_maps_in_the_raw_grid_inside_the_brain_and_resumed(coarse, tiny_run, raw_scan, tmp_path, capsys):
    path, head = raw_scan
    out = str(tmp_path / "out")
    argv = ["--run-dir", tiny_run, path, "--out", out, "--predictor", "rec_error", "--fpr", "0.05", "--preprocess"]
    assert localize_script.main(argv) == 0
    raw = nib.load(path)
    name = "sub03_T2"
    outputs = {suffix: os.path.join(out, name + suffix) for suffix in
               ("_tfvae_score.nii.gz", "_tfvae_mask.nii.gz", "_tfvae_brainmask.nii.gz")}
    images = {suffix: nib.load(p) for suffix, p in outputs.items()}
    for img in images.values():  # the raw scan's grid, not the template's
        assert img.shape == raw.shape
        np.testing.assert_allclose(img.affine, raw.affine, atol=1e-5)
    for suffix in ("_tfvae_overlay.png", "_tfvae_components.csv", "_tfvae_preprocessed.nii.gz",
                   "_tfvae_preprocessing.json", "_tfvae_record.json"):
        assert os.path.isfile(os.path.join(out, name + suffix)), suffix
    score = np.asarray(images["_tfvae_score.nii.gz"].dataobj, np.float32)
    mask = np.asarray(images["_tfvae_mask.nii.gz"].dataobj) > 0
    brain = np.asarray(images["_tfvae_brainmask.nii.gz"].dataobj) > 0
    assert mask.sum() > 0 and not score[~brain].any() and not mask[~brain].any()  # 0 outside the brain mask
    inside = float(head.brain_mask[mask].mean())  # the truth, in the raw grid
    assert inside >= MIN_INSIDE, inside
    tumour = head.label > 0
    top = brain & (score >= np.quantile(score[brain], 0.98))
    assert tumour[top].mean() > 3 * tumour[brain].mean()  # the map, carried back, still points at the tumour
    row, = _rows(out)
    assert row["status"] == "done" and row["brain_mask"] == os.path.abspath(outputs["_tfvae_brainmask.nii.gz"])
    assert "_tfvae_preprocessed.nii.gz" in row["preprocessed"] and "made now" in row["preprocessed"]
    # the volume is the raw scan's (its own voxels), as the mask written says
    assert float(row["anomalous_ml"]) == pytest.approx(mask.sum() * np.prod(raw.header.get_zooms()) / 1000, rel=1e-3)
    record = json.loads(open(os.path.join(out, name + "_tfvae_record.json")).read())
    assert record["settings"]["preprocess"] is True and record["settings"]["preprocess.resolution_mm"] == 4.0
    assert "_tfvae_brainmask.nii.gz" in open(os.path.join(out, "index.html")).read()

    # the same command again: skipped, nothing written
    stamps = _stamps(out)
    capsys.readouterr()
    assert localize_script.main(argv) == 0
    assert "already localized" in capsys.readouterr().out
    assert _stamps(out) == stamps
    # without --preprocess into the same folder: refused, naming the setting
    assert localize_script.main(argv[:-1]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--preprocess on" in err and "off" in err and "--overwrite" in err
    # --overwrite localizes again, the preprocessing (same content, same settings) reused
    assert localize_script.main(argv + ["--overwrite"]) == 0
    assert "reused" in _rows(out)[0]["preprocessed"]
    assert os.path.getmtime(os.path.join(out, name + "_tfvae_preprocessed.nii.gz")) == \
        stamps[name + "_tfvae_preprocessed.nii.gz"]
    np.testing.assert_array_equal(np.asarray(nib.load(outputs["_tfvae_mask.nii.gz"]).dataobj) > 0, mask)

    # from Python: the same maps, the preprocessing reused from that folder
    from tfvae.runs.run import Run

    found = Run(tiny_run).localize(path, predictor="rec_error", fpr=0.05, preprocess=True, preprocess_dir=out)
    assert found.preprocessing["reused"] and found.score.shape == raw.shape
    np.testing.assert_array_equal(found.mask > 0, mask)


def test_a_raw_head_without_preprocess_is_refused_as_not_skull_stripped(tiny_run, raw_scan, tmp_path, capsys):
    path, _ = raw_scan
    assert localize_script.main(["--run-dir", tiny_run, path, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and path in err and "does not look skull-stripped" in err


def test_preprocess_without_the_extra_or_with_a_mask_is_one_line(monkeypatch, tiny_run, raw_scan, tmp_path, capsys):
    path, _ = raw_scan
    argv = ["--run-dir", tiny_run, path, "--out", str(tmp_path / "out"), "--preprocess"]
    assert localize_script.main(argv + ["--mask", path]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--mask" in err and "--preprocess" in err
    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # import SimpleITK now raises ImportError
    assert localize_script.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.endswith("pip install tfvae[preprocess]")
    assert not os.path.exists(tmp_path / "out")


def test_the_preprocess_setting_of_an_older_record_is_off(tiny_run, raw_scan):
    """A record written before --preprocess existed holds no such setting: it was made without."""
    from tfvae.runs.run import Run

    run = Run(tiny_run)
    off = localization.batch_settings(run, run.config(), predictor="rec_error", fpr=0.05, checkpoint="final",
                                      digest="x")
    on = localization.batch_settings(run, run.config(), predictor="rec_error", fpr=0.05, checkpoint="final",
                                     digest="x", preprocess=CoarseSettings())
    assert off["preprocess"] is False and on["preprocess"] is True and "preprocess.threads" not in on
    older = {"settings": {k: v for k, v in off.items() if k != "preprocess"}, "inputs": {}}

    def named(settings):
        return [d for d in localization.differences(older, settings, raw_scan[0], None) if d[0] != "scan"]

    assert named(off) == []
    assert named(on)[0] == ("--preprocess", "off", "on")
