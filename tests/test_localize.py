"""scripts/localize.py on a phantom scan stored with an unusual affine (LPS, 1.2 mm voxels)."""

import csv
import os
import shutil

import nibabel as nib
import numpy as np
import pytest

from script_loader import load_script
from tfvae_datasets.brain_phantom import phantom
from tfvae.evaluation import localization
from tfvae.evaluation.localization import modality_from_name

localize_script = load_script("localize")


@pytest.fixture(scope="module")
def lps_scan(tmp_path_factory):
    """A phantom test subject at 1.2 mm, stored LPS (x and y flipped), with its tumour label."""
    subject = phantom.synthesize_subject(7, tumours=True, voxel_mm=1.2)
    image, label = subject.image[::-1, ::-1], subject.label[::-1, ::-1]
    affine = subject.affine.copy()
    for axis in (0, 1):
        affine[:3, 3] += affine[:3, axis] * (image.shape[axis] - 1)
        affine[:3, axis] *= -1
    folder = tmp_path_factory.mktemp("scans")
    path = folder / "patient_t2.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(image), affine), str(path))
    nib.save(nib.Nifti1Image(np.ascontiguousarray(label), affine), str(folder / "patient_t2_seg.nii.gz"))
    return str(path), np.ascontiguousarray(label), affine


