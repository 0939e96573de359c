"""The second-restoration study (tfvae.studies.second_restoration_study) on a trained tiny run, and
its published table against its evidence."""

import json
import os

import numpy as np

from tfvae.studies import second_restoration_study as study

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = (("tiny", "test", "design"),)


def test_dumps_hold_the_map_as_it_is_and_the_second_and_the_report_pairs_them(tiny_run, tmp_path):
    from tfvae import config as config_lib
    from tfvae.evaluation.evaluate import run_inputs, stored_calibration
    from tfvae.maps.scoring import Scorer, volumes
    from tfvae.runs.run import Run
    from tfvae.studies.threshold_study import Dump

    folder = study.dump(tiny_run, "tiny", str(tmp_path / "dumps"), log=lambda line: None)
    first, second = (Dump(os.path.join(folder, f"{m}.npz")) for m in study.MAPS)
    run = Run(tiny_run)
    config = config_lib.resolve(run.config(), ["data.test_name=null", "data.test_config=tiny"])
    model, test, validation = run_inputs(run, config)
    plain = Scorer(model, config, ["recommended"])  # the map as it is, without the option
    plain.fit(validation, stored=stored_calibration(run, run.config(), "final")["reference"])
    volume = next(iter(volumes(test)))
    expected = plain(volume.image, volume.brain_mask, volume.geometry.voxel_mm())["recommended"]
    n = first.offsets[1]
    np.testing.assert_allclose(first.score[:n], expected[volume.brain_mask > 0], rtol=1e-5, atol=1e-6)
    assert np.abs(second.score - first.score).max() > 1e-4 and np.array_equal(first.lesion, second.lesion)
    assert np.all(np.diff(first.reference) >= 0)  # DENSE_FPRS fall: each threshold is higher than the last
    # the report: each figure of both maps and their paired difference, the evidence beside the table
    md = tmp_path / "results.md"
    md.write_text("# Results\n\nkept\n")
    evidence = study.report([tiny_run], str(tmp_path / "dumps"), str(md), command="test", note="A note.", sets=TINY)
    text = md.read_text()
    assert text.startswith("# Results\n\nkept\n") and "A note." in text
    assert study.render(evidence["results"], TINY) in text
    figures = evidence["results"]["tiny"]
    name = os.path.basename(tiny_run)
    auroc = (figures["first"][name]["auroc"], figures["second"][name]["auroc"])
    row = next(line for line in text.splitlines() if "| AUROC |" in line)
    assert f"| {auroc[0]:.3f} | {auroc[1]:.3f} | {auroc[1] - auroc[0]:+.3f} (" in row
    assert json.load(open(tmp_path / "results_second_restoration.json"))["stamp"]["dumps_sha256"]
    assert study.dump(tiny_run, "tiny", str(tmp_path / "dumps")) == folder  # both there: reused


def test_the_published_table_is_what_its_evidence_renders():
    evidence = json.load(open(os.path.join(ROOT, "docs", "results_phantom_second_restoration.json")))
    text = open(os.path.join(ROOT, "docs", "results_phantom.md"), encoding="utf-8").read()
    begin, end = study.MARKERS
    section = text[text.index(begin):text.index(end)]
    assert study.render(evidence["results"]) in section and evidence["stamp"]["commit"] in section
    assert len(evidence["stamp"]["configs"]) == 3
    note = open(os.path.join(ROOT, "docs", "results_phantom_second_restoration_note.md"), encoding="utf-8").read()
    assert note.strip() in section  # the paragraph the command put before the table
