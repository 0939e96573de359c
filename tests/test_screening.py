"""tfvae calibrate screens its healthy set: a scan that looks lesioned (or unlike the rest) is named
and left out, and the thresholds are those of calibrating without it; a healthy set keeps every
scan; too few scans left is a one-line error."""

import dataclasses
import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest

from script_loader import load_script
from tfvae.thresholds import calibration, healthy_scans
from tfvae.runs.run import Run
from tfvae_datasets.brain_phantom import phantom

calibrate_script = load_script("calibrate")
HEALTHY_SEEDS = (41, 42, 43, 44, 45)
LESIONED_SEED = 46
LESION_SHARE = 0.012  # of the brain (17 ml of a 1.4 l brain): one bright blob, painted into the healthy subject 46


def save(subject, path) -> str:
    nib.save(nib.Nifti1Image(subject.image, subject.affine), str(path))
    return str(path)


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Healthy 4 mm scans of the tiny phantom's own site in ``healthy/``, and ``mixed/``: the same
    with the healthy subject 46 carrying one bright blob (1.2 % of its brain)."""
    folder = tmp_path_factory.mktemp("scans")
    healthy, mixed = folder / "healthy", folder / "mixed"
    healthy.mkdir()
    mixed.mkdir()
    for seed in HEALTHY_SEEDS:
        save(phantom.synthesize_subject(seed, tumours=False, voxel_mm=4.0), healthy / f"control{seed}_t2.nii.gz")
        shutil.copy(healthy / f"control{seed}_t2.nii.gz", mixed)
    save(with_bright_blob(phantom.synthesize_subject(LESIONED_SEED, tumours=False, voxel_mm=4.0), LESION_SHARE),
         mixed / f"control{LESIONED_SEED}_t2.nii.gz")
    return folder


def with_bright_blob(subject, share):
    """The subject with a ball at its brain's deepest point covering ``share`` of its brain, at 3x
    its brightest healthy tissue (the 99.9th percentile): what the tests' barely trained model sees
    in any map (the phantom's own lesions are as bright as its fluid: such a model misses them).
    After z-scoring in the brain a blob of share h sits at most sqrt((1 - h) / h) standard
    deviations up (4.4 at 5 %: below healthy fluid), so a larger one would not be in the tail."""
    from scipy import ndimage

    brain = subject.brain_mask
    depth = ndimage.distance_transform_edt(brain)
    centre = np.array(np.unravel_index(np.argmax(depth), brain.shape))
    distance = np.sqrt(sum((g - c) ** 2 for g, c in zip(np.indices(brain.shape), centre)))
    ball = brain & (distance <= np.quantile(distance[brain], share))
    image = subject.image.copy()
    image[ball] = 3.0 * np.percentile(subject.image[brain], 99.9)
    return dataclasses.replace(subject, image=image)


@pytest.fixture
def run(tiny_run, tmp_path):
    run_dir = str(tmp_path / "run")
    shutil.copytree(tiny_run, run_dir, ignore=shutil.ignore_patterns("eval*", "thresholds.json"))
    return Run(run_dir)


def stored_thresholds(run, name, predictor):
    store = calibration.ThresholdStore(run.thresholds_path)
    config = run.config([f"threshold.calibration={name}"])
    entry = store.find(store.key(calibration.file_digest(run.model_path()), predictor, config))
    return entry["thresholds"], entry["reference"]


def test_a_lesioned_scan_is_named_left_out_and_the_thresholds_are_those_without_it(run, scans, capsys,
                                                                                  monkeypatch):
    assert calibrate_script.main(["--run-dir", run.dir, "--name", "mixed", str(scans / "mixed"),
                                  "--predictors", "recommended", "intensity"]) == 0
    printed = capsys.readouterr().out
    lesioned = str(scans / "mixed" / f"control{LESIONED_SEED}_t2.nii.gz")
    line = next(x for x in printed.splitlines() if x.startswith("left out"))
    assert line.startswith(f"left out {lesioned}: flags ") and "looks lesioned" in line and "check it" in line
    assert f"calibration 'mixed': {len(HEALTHY_SEEDS)} healthy scan(s) (1 left out)" in printed
    record = json.load(open(run.thresholds_path))["healthy_sets"]["mixed"]
    assert [os.path.basename(p["scan"]) for p in record["scans"]] == [f"control{s}_t2.nii.gz" for s in HEALTHY_SEEDS]
    (left,) = record["left_out"]
    assert left["scan"] == lesioned and left["test"] == "tail"
    assert left["flagged_share"] > healthy_scans.TAIL_FACTOR * healthy_scans.TAIL_FPR
    assert "looks lesioned" in left["reason"]
    # refitted without it: the thresholds and filter sizes of calibrating on the healthy scans alone
    clean = run.calibrate([str(scans / "healthy")], name="clean", predictors=["recommended", "intensity"])
    assert clean["left_out"] == [] and clean["sha256"] == record["sha256"]
    for predictor in ("recommended", "intensity"):
        assert stored_thresholds(run, "mixed", predictor) == stored_thresholds(run, "clean", predictor)
    # ... which are not those of calibrating with it (the screen switched off)
    monkeypatch.setattr(healthy_scans, "TAIL_FACTOR", np.inf)
    with_it = run.calibrate([str(scans / "mixed")], name="with_it", predictors=["recommended", "intensity"])
    assert with_it["volumes"] == len(HEALTHY_SEEDS) + 1
    assert stored_thresholds(run, "with_it", "recommended")[0] != stored_thresholds(run, "clean", "recommended")[0]


def test_a_healthy_set_keeps_every_scan(run, scans):
    found = run.calibrate([str(scans / "healthy")], name="site", predictors=["recommended"])
    assert found["volumes"] == len(HEALTHY_SEEDS) and found["left_out"] == []
    flagged = found["screening"]["flagged"]
    assert sorted(flagged) == [f"control{s}_t2" for s in HEALTHY_SEEDS]
    assert all(v["tail"] <= healthy_scans.TAIL_FACTOR * healthy_scans.TAIL_FPR for v in flagged.values())


def test_too_few_scans_left_is_one_line_and_stores_nothing(run, scans, tmp_path, capsys):
    pair = tmp_path / "pair"
    pair.mkdir()
    shutil.copy(scans / "mixed" / f"control{HEALTHY_SEEDS[0]}_t2.nii.gz", pair)
    shutil.copy(scans / "mixed" / f"control{LESIONED_SEED}_t2.nii.gz", pair)
    assert calibrate_script.main(["--run-dir", run.dir, "--name", "pair", str(pair),
                                  "--predictors", "recommended"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: calibration 'pair': ")
    assert str(pair / f"control{LESIONED_SEED}_t2.nii.gz") in err and "% of its brain" in err
    assert "1 would be left" in err
    assert "pair" not in calibration.ThresholdStore(run.thresholds_path).healthy_sets


# -- the comparison itself, on made-up scores (no model) --------------------------------------------

def made_up_scans(n=6, size=20_000, seed=0):
    """``n`` healthy-like scans: the same skewed distribution, each shifted and scaled."""
    rng = np.random.default_rng(seed)
    return [0.5 * i + (1.0 + 0.1 * i) * rng.gamma(2.0, 1.0, size) for i in range(n)]


def test_a_shifted_and_scaled_scan_flags_the_rate_and_an_excess_tail_is_left_out():
    scores = made_up_scans()
    shares, _ = healthy_scans.leave_one_out(scores, healthy_scans.TAIL_FPR, match_bulk=True)
    assert np.all(shares < 3 * healthy_scans.TAIL_FPR)
    assert healthy_scans.exclusions(scores)[:2] == (list(range(6)), [])
    lesioned = list(scores)
    lesioned[2] = lesioned[2].copy()
    lesioned[2][:400] = lesioned[2].max() * 2  # 2 % of its pixels above every healthy score
    kept, left_out, first = healthy_scans.exclusions(lesioned)
    assert kept == [0, 1, 3, 4, 5] and [(i, test) for i, test, _ in left_out] == [(2, "tail")]
    assert left_out[0][2] == pytest.approx(0.02, abs=0.002)
    inverted = list(scores)
    inverted[4] = 10.0 + inverted[4]  # its whole distribution elsewhere: matched in the tail test, not in the shift test
    assert [(i, test) for i, test, _ in healthy_scans.exclusions(inverted)[1]] == [(4, "shift")]


def test_another_voxel_size_or_contrast_is_warned_about():
    from tfvae.data.preprocessing import SliceGeometry
    from tfvae.maps.scoring import Volume

    rng = np.random.default_rng(0)

    def volume(name, voxel_mm, invert=False):
        image = rng.gamma(2.0, 1.0, (6, 8, 8, 1)).astype(np.float32)
        image = (image - image.mean()) / image.std() * (-1 if invert else 1)
        geometry = SliceGeometry((8, 8, 6), np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0]), (4.0, 4.0), (1.0, 1.0))
        return Volume(name, image, np.zeros_like(image), np.ones_like(image), np.arange(6), geometry)

    volumes = [volume("a", 1.0), volume("b", 1.0), volume("c", 1.0), volume("coarse", 3.0), volume("t1", 1.0, True)]
    pairs = [{"scan": f"/scans/{v.volume_id}.nii.gz", "mask": None} for v in volumes]
    screening = healthy_scans.screen(pairs, volumes, None, predictor=None)
    warned = {os.path.basename(w["scan"]): w["reason"] for w in screening.warnings}
    assert set(warned) == {"coarse.nii.gz", "t1.nii.gz"}
    assert "3x3x3 mm, the set's median 1x1x1 mm" in warned["coarse.nii.gz"]
    assert "another contrast" in warned["t1.nii.gz"]
    assert screening.kept == [0, 1, 2, 3, 4] and screening.left_out == []


def test_a_degenerate_map_is_left_out_not_the_healthy_ones():
    """An all-zero map and a map with NaN are left out before any comparison, the healthy scans all
    kept (before: the all-zero map was kept and the healthy scans left out one by one as
    'lesioned')."""
    scores = made_up_scans()
    for odd, test in ((np.zeros(20_000), "degenerate"), (np.r_[scores[0][:-1], np.nan], "degenerate")):
        kept, left_out, first = healthy_scans.exclusions(scores + [odd])
        assert kept == list(range(6)) and [(i, t) for i, t, _ in left_out] == [(6, test)]
        assert len(first["tail"]) == 7