def test_maps_keep_the_scans_grid_and_find_the_tumour(tiny_run, lps_scan, tmp_path, capsys):
    path, label, affine = lps_scan
    before = {p: os.path.getmtime(os.path.join(os.path.dirname(path), p)) for p in os.listdir(os.path.dirname(path))}
    out = str(tmp_path / "out")
    assert localize_script.main(["--run-dir", tiny_run, os.path.dirname(path), "--out", out,
                                 "--predictor", "rec_error", "--fpr", "0.05"]) == 0
    score = nib.load(os.path.join(out, "patient_t2_tfvae_score.nii.gz"))
    mask = nib.load(os.path.join(out, "patient_t2_tfvae_mask.nii.gz"))
    for img in (score, mask):
        assert img.shape == label.shape
        np.testing.assert_allclose(img.affine, affine)
    s, brain = score.get_fdata(), nib.load(path).get_fdata() > 0
    top = s >= np.quantile(s[brain], 0.98)
    prevalence = (label > 0)[brain].mean()
    precision = (label > 0)[top & brain].mean()
    assert precision > 3 * prevalence, (precision, prevalence)
    assert os.path.isfile(os.path.join(out, "patient_t2_tfvae_overlay.png"))
    with open(os.path.join(out, "summary.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["predictor"] == "rec_error" and float(rows[0]["anomalous_ml"]) > 0
    assert int(rows[0]["components"]) >= 1
    assert rows[0]["scan"] == os.path.abspath(path) and os.path.isabs(rows[0]["run"])  # both absolute
    # the scan's own threshold (per scan, by default, fitted: no fallback), the calibrated one, and the
    # label-free estimates, as the scan's ScanThreshold gives them (localized again from Python)
    assert rows[0]["threshold_mode"] == "per_scan"
    assert float(rows[0]["threshold"]) != float(rows[0]["calibrated_threshold"])
    from tfvae.runs.run import Run

    chosen = Run(tiny_run).localize(path, predictor="rec_error", fpr=0.05).scan_threshold
    assert not chosen.fallback and float(rows[0]["threshold"]) == pytest.approx(chosen.threshold, rel=1e-5)
    for column, value in (("estimated_fpr", chosen.estimated_fpr), ("estimated_fpr_at_calibrated",
                                                                     chosen.estimated_fpr_at_reference),
                          ("estimated_lesion_share", chosen.lesion_share)):
        assert float(rows[0][column]) == pytest.approx(value, abs=2e-4), column
    # the healthy tissue the scan's threshold flags: near the asked 5 % (within the factor that is warned)
    assert 0.025 < float(rows[0]["estimated_fpr"]) < 0.1
    assert 0 <= float(rows[0]["estimated_lesion_share"]) <= 1
    assert 0 <= float(rows[0]["estimated_fpr_at_calibrated"]) <= 1
    warning = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:"))
    # warned, naming the scan, its voxel size and the training scans': another voxel size (1.2 vs 4 mm)
    assert path in warning and "(1.2, 1.2, 1.2) mm" in warning and "4.0" in warning and "resampled" in warning
    after = {p: os.path.getmtime(os.path.join(os.path.dirname(path), p)) for p in os.listdir(os.path.dirname(path))}
    assert after == before  # the input folder is untouched (the _seg file was skipped, not scored)
    # outputs are not overwritten without asking: a scan localized already with the same settings is
    # skipped, saying how to redo it; with another --fpr it is refused in one line naming the setting
    stamps = {p: os.path.getmtime(os.path.join(out, p)) for p in os.listdir(out)}
    assert localize_script.main(["--run-dir", tiny_run, path, "--out", out, "--predictor", "rec_error",
                                 "--fpr", "0.05"]) == 0
    printed = capsys.readouterr().out
    assert "already localized" in printed and "skipped (--overwrite localizes it again)" in printed
    assert localize_script.main(["--run-dir", tiny_run, path, "--out", out, "--predictor", "rec_error"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "with --fpr 0.05, this command has 0.01" in err and "--overwrite" in err
    assert {p: os.path.getmtime(os.path.join(out, p)) for p in os.listdir(out)} == stamps


def test_a_file_that_is_not_a_3d_nifti_is_named(tiny_run, tmp_path, capsys):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti at all")
    assert localize_script.main(["--run-dir", tiny_run, str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert str(bad) in err and "\n" not in err
    four_d = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4, 3), np.float32), np.eye(4)), str(four_d))
    assert localize_script.main(["--run-dir", tiny_run, str(four_d), "--out", str(tmp_path / "o2")]) == 2
    assert f"{four_d}: is 4D (shape (4, 4, 4, 3)), expected a 3D volume" in capsys.readouterr().err


def test_modality_is_read_from_file_names():
    assert modality_from_name("/d/BraTS2021_00000_t1ce.nii.gz") == "t1ce"
    assert modality_from_name("sub-01_T2w.nii") == "t2"
    assert modality_from_name("BraTS-GLI-00000-000-t2f.nii.gz") == "flair"
    assert modality_from_name("scan.nii.gz") is None


def test_a_flair_scan_is_warned_about_whatever_its_name(tiny_run, tmp_path):
    """Field case 24: FLAIR scans named ``AX_FLAIR_T2`` or ``t2_tirm_tra_dark-fluid`` were scored
    by a T2 run without a word (only names ending in ``flair`` were read). The reader now judges the
    name and the fluid's brightness against the run's modality: each gets one warning, in the summary."""
    from tfvae.runs.run import Run

    subject = phantom.synthesize_subject(9, tumours=False, voxel_mm=2.0)
    brain = subject.image > 0
    flair = np.where(brain, subject.image.max() - subject.image, 0).astype(np.float32)  # dark fluid
    rows = []
    for name in ("AX_FLAIR_T2.nii.gz", "t2_tirm_tra_dark-fluid_4.nii.gz"):
        path = tmp_path / name
        nib.save(nib.Nifti1Image(flair, subject.affine), str(path))
        found = Run(tiny_run).localize(str(path), fpr=0.05)
        rows.append([w for w in found.warnings if "looks like flair, not t2" in w])
    assert all(len(r) == 1 and "give a t2 scan" in r[0] for r in rows)


def test_outputs_never_land_among_inputs_and_are_never_read_as_scans(tiny_run, lps_scan, tmp_path, capsys):
    path, label, affine = lps_scan
    folder = os.path.dirname(path)
    # --out holding an input (the scan's own folder, or the folder of --mask): refused, nothing written
    before = sorted(os.listdir(folder))
    mask_path = os.path.join(folder, "patient_t2_mask.nii.gz")
    nib.save(nib.Nifti1Image((nib.load(path).get_fdata() > 0).astype(np.uint8), affine), mask_path)
    for extra in ([], ["--mask", mask_path]):
        assert localize_script.main(["--run-dir", tiny_run, path, "--out", folder, "--overwrite", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert "holds the input" in err and "\n" not in err
    assert sorted(os.listdir(folder)) == sorted(before + ["patient_t2_mask.nii.gz"])
    os.remove(mask_path)
    # outputs carry _tfvae_: a folder holding a scan and localize's outputs yields only the scan
    out = str(tmp_path / "out")
    assert localize_script.main(["--run-dir", tiny_run, path, "--out", out, "--predictor", "rec_error"]) == 0
    import shutil

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(path, mixed / "patient_t2.nii.gz")
    for name in os.listdir(out):
        shutil.copy(os.path.join(out, name), mixed / name)
    from tfvae.data.scans import scan_files
    from tfvae_datasets.nifti_folder.nifti_folder_dataset_builder import find_scans
    from etils import epath

    assert [os.path.basename(f) for f in scan_files([str(mixed)])] == ["patient_t2.nii.gz"]
    assert [vid for vid, _ in find_scans(epath.Path(mixed))] == ["patient_t2"]
    # adding a scan to an existing --out appends to its summary
    other = tmp_path / "other_t2.nii.gz"
    shutil.copy(path, other)
    assert localize_script.main(["--run-dir", tiny_run, str(other), "--out", out, "--predictor", "rec_error"]) == 0
    with open(os.path.join(out, "summary.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [os.path.basename(r["scan"]) for r in rows] == ["patient_t2.nii.gz", "other_t2.nii.gz"]


def test_broken_headers_unreadable_scans_and_broken_models_are_one_line(tiny_run, lps_scan, tmp_path, capsys,
                                                                        monkeypatch):
    import shutil
    import struct

    path, _, _ = lps_scan
    header = tmp_path / "badcode_t2.nii"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), str(header))
    raw = bytearray(header.read_bytes())
    raw[70:72] = struct.pack("<h", 999)  # datatype: no such code
    header.write_bytes(bytes(raw))
    assert localize_script.main(["--run-dir", tiny_run, str(header), "--out", str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(header) in err and "invalid NIfTI header" in err

    real_load = nib.load

    def denied(p, *a, **k):
        if str(p).endswith("patient_t2.nii.gz"):
            raise PermissionError(13, "Permission denied")
        return real_load(p, *a, **k)

    monkeypatch.setattr(nib, "load", denied)
    assert localize_script.main(["--run-dir", tiny_run, path, "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert path in err and "permission denied" in err and "corrupt" not in err
    monkeypatch.undo()

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir, ignore=shutil.ignore_patterns("eval*", "thresholds.json"))
    model = run_dir / "model.keras"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # truncated
    assert localize_script.main(["--run-dir", str(run_dir), path, "--out", str(tmp_path / "o3")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(model) in err and "cannot load the model" in err
    shutil.copy(os.path.join(tiny_run, "model.keras"), model)
    raw = bytearray(model.read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 256] = bytes(256)  # a corrupted member: the zip's CRC check fails on reading it
    model.write_bytes(bytes(raw))
    assert localize_script.main(["--run-dir", str(run_dir), path, "--out", str(tmp_path / "o4")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(model) in err and "cannot load the model" in err


def test_a_brain_larger_than_the_field_of_view_is_refused_unless_forced(tiny_run, lps_scan, tmp_path, capsys):
    path, _, affine = lps_scan
    img = nib.load(path)
    wrong = affine.copy()
    wrong[:3, :3] *= 10  # a header claiming 12 mm voxels: the brain is ten times too large
    big = tmp_path / "big_t2.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj, np.float32), wrong), str(big))
    assert localize_script.main(["--run-dir", tiny_run, str(big), "--out", str(tmp_path / "o"),
                                 "--predictor", "rec_error"]) == 2
    err = capsys.readouterr().err.strip()
    assert str(big) in err and "% of the brain lies outside" in err and "--force" in err and "\n" not in err
    assert localize_script.main(["--run-dir", tiny_run, str(big), "--out", str(tmp_path / "o"),
                                 "--predictor", "rec_error", "--force"]) == 0
    with open(tmp_path / "o" / "summary.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert "% of the brain lies outside" in row["warnings"] and "(forced)" in row["warnings"]  # recorded


def test_components_summary_and_index_page(tiny_run, lps_scan, tmp_path):
    path, _, affine = lps_scan
    out = tmp_path / "out"
    assert localize_script.main(["--run-dir", tiny_run, path, "--out", str(out), "--predictor", "rec_error"]) == 0
    mask = nib.load(out / "patient_t2_tfvae_mask.nii.gz").get_fdata() > 0
    with open(out / "patient_t2_tfvae_components.csv") as f:
        components = list(csv.DictReader(f))
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    assert len(components) == n >= 1
    assert sum(int(c["voxels"]) for c in components) == int(mask.sum())
    largest = components[0]
    centroid = np.argwhere(labels == np.bincount(labels.ravel())[1:].argmax() + 1).mean(axis=0)
    expected = nib.affines.apply_affine(affine, centroid)
    got = [float(largest[f"centroid_{a}_mm"]) for a in "xyz"]
    np.testing.assert_allclose(got, expected, atol=0.1)
    with open(out / "summary.csv") as f:
        row = next(csv.DictReader(f))
    assert row["run"] == os.path.abspath(tiny_run) and row["checkpoint"] == "final"
    assert "thresholds.json" in row["threshold_from"] and "resampled" in row["warnings"]

    page = Page()
    page.feed((out / "index.html").read_text())
    assert page.images == ["patient_t2_tfvae_overlay.png"] and page.tables == 2
    for target in page.images + page.links:  # every link resolves from disk, or to a section of the page
        assert (target[1:] in page.ids) if target.startswith("#") else (out / target).is_file(), target


class Page:
    """What index.html links to: images, links (as written) and section ids, and its tables."""

    def __init__(self):
        from html.parser import HTMLParser

        self.images, self.links, self.ids, self.tables = [], [], [], 0
        page = self

        class Parser(HTMLParser):
            def handle_starttag(self, tag, attrs):
                attrs = dict(attrs)
                page.images += [attrs["src"]] if tag == "img" else []
                page.links += [attrs["href"]] if tag == "a" else []
                page.ids += [attrs["id"]] if "id" in attrs else []
                page.tables += tag == "table"

        self.parser = Parser()

    def feed(self, text):
        self.parser.feed(text)


def test_a_scan_without_orientation_codes_is_refused_unless_forced(tiny_run, tmp_path, capsys):
    subject = phantom.synthesize_subject(7, tumours=True, voxel_mm=4.0)
    sagittal = np.ascontiguousarray(np.transpose(subject.image, (1, 2, 0)))  # stored A, S, R
    img = nib.Nifti1Image(sagittal, np.eye(4))
    img.set_qform(np.eye(4), code=0)
    img.set_sform(np.eye(4), code=0)
    path = str(tmp_path / "nocode_t2.nii.gz")
    nib.save(img, path)
    out = str(tmp_path / "out")
    assert localize_script.main(["--run-dir", tiny_run, path, "--out", out, "--predictor", "rec_error"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}: qform_code and sform_code are both 0") and "\n" not in err
    assert not os.path.exists(os.path.join(out, "nocode_t2_tfvae_score.nii.gz"))
    assert localize_script.main(["--run-dir", tiny_run, path, "--out", out, "--predictor", "rec_error",
                                 "--force"]) == 0
    with open(os.path.join(out, "summary.csv")) as f:
        row = next(csv.DictReader(f))
    assert "orientation unknown" in row["warnings"] and "assumed" in row["warnings"]


def test_a_head_that_was_not_skull_stripped_is_refused_for_that_reason(tiny_run, tmp_path, capsys):
    from test_nifti_inputs import ixi_like_head

    head, brain, affine = ixi_like_head(201)
    path = str(tmp_path / "IXI201-Guys-T2.nii.gz")
    nib.save(nib.Nifti1Image(head, affine), path)
    assert localize_script.main(["--run-dir", tiny_run, path, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert path in err and "does not look skull-stripped" in err and "voxel sizes" not in err and "\n" not in err
    mask = str(tmp_path / "IXI201-Guys-T2_brainmask.nii.gz")
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), affine), mask)
    assert localize_script.main(["--run-dir", tiny_run, path, "--mask", mask, "--out", str(tmp_path / "out2"),
                                 "--predictor", "rec_error"]) == 0


def test_one_failing_scan_does_not_stop_the_others_and_a_rerun_completes_the_rest(tiny_run, tmp_path, capsys):
    folder = tmp_path / "scans"
    folder.mkdir()
    for seed in (21, 22):
        subject = phantom.synthesize_subject(seed, tumours=True, voxel_mm=4.0)
        nib.save(nib.Nifti1Image(subject.image, subject.affine), str(folder / f"p{seed}_t2.nii.gz"))
    (folder / "p20_t2.nii.gz").write_bytes(b"\x1f\x8b truncated")  # sorted first: fails first
    out = str(tmp_path / "out")
    args = ["--run-dir", tiny_run, str(folder), "--out", out, "--predictor", "rec_error"]
    assert localize_script.main(args) == 1
    err = capsys.readouterr().err
    assert f"error: {folder / 'p20_t2.nii.gz'}: cannot read NIfTI" in err
    assert err.strip().splitlines()[-1].startswith("error: 1 of 3 scan(s) failed")
    with open(os.path.join(out, "summary.csv")) as f:
        rows = {os.path.basename(r["scan"]): r["status"] for r in csv.DictReader(f)}
    assert rows["p21_t2.nii.gz"] == rows["p22_t2.nii.gz"] == "done" and rows["p20_t2.nii.gz"].startswith("failed:")
    assert os.path.isfile(os.path.join(out, "p22_t2_tfvae_mask.nii.gz"))
    # the user fixes the file and runs the same command again, without --overwrite: only it is localized
    subject = phantom.synthesize_subject(20, tumours=True, voxel_mm=4.0)
    nib.save(nib.Nifti1Image(subject.image, subject.affine), str(folder / "p20_t2.nii.gz"))
    stamp = os.path.getmtime(os.path.join(out, "p21_t2_tfvae_score.nii.gz"))
    assert localize_script.main(args) == 0
    printed = capsys.readouterr().out
    assert "p21_t2: already localized" in printed and "p20_t2: " in printed
    assert os.path.getmtime(os.path.join(out, "p21_t2_tfvae_score.nii.gz")) == stamp
    with open(os.path.join(out, "summary.csv")) as f:
        assert {r["status"] for r in csv.DictReader(f)} == {"done"}


def test_a_run_in_use_is_refused_naming_the_holder(tiny_run, tmp_path, capsys):
    import multiprocessing

    from tfvae.utils import rundir

    ready, done = multiprocessing.Event(), multiprocessing.Event()

    def hold():
        with rundir.lock(tiny_run, "evaluate"):
            ready.set()
            done.wait(60)

    holder = multiprocessing.get_context("fork").Process(target=hold)
    holder.start()
    try:
        assert ready.wait(30)
        scan = tmp_path / "s_t2.nii.gz"
        subject = phantom.synthesize_subject(23, tumours=True, voxel_mm=4.0)
        nib.save(nib.Nifti1Image(subject.image, subject.affine), str(scan))
        assert localize_script.main(["--run-dir", tiny_run, str(scan), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {tiny_run} is in use by evaluate (process {holder.pid} on ") and "\n" not in err
    finally:
        done.set()
        holder.join(30)
    # the holder is gone: its lock went with it
    assert localize_script.main(["--run-dir", tiny_run, str(scan), "--out", str(tmp_path / "o"),
                                 "--predictor", "rec_error"]) == 0


def test_the_overlay_shows_lesions_at_a_glance():
    """Colours from the scan's threshold to what its flagged scores reach, a map that does not end in
    white, and more opaque where the score is higher."""
    import matplotlib

    from tfvae.evaluation import reporting

    rng = np.random.default_rng(0)
    image = np.zeros((20, 20, 10), np.float32)
    image[2:18, 2:18, :] = 100 + rng.normal(0, 5, (16, 16, 10))
    score = np.where(image > 0, rng.random(image.shape), 0).astype(np.float32)
    score[8:12, 8:12, 4:6] = 3.0 + rng.random((4, 4, 2))  # a lesion scoring far above the rest
    mask = (score >= 0.95).astype(np.uint8)
    fig = reporting.overlay_figure(image, score, mask, "test", n=4, scale=(0.95, None))
    heat = [im for ax in fig.axes for im in ax.images if im.get_cmap().name == reporting.OVERLAY_CMAP]
    flagged = score[(image != 0) & (score >= 0.95)]
    assert heat and heat[0].get_clim() == pytest.approx((0.95, np.percentile(flagged, 99.5)))
    top = matplotlib.colormaps[reporting.OVERLAY_CMAP](1.0)
    assert min(top[:3]) < 0.5  # the brightest colour is not white (T2 tissue beneath is)
    alphas = np.concatenate([np.ravel(im.get_alpha()) for im in heat])
    assert alphas.min() == 0.0 and alphas.max() > 0.8 and 0.3 < np.median(alphas[alphas > 0]) < 0.6
    bar = next(ax for ax in fig.axes if ax.get_label() == "<colorbar>")
    assert bar.get_xlabel().startswith("anomaly score, from the threshold (0.95)")
    matplotlib.pyplot.close(fig)


def test_a_scan_localized_again_replaces_its_row_whatever_path_the_old_summary_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    summary = tmp_path / "summary.csv"
    localization.write_summary(str(summary), [{"scan": "scans/a_t2.nii.gz", "status": "failed: x"},
                                              {"scan": "scans/b_t2.nii.gz", "status": "done"}])
    localization.write_summary(str(summary), [{"scan": str(tmp_path / "scans" / "a_t2.nii.gz"), "status": "done"}])
    with open(summary) as f:
        rows = list(csv.DictReader(f))
    assert [(os.path.basename(r["scan"]), r["status"]) for r in rows] == [("b_t2.nii.gz", "done"),
                                                                         ("a_t2.nii.gz", "done")]


def test_summary_says_a_fallback_with_its_reason_and_leaves_what_was_not_estimated_empty(tmp_path):
    """summary.csv of a scan whose scores could not be fitted (too few brain pixels): the per-scan
    threshold falls back to the calibrated one, threshold_mode says so and why, and the estimates are
    empty -- not "nan"; a scan that was fitted has them, its lesion share included."""
    from scipy import stats

    from tfvae.thresholds import scan_threshold

    reference = scan_threshold.HealthyReference({f: float(stats.norm.isf(f)) for f in scan_threshold.REFERENCE_FPRS})
    rng = np.random.default_rng(3)
    few = scan_threshold.for_scan(reference, rng.normal(size=50), 0.01)
    fitted = scan_threshold.for_scan(reference, np.r_[rng.normal(size=20000), 6 + rng.normal(size=1000)], 0.01)
    assert few.fallback and few.reason and not fitted.fallback
    image = np.zeros((12, 12, 6), np.float32)
    image[2:10, 2:10] = 1.0
    rows = []
    for name, chosen in (("few", few), ("fitted", fitted)):
        result = localization.Localized(np.where(image > 0, 0.5, 0).astype(np.float32), (image > 0).astype(np.uint8),
                                        0.064, 1, int((image > 0).sum()), affine=np.diag([4.0, 4.0, 4.0, 1.0]),
                                        threshold=chosen.threshold, image=image, scan_threshold=chosen)
        rows.append({"scan": str(tmp_path / f"{name}.nii.gz"),
                     **localization.write_outputs(result, str(tmp_path / "out"), name, name)})
    localization.write_summary(str(tmp_path / "summary.csv"), rows)
    with open(tmp_path / "summary.csv", newline="") as f:
        few_row, fitted_row = csv.DictReader(f)
    assert few_row["threshold_mode"] == f"per_scan (fallback to the calibrated threshold: {few.reason})"
    assert "50 brain pixels" in few_row["threshold_mode"]
    assert few_row["threshold"] == few_row["calibrated_threshold"] == f"{reference.threshold(0.01):.6g}"
    for column in ("estimated_fpr", "estimated_fpr_at_calibrated", "estimated_lesion_share"):
        assert few_row[column] == "", column  # not estimated: empty, not "nan"
    assert fitted_row["threshold_mode"] == "per_scan"
    assert float(fitted_row["estimated_fpr"]) == pytest.approx(fitted.estimated_fpr, abs=1e-4)
    # about 1000 of 21000 pixels score far above the healthy bulk: the share of the brain that does not look healthy
    assert float(fitted_row["estimated_lesion_share"]) == pytest.approx(fitted.lesion_share, abs=1e-4)
    assert 0.03 < float(fitted_row["estimated_lesion_share"]) < 0.07


def test_label_maps_are_never_localized_as_scans(tiny_run, lps_scan, tmp_path, capsys):
    """Issue 31: nnU-Net's labelsTr/, MSLUB's consensus_gt and a segmentation under a scan's name
    were scored as scans. Named as label maps they are skipped in a folder (a folder of only them,
    or a labelsTr/ folder, is one line); a label map by its content is refused whatever its name."""
    from tfvae.data.scans import scan_files

    path, label, affine = lps_scan
    scans = tmp_path / "case"
    scans.mkdir()
    shutil.copy(path, scans / "patient_T2W.nii.gz")
    for name in ("consensus_gt.nii.gz", "patient_label.nii.gz", "patient_brainmask.nii.gz"):
        nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), str(scans / name))
    assert scan_files([str(scans)]) == [str(scans / "patient_T2W.nii.gz")]
    labels = tmp_path / "labelsTr"
    labels.mkdir()
    nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), str(labels / "case_001.nii.gz"))
    with pytest.raises(ValueError, match="a folder of label maps"):
        scan_files([str(labels)])
    only = tmp_path / "only_labels"
    only.mkdir()
    shutil.copy(scans / "consensus_gt.nii.gz", only)
    with pytest.raises(ValueError, match="named as label maps or masks"):
        scan_files([str(only)])
    disguised = tmp_path / "disguised_t2.nii.gz"  # a segmentation saved under a scan's name
    shutil.copy(scans / "consensus_gt.nii.gz", disguised)
    assert localize_script.main(["--run-dir", tiny_run, str(disguised), "--out", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err
    assert "a label map or mask, not a scan" in err and str(disguised) in err
