"""What the VAE adds by lesion size (tfvae.studies.lesion_size_study): its figures against sklearn on dumps
written as threshold_study writes them, and its table against those figures."""

import numpy as np
import pytest

from tfvae.studies import lesion_size_study, threshold_study
from tests.test_threshold_study import write_dump


def test_figures_and_table_from_dumps(tmp_path):
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(0)
    reference = {f: 1.0 for f in threshold_study.DENSE_FPRS}
    roots = [tmp_path / "s0", tmp_path / "s1"]
    truth = {}
    for name, _, _ in lesion_size_study.SETS[:2]:
        n = 5000
        lesion = np.arange(n) < 400
        for k, root in enumerate(roots):
            root.mkdir(exist_ok=True)
            score = rng.normal(size=n) + lesion * (1.0 + k)
            write_dump(root / f"{name}.npz", [("v0", score[:2500], lesion[:2500], ~lesion[:2500]),
                                               ("v1", score[2500:], lesion[2500:], ~lesion[2500:])], reference)
            truth[(name, k)] = (roc_auc_score(lesion, score), average_precision_score(lesion, score))
        for b, shift in zip(lesion_size_study.BASELINES, (0.5, 0.2)):
            score = rng.normal(size=n) + lesion * shift
            write_dump(tmp_path / f"{name}__{b}.npz", [("v0", score, lesion, ~lesion)], reference)
            truth[(name, b)] = (roc_auc_score(lesion, score), average_precision_score(lesion, score))
    figures = lesion_size_study.measure([[str(tmp_path / "elsewhere"), str(r)] for r in roots], [str(tmp_path)])
    assert set(figures) == {"default", "heldout_home"}  # the large sets have no dumps: left out
    for name in figures:
        for k in range(2):
            assert figures[name]["recommended"][k]["auroc"] == pytest.approx(truth[(name, k)][0])
            assert figures[name]["recommended"][k]["auprc"] == pytest.approx(truth[(name, k)][1])
        for b in lesion_size_study.BASELINES:
            assert figures[name][b]["auroc"] == pytest.approx(truth[(name, b)][0])
    table = lesion_size_study.render(figures, 2)
    row = next(line for line in table.splitlines() if line.startswith("| `default`"))
    rec = np.array([truth[("default", k)][0] for k in range(2)])
    assert f"{rec.mean():.3f} ± {rec.std():.3f} / {truth[('default', 'intensity_filtered')][0]:.3f}" in row
    assert f"{(rec - truth[('default', 'intensity_filtered')][0]).mean():+.3f} / " in row and "| design set |" in row


def test_the_published_table_is_what_its_evidence_renders():
    import json
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "docs", "results_phantom_lesion_size.json")) as f:
        evidence = json.load(f)
    text = open(os.path.join(root, "docs", "results_phantom.md"), encoding="utf-8").read()
    begin, end = lesion_size_study.MARKERS
    section = text[text.index(begin):text.index(end)]
    assert section[len(begin):].strip() == lesion_size_study.body(evidence).strip()  # every line, the stamp's too
    assert evidence["stamp"]["commit"] in section and len(evidence["stamp"]["configs"]) == 3
