"""localize into a folder it wrote before (issue 31): a record per scan, a rerun that skips only what
was done with the same settings and refuses the rest in one line, an interrupted or killed batch
continued, the brain mask beside a scan, links that survive any file name, and a run used on a
machine without its training data."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from urllib.parse import unquote

import nibabel as nib
import numpy as np
import pytest

from script_loader import ROOT, load_script
from test_localize import Page
from tfvae.evaluation import localization
from tfvae_datasets.brain_phantom import phantom

localize_script = load_script("localize")


def save_scan(path, seed, voxel_mm=4.0):
    subject = phantom.synthesize_subject(seed, tumours=True, voxel_mm=voxel_mm)
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    nib.save(nib.Nifti1Image(subject.image, subject.affine), str(path))
    return str(path)


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """A folder of three phantom tumour scans at the training voxel size."""
    folder = tmp_path_factory.mktemp("scans")
    for seed in (41, 42, 43):
        save_scan(folder / f"p{seed}_t2.nii.gz", seed)
    return str(folder)


def summary(out):
    with open(os.path.join(out, "summary.csv"), newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def stamps(out):
    return {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in sorted(os.listdir(out))}


def last_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_rerun_skips_scans_done_with_the_same_settings_and_refuses_other_settings_naming_them(
        tiny_run, scans, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "out")
    args = ["--run-dir", tiny_run, scans, "--out", out, "--predictor", "rec_error"]
    assert localize_script.main(args) == 0
    capsys.readouterr()
    # each scan's record: the settings its outputs were made with, its inputs' digests, its summary row
    record = json.load(open(os.path.join(out, "p41_t2" + localization.RECORD)))
    from tfvae.thresholds.calibration import file_digest

    assert record["settings"]["predictor"] == "rec_error" and record["settings"]["fpr"] == 0.01
    assert record["settings"]["run"] == os.path.abspath(tiny_run) and record["settings"]["checkpoint"] == "final"
    assert record["settings"]["model_sha256"] == file_digest(os.path.join(tiny_run, "model.keras"))
    assert record["settings"]["threshold_mode"] == "per_scan" and record["settings"]["calibration"] is None
    assert record["settings"]["force"] is False
    assert record["inputs"]["scan"]["sha256"] == file_digest(os.path.join(scans, "p41_t2.nii.gz"))
    assert record["inputs"]["mask"] is None and record["row"]["brain_mask"] == "non-zero voxels"
    assert record["threshold_from"] and record["row"]["status"] == "done"
    before = stamps(out)

    # the same command: every scan skipped, nothing written
    assert localize_script.main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("already localized") == 3 and stamps(out) == before

    # other settings: refused in one line naming the setting, its value then and now and the fix, before the
    # model is loaded; nothing written
    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the settings were compared")

    monkeypatch.setattr(localization, "Localizer", no_model)
    other_run = str(tmp_path / "copy_of_run")
    shutil.copytree(tiny_run, other_run)
    for extra, expected in (
            (["--predictor", "kl_grad"], "with --predictor rec_error, this command has kl_grad"),
            (["--fpr", "0.05"], "with --fpr 0.01, this command has 0.05"),
            (["--set", "postprocess.min_component_voxels=8"],
             "with --set postprocess.min_component_voxels 0, this command has 8"),
            (["--set", "threshold.mode=fixed"], "with threshold.mode per_scan, this command has fixed"),
            (["--checkpoint", "best"], "with --checkpoint final, this command has best"),
            (["--force"], "with --force off, this command has on")):  # forced outputs are other outputs
        assert localize_script.main([*args, *extra]) == 2, extra
        line = last_line(capsys.readouterr().err)
        assert expected in line and "2 more scan(s) there differ too" in line, line
        assert line.startswith(f"error: {os.path.join(out, 'p41_t2_tfvae_score.nii.gz')}: p41_t2 was localized")
        assert "another --out" in line and "--overwrite" in line
    assert localize_script.main(["--run-dir", other_run, *args[2:]]) == 2
    line = last_line(capsys.readouterr().err)
    assert f"with --run-dir {os.path.abspath(tiny_run)}, this command has {other_run}" in line
    assert stamps(out) == before
    # a brain mask beside a scan since, or a scan whose content changed: named too
    mask = os.path.join(scans, "p42_t2_mask.nii.gz")
    img = nib.load(os.path.join(scans, "p42_t2.nii.gz"))
    nib.save(nib.Nifti1Image((img.get_fdata() > 0).astype(np.uint8), img.affine), mask)
    try:
        assert localize_script.main(args) == 2
        line = last_line(capsys.readouterr().err)
        assert f"p42_t2 was localized there with brain mask none (its non-zero voxels), this command has {mask}" \
            in line
    finally:
        os.remove(mask)
    monkeypatch.undo()
    changed = tmp_path / "changed"
    shutil.copytree(scans, changed)
    out2 = str(tmp_path / "out2")
    assert localize_script.main(["--run-dir", tiny_run, str(changed / "p41_t2.nii.gz"), "--out", out2,
                                 "--predictor", "rec_error"]) == 0
    save_scan(changed / "p41_t2.nii.gz", 99)
    assert localize_script.main(["--run-dir", tiny_run, str(changed / "p41_t2.nii.gz"), "--out", out2,
                                 "--predictor", "rec_error"]) == 2
    assert "p41_t2 was localized there with scan " in capsys.readouterr().err
    assert stamps(out) == before

    # --overwrite: localized again with the new settings, the records and the summary say so
    assert localize_script.main([*args, "--fpr", "0.05", "--overwrite"]) == 0
    rows = summary(out)
    assert len(rows) == 3 and {r["fpr"] for r in rows} == {"0.05"} and {r["status"] for r in rows} == {"done"}
    assert json.load(open(os.path.join(out, "p43_t2" + localization.RECORD)))["settings"]["fpr"] == 0.05


def test_an_interrupted_batch_says_what_was_finished_and_the_same_command_continues(tiny_run, scans, tmp_path,
                                                                                    capsys, monkeypatch):
    out = str(tmp_path / "out")
    args = ["--run-dir", tiny_run, scans, "--out", out, "--predictor", "rec_error"]
    real = localization.write_outputs
    calls = []

    def ctrl_c_on_the_second(*a, **k):
        calls.append(a[2])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(localization, "write_outputs", ctrl_c_on_the_second)
    assert localize_script.main(args) == 130
    captured = capsys.readouterr()
    line = last_line(captured.err)
    assert line == (f"interrupted: 1 scan(s) localized in {out} (listed in its summary.csv and index.html); run "
                    "the same command again to continue with the 2 left")
    assert "Traceback" not in captured.err + captured.out
    assert [os.path.basename(r["scan"]) for r in summary(out)] == ["p41_t2.nii.gz"]  # listed as it finished
    assert "p41_t2_tfvae_overlay.png" in open(os.path.join(out, "index.html"), encoding="utf-8").read()
    assert not os.path.exists(os.path.join(out, "p42_t2" + localization.RECORD))  # the one cut short: not done
    first = os.stat(os.path.join(out, "p41_t2_tfvae_score.nii.gz")).st_mtime_ns
    monkeypatch.undo()
    # the same command: only what is left, and the summary lists every scan, the first invocation's included
    assert localize_script.main(args) == 0
    printed = capsys.readouterr().out
    assert "p41_t2: already localized" in printed and "p42_t2: " in printed and "p43_t2: " in printed
    # each scan's stage said before its result (a long scan is not silent), numbered over the batch
    lines = printed.splitlines()
    assert lines.index("[2/3] p42_t2: scoring ...") < next(i for i, l in enumerate(lines) if l.startswith("p42_t2: "))
    assert os.stat(os.path.join(out, "p41_t2_tfvae_score.nii.gz")).st_mtime_ns == first
    rows = summary(out)
    assert [os.path.basename(r["scan"]) for r in rows] == ["p41_t2.nii.gz", "p42_t2.nii.gz", "p43_t2.nii.gz"]
    assert {r["status"] for r in rows} == {"done"}

    # Ctrl-C before any scan (while the model loads): one line too
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(localization, "Localizer", interrupted)
    assert localize_script.main([*args[:-4], "--out", str(tmp_path / "o2")]) == 130
    assert last_line(capsys.readouterr().err) == ("interrupted before any scan was localized; run the same command "
                                                  "again to start")


def test_a_summary_lost_by_a_kill_is_rewritten_from_the_records_and_an_older_folder_is_compared_by_its_rows(
        tiny_run, scans, tmp_path, capsys):
    out = str(tmp_path / "out")
    args = ["--run-dir", tiny_run, scans, "--out", out, "--predictor", "rec_error"]
    assert localize_script.main(args) == 0
    expected = summary(out)
    # a kill after a scan's record, before the summary: the next call lists it again, localizing nothing
    os.remove(os.path.join(out, "summary.csv"))
    os.remove(os.path.join(out, "index.html"))
    outputs = {n: t for n, t in stamps(out).items() if "_tfvae_" in n}
    assert localize_script.main(args) == 0
    assert capsys.readouterr().out.count("already localized") == 3
    assert summary(out) == expected and os.path.isfile(os.path.join(out, "index.html"))
    assert {n: t for n, t in stamps(out).items() if "_tfvae_" in n} == outputs
    # a folder written by an older tfvae (summary rows, no records): compared on what its rows say
    for name in os.listdir(out):
        if name.endswith(localization.RECORD):
            os.remove(os.path.join(out, name))
    assert localize_script.main(args) == 0
    assert capsys.readouterr().out.count("already localized") == 3
    assert localize_script.main([*args, "--fpr", "0.02"]) == 2
    assert "with --fpr 0.01, this command has 0.02" in last_line(capsys.readouterr().err)
    # outputs a kill left without a record or a row are tfvae's: made again, not refused
    os.remove(os.path.join(out, "summary.csv"))
    assert localize_script.main(args) == 0
    assert "already localized" not in capsys.readouterr().out and len(summary(out)) == 3


def wait_for(predicate, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.slow  # subprocesses
@pytest.mark.parametrize("how", ["ctrl_c", "kill"])
def test_a_batch_stopped_by_a_signal_is_continued_by_the_same_command(tiny_run, tmp_path, capsys, how):
    """The real thing: ``scripts/localize.py`` in its own process, stopped by SIGINT (Ctrl-C) or SIGKILL
    once its first scan is recorded, then run again."""
    folder = tmp_path / "scans"
    for seed in (51, 52, 53, 54):
        save_scan(folder / f"s{seed}_t2.nii.gz", seed)
    out = str(tmp_path / "out")
    args = ["--run-dir", tiny_run, str(folder), "--out", out]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    # Ctrl-C answered as on a terminal even when the tests run in the background (a shell's background job
    # ignores SIGINT, and a child inherits that): the child starts with the default handler
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", "localize.py"), *args], cwd=ROOT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert wait_for(lambda: localization.records(out) or process.poll() is not None, 240)
        process.send_signal(signal.SIGINT if how == "ctrl_c" else signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    finished = [os.path.basename(r["scan"]) for r in localization.records(out)]
    assert 1 <= len(finished) < 4, (finished, stderr)  # stopped mid-batch
    if how == "ctrl_c":
        assert process.returncode == 130, stderr
        assert "Traceback" not in stderr
        last = stderr.strip().splitlines()[-1]
        assert last.startswith(f"interrupted: {len(finished)} scan(s) localized in {out}") and \
            last.endswith(f"run the same command again to continue with the {4 - len(finished)} left"), stderr
        assert [os.path.basename(r["scan"]) for r in summary(out)] == finished  # listed as they finished
    else:
        assert process.returncode == -signal.SIGKILL
    done = {n: os.stat(os.path.join(out, n[:-len(".nii.gz")] + "_tfvae_score.nii.gz")).st_mtime_ns for n in finished}
    assert localize_script.main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("already localized") == len(finished)
    assert {n: os.stat(os.path.join(out, n[:-len(".nii.gz")] + "_tfvae_score.nii.gz")).st_mtime_ns
            for n in finished} == done
    rows = summary(out)
    assert sorted(os.path.basename(r["scan"]) for r in rows) == [f"s{s}_t2.nii.gz" for s in (51, 52, 53, 54)]
    assert {r["status"] for r in rows} == {"done"}


def test_index_links_survive_spaces_hashes_quotes_and_non_ascii_names(tiny_run, tmp_path):
    folder = tmp_path / "scans"
    names = ["patient #1 t2", "ré-scan t2", "o'brien <x> & t2"]
    for seed, name in zip((61, 62, 63), names):
        save_scan(folder / f"{name}.nii.gz", seed)
    out = tmp_path / "out"
    assert localize_script.main(["--run-dir", tiny_run, str(folder), "--out", str(out), "--predictor",
                                 "rec_error"]) == 0
    text = (out / "index.html").read_text(encoding="utf-8")
    page = Page()
    page.feed(text)
    assert sorted(page.ids) == sorted(names)
    assert len(page.images) == 3 and len(page.links) == 3 * 5  # 3 contents links, 4 outputs per scan
    for target in page.images + page.links:
        assert not any(c in target.lstrip("#") for c in " #'<>&é"), target  # quoted
        if target.startswith("#"):
            assert unquote(target[1:]) in page.ids, target
        else:
            assert (out / unquote(target)).is_file(), target
    assert "o&#x27;brien &lt;x&gt; &amp; t2" in text  # names in text escaped
    assert sorted(os.path.basename(r["scan"]) for r in summary(str(out))) == sorted(f"{n}.nii.gz" for n in names)


def test_the_brain_mask_beside_a_raw_head_is_used_for_a_file_or_a_folder_and_never_taken_as_a_scan(
        tiny_run, tmp_path, capsys):
    from test_nifti_inputs import ixi_like_head

    from tfvae.runs.run import Run

    head, brain, affine = ixi_like_head(202)
    folder = tmp_path / "heads"
    folder.mkdir()
    path = str(folder / "IXI202-HH-T2.nii.gz")
    nib.save(nib.Nifti1Image(head, affine), path)
    out = str(tmp_path / "refused")
    assert localize_script.main(["--run-dir", tiny_run, path, "--out", out, "--predictor", "rec_error"]) == 2
    assert "does not look skull-stripped" in last_line(capsys.readouterr().err)  # no mask beside it yet
    mask = str(folder / "IXI202-HH-T2_mask.nii.gz")
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), affine), mask)
    # the same maps as with the mask given (--mask)
    given_mask = str(tmp_path / "mask_given.nii.gz")
    shutil.copy(mask, given_mask)
    os.rename(mask, mask + ".away")
    explicit = str(tmp_path / "explicit")
    assert localize_script.main(["--run-dir", tiny_run, path, "--mask", given_mask, "--out", explicit,
                                 "--predictor", "rec_error"]) == 0
    expected = nib.load(os.path.join(explicit, "IXI202-HH-T2_tfvae_score.nii.gz")).get_fdata()
    os.rename(mask + ".away", mask)
    for given, name in ((path, "file"), (str(folder), "folder")):
        out = str(tmp_path / name)
        assert localize_script.main(["--run-dir", tiny_run, given, "--out", out, "--predictor", "rec_error"]) == 0
        rows = summary(out)
        assert [os.path.basename(r["scan"]) for r in rows] == ["IXI202-HH-T2.nii.gz"]  # the mask is no scan
        assert rows[0]["brain_mask"] == mask and rows[0]["status"] == "done"
        scored = nib.load(os.path.join(out, "IXI202-HH-T2_tfvae_score.nii.gz")).get_fdata()
        np.testing.assert_array_equal(scored, expected)
    assert json.load(open(os.path.join(out, "IXI202-HH-T2" + localization.RECORD)))["inputs"]["mask"]["path"] == mask
    # from Python too, and the same maps
    found = Run(tiny_run).localize(path, predictor="rec_error")
    assert found.brain_mask == mask
    np.testing.assert_allclose(found.score, expected, atol=1e-6)


@pytest.mark.slow  # trains a run
def test_a_run_moved_without_its_training_data_localizes_from_its_folder_alone(tmp_path, capsys):
    """Field case 26: a run trained on a nifti_folder, copied to another machine where neither the
    scans it was trained on nor their TFDS build are."""
    from tfvae import config as config_lib
    from tfvae.runs.run import Run

    cluster = tmp_path / "cluster"
    for seed in range(3):
        subject = phantom.synthesize_subject(300 + seed, tumours=False, voxel_mm=4.0)
        os.makedirs(cluster / "data", exist_ok=True)
        nib.save(nib.Nifti1Image(subject.image, subject.affine), str(cluster / "data" / f"healthy{seed}_t2.nii.gz"))
    patient = save_scan(tmp_path / "patient" / "patient_t2.nii.gz", 101)
    run_dir = str(cluster / "runs" / "R")
    config = config_lib.resolve({"name": "R", "model": {"latent_dim": 8}}, [
        "data.name=nifti_folder", "data.config=default", "data.image_size=32", f"data.data_dir={cluster / 'tfds'}",
        f"data.manual_dir={cluster / 'data'}", "train.epochs=1", "train.batch_size=16", "train.image_every=1",
        "train.num_images=2", "predictors.projection_steps=5"])
    Run.create(run_dir, config).train(verbose=0)
    stored = json.load(open(os.path.join(run_dir, localization.TRAINING_SCANS_FILE)))  # kept when it was trained
    assert stored["shape"] in [list(nib.load(str(cluster / "data" / f"healthy{seed}_t2.nii.gz")).shape)
                               for seed in range(3)]
    assert stored["voxel_mm"] == [4.0, 4.0, 4.0] and stored["modality"] == "t2"
    # localized once where the data is (its thresholds stored in the run), then copied
    assert localize_script.main(["--run-dir", run_dir, patient, "--out", str(tmp_path / "out1")]) == 0
    laptop = str(tmp_path / "laptop" / "R")
    shutil.copytree(run_dir, laptop)
    os.rename(cluster, tmp_path / "cluster.gone")
    capsys.readouterr()
    out2 = str(tmp_path / "out2")
    assert localize_script.main(["--run-dir", laptop, patient, "--out", out2]) == 0
    captured = capsys.readouterr()
    assert "error" not in captured.err and "training" not in captured.err, captured.err
    assert not cluster.exists()  # nothing built or made where the data was
    np.testing.assert_allclose(nib.load(os.path.join(out2, "patient_t2_tfvae_score.nii.gz")).get_fdata(),
                               nib.load(str(tmp_path / "out1" / "patient_t2_tfvae_score.nii.gz")).get_fdata(),
                               atol=1e-6)
    # another scan's shape is still warned about, from what the run keeps
    other = save_scan(tmp_path / "patient" / "fine_t2.nii.gz", 102, voxel_mm=2.0)
    assert localize_script.main(["--run-dir", laptop, other, "--out", out2]) == 0
    assert "differs from the training scans" in capsys.readouterr().err
    # a threshold never calibrated, with the validation data gone: one line saying what is missing and what to do
    assert localize_script.main(["--run-dir", laptop, patient, "--out", str(tmp_path / "out3"), "--fpr", "0.03"]) == 2
    line = last_line(capsys.readouterr().err)
    assert line.startswith(f"error: {os.path.join(laptop, 'thresholds.json')}: holds no recommended threshold at "
                           "FPR 0.03") and "validation data" in line and "--fpr stored there (" in line
    assert "tfvae calibrate" in line and not cluster.exists()
    # a run of an older tfvae (no training_scans.json): localized, with one line saying what is not compared
    os.remove(os.path.join(laptop, localization.TRAINING_SCANS_FILE))
    assert localize_script.main(["--run-dir", laptop, patient, "--out", str(tmp_path / "out4")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "training" in line]
    assert len(lines) == 1 and "training_scans.json" in lines[0] and "not compared" in lines[0], lines
    assert lines[0].startswith(f"warning: {laptop} does not record its training scans' shape and voxel size")
    assert not cluster.exists()
