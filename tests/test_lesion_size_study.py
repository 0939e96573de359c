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
            write_dump(tmp_path / f"{name}__{b}.npz", [("v0", score[:2500], lesion[:2500], ~lesion[:2500]),
                                                       ("v1", score[2500:], lesion[2500:], ~lesion[2500:])], reference)
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


def test_size_classes_score_the_same_volumes_of_every_map(tmp_path):
    """Each size class pools exactly its volumes' pixels, per run, the same volumes for the
    recommended map and the baselines (sklearn on those pixels); a lesion at exactly 2.5 % of the
    brain is medium; a set without small volumes has no small row; one row per class and role."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(1)
    reference = {f: 1.0 for f in threshold_study.DENSE_FPRS}
    n = 4000
    # the lesion at 1 % (small), 0 % (no class), 2.5 % exactly, 5 % and 10 % (medium) of the brain
    shares = {"a": 0.01, "b": 0.0, "e": 0.025, "c": 0.05, "d": 0.10}
    labels = {v: np.arange(n) < round(sh * n) for v, sh in shares.items()}
    only_medium = ["e", "c", "d"]  # heldout_home: no small volume

    def write(path, gain, volumes):
        scores = {v: rng.normal(size=n) + labels[v] * gain for v in volumes}
        write_dump(path, [(v, scores[v], labels[v], ~labels[v]) for v in volumes], reference)
        return scores

    truth = {}
    sets = {"default": list(shares), "heldout_home": only_medium, "large_lesions": list(shares)}
    for name, volumes in sets.items():
        maps = {}
        for k, gain in enumerate((2.0, 0.7)):  # two runs, other maps
            (tmp_path / f"s{k}").mkdir(exist_ok=True)
            maps[f"run{k}"] = write(tmp_path / f"s{k}" / f"{name}.npz", gain, volumes)
        for b, gain in zip(lesion_size_study.BASELINES, (1.0, 0.3)):
            maps[b] = write(tmp_path / f"{name}__{b}.npz", gain, volumes)
        for size, chosen in (("small", ["a"]), ("medium", ["e", "c", "d"]), ("large", volumes)):
            if not set(chosen) <= set(volumes):
                continue
            lab = np.concatenate([labels[v] for v in chosen])
            for m, scores in maps.items():
                s = np.concatenate([scores[v] for v in chosen])
                truth[(name, size, m)] = (roc_auc_score(lab, s), average_precision_score(lab, s))
    figures = lesion_size_study.measure([[str(tmp_path / "s0")], [str(tmp_path / "s1")]], [str(tmp_path)])
    assert set(figures["default"]["by_size"]) == {"small", "medium"}
    assert set(figures["heldout_home"]["by_size"]) == {"medium"}  # no small volume: no small row
    assert set(figures["large_lesions"]["by_size"]) == {"large"}
    for name, size in (("default", "small"), ("default", "medium"), ("heldout_home", "medium"),
                       ("large_lesions", "large")):
        got = figures[name]["by_size"][size]
        assert got["volumes"] == {"small": ["a"], "medium": ["e", "c", "d"], "large": list(shares)}[size]
        for k in range(2):
            assert got["recommended"][k]["auroc"] == pytest.approx(truth[(name, size, f"run{k}")][0])
            assert got["recommended"][k]["auprc"] == pytest.approx(truth[(name, size, f"run{k}")][1])
        for b in lesion_size_study.BASELINES:
            assert got[b]["auroc"] == pytest.approx(truth[(name, size, b)][0])
            assert got[b]["auprc"] == pytest.approx(truth[(name, size, b)][1])
    table = lesion_size_study.render(figures, 2)
    small = next(line for line in table.splitlines() if line.startswith("| small |"))
    assert "`default`: lesion < 2.5 % of the brain" in small and "| design set | 1 |" in small
    assert f"{truth[('default', 'small', 'intensity_filtered')][0]:.3f}" in small
    rows = [line for line in table.splitlines() if line.startswith(("| small |", "| medium |", "| large |"))]
    assert len(rows) == 4 and sum("`heldout_home`" in r for r in rows) == 1


@pytest.mark.parametrize("change", ["names", "labels"])
def test_dumps_of_other_volumes_are_refused(tmp_path, change):
    reference = {f: 1.0 for f in threshold_study.DENSE_FPRS}
    lesion = np.arange(100) < 5
    other = np.arange(100) < (5 if change == "names" else 6)
    (tmp_path / "s0").mkdir()
    write_dump(tmp_path / "s0" / "default.npz", [("a", np.arange(100.0), lesion, ~lesion)], reference)
    for b in lesion_size_study.BASELINES:
        write_dump(tmp_path / f"default__{b}.npz", [("z" if change == "names" else "a", np.arange(100.0), other,
                                                     ~other)], reference)
    with pytest.raises(ValueError, match="other volumes than"):
        lesion_size_study.measure([[str(tmp_path / "s0")]], [str(tmp_path)])
