"""Raw heads against the same brains given already preprocessed (issue 32's second target): what
``scripts/raw_study.py`` runs.

For each raw tumour head of a raw phantom set (``tfvae_datasets.testing_trees.raw_phantom_tree``:
held-out seeds, BraTS layout, the truth in ``truth/``), a run's map is made twice with ``tfvae
localize`` (its default threshold: ``--fpr`` of the run's calibration, moved per scan as
``threshold.mode`` says):

(a) **already preprocessed**: the phantom subject behind the head
    (``phantom.synthesize_subject(seed, tumours=True, voxel_mm=brain_voxel_mm)``: the very brain the
    head was built around) written as NIfTI with its affine and its true brain mask beside it
    (``<case>_t2_mask.nii.gz``, as the phantom builder slices with it) -- the phantom's own kind of
    test volume;
(b) **raw, ``--preprocess``**: the raw head (skull, scalp, pose, bias field, IXI-like grid), maps
    written in its raw grid.

Per scan: AUROC of the score inside the true brain against the tumour labels (``roc_auc_score``;
(a) in phantom space, (b) in the raw grid, where the score is 0 outside the brain mask the
preprocessing made), Dice of the written mask against the labels, the share of the true healthy
brain the mask flags, and for (b) the Dice of the preprocessing's brain mask against the true one.

Everything is resumable: the tree keeps its finished cases, the preprocessing (``preprocess_scans``
into ``WORK/preprocessing``, copied into each run's (b) folder, where localize reuses it: same
content, same settings) and localize (its records) skip what is done; the figures are computed
again from the files each time.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil

import nibabel as nib
import numpy as np

METRICS = ("auroc", "dice")  # the target's figures, paired (b - a)
TARGET = 0.02


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    seed: int
    raw: str          # the raw head (tree/<case>/<case>_t2.nii.gz)
    seg: str          # its labels in the raw grid
    brainmask: str    # the true brain mask in the raw grid
    truth: dict       # tree/truth/<case>_truth.json
    phantom: str      # (a): the phantom-space volume (WORK/phantom/<case>_t2.nii.gz)
    phantom_seg: str  # its labels in phantom space
    phantom_mask: str  # its true brain mask (beside it, as localize reads it)


def _save(path: str, data: np.ndarray, affine: np.ndarray) -> None:
    from tfvae import files

    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with files.written_whole(path) as tmp:
        nib.save(img, tmp)


def prepare(work: str, cases: int, first_seed: int, *, coarse: bool = False, log=print) -> list[Case]:
    """The raw phantom set in ``WORK/tree`` (IXI-sized heads, or 4 mm ones when ``coarse``) and the
    phantom-space volume of each head in ``WORK/phantom`` (both kept when there)."""
    from tfvae_datasets import testing_trees as tt
    from tfvae_datasets.brain_phantom import phantom

    tree = os.path.join(work, "tree")
    names = tt.raw_phantom_tree(tree, cases, first_seed=first_seed, coarse=coarse, log=log)
    out = []
    for name in names:
        paths = tt.raw_phantom_paths(tree, name)
        with open(paths["truth"], encoding="utf-8") as f:
            truth = json.load(f)
        folder = os.path.join(work, "phantom")
        case = Case(name, int(truth["seed"]), paths["t2"], paths["seg"], paths["brainmask"], truth,
                    os.path.join(folder, f"{name}_t2.nii.gz"), os.path.join(folder, f"{name}_seg.nii.gz"),
                    os.path.join(folder, f"{name}_t2_mask.nii.gz"))
        if not all(os.path.isfile(p) for p in (case.phantom, case.phantom_seg, case.phantom_mask)):
            os.makedirs(folder, exist_ok=True)
            subject = phantom.synthesize_subject(case.seed, tumours=True, voxel_mm=float(truth["brain_voxel_mm"]))
            affine = np.asarray(subject.affine, np.float64)
            _save(case.phantom_mask, subject.brain_mask.astype(np.uint8), affine)
            _save(case.phantom_seg, subject.label.astype(np.uint8), affine)
            _save(case.phantom, subject.image.astype(np.float32), affine)
            log(f"{name}: phantom-space volume {subject.image.shape} at {truth['brain_voxel_mm']:g} mm")
        out.append(case)
    return out


def preprocess(work: str, cases: list[Case], workers: int = 1, log=print) -> dict:
    """``tfvae preprocess`` of the raw heads into ``WORK/preprocessing`` (reused when done with these
    settings); {case name: ScanOutcome}."""
    from tfvae import head_preprocessing as hp

    folder = os.path.join(work, "preprocessing")
    outcomes = hp.preprocess_scans([c.raw for c in cases], folder, hp.Settings(), workers=workers, reuse=True,
                                   log=log)
    return {c.name: o for c, o in zip(cases, outcomes)}


def run_name(run_dir: str) -> str:
    return os.path.basename(os.path.normpath(run_dir))


def localize_run(work: str, run_dir: str, cases: list[Case], outcomes: dict, *, options=(), log=print) -> dict:
    """``tfvae localize`` of ``run_dir`` (with ``options``: none, i.e. the recommended map at 1 % FPR,
    by default) on (a) the phantom-space volumes and (b) the raw heads with ``--preprocess`` (their
    preprocessing copied in first); {"a": folder, "b": folder, "rc": {"a": exit status, "b": ...}}."""
    from tfvae import head_preprocessing as hp
    from tfvae.commands import localize

    name = run_name(run_dir)
    out_a, out_b = os.path.join(work, name, "preprocessed"), os.path.join(work, name, "raw")
    rc = {"a": localize.main(["--run-dir", run_dir, *[c.phantom for c in cases], "--out", out_a, *options])}
    os.makedirs(out_b, exist_ok=True)
    raw = []
    for case in cases:
        outcome = outcomes.get(case.name)
        if outcome is None or outcome.status not in ("ok", "reused"):
            log(f"{case.name}: preprocessing failed ({getattr(outcome, 'reason', None)}), not localized raw")
            continue
        for key, path in hp.output_paths(case.raw, out_b).items():
            if not os.path.isfile(path):
                shutil.copy2(outcome.paths[key], path)
        raw.append(case.raw)
    rc["b"] = localize.main(["--run-dir", run_dir, *raw, "--out", out_b, "--preprocess", *options]) if raw else None
    return {"a": out_a, "b": out_b, "rc": rc}


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum() + b.sum())
    return float(2.0 * (a & b).sum() / total) if total else float("nan")


def _load(path: str) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def map_figures(score: np.ndarray, mask: np.ndarray, brain: np.ndarray, label: np.ndarray) -> dict:
    """AUROC of ``score`` inside ``brain`` against ``label > 0``, Dice of ``mask`` against it, the
    share of the healthy brain flagged, the volumes (voxels)."""
    from sklearn.metrics import roc_auc_score

    tumour = label > 0
    inside = brain > 0
    flagged = mask > 0
    return {"auroc": float(roc_auc_score(tumour[inside], score[inside])), "dice": dice(flagged, tumour),
            "healthy_flagged": float(flagged[inside & ~tumour].mean()),
            "tumour_voxels": int(tumour.sum()), "flagged_voxels": int(flagged.sum()),
            "tumour_outside_brain": int((tumour & ~inside).sum())}


def measure(case: Case, out_a: str, out_b: str) -> dict:
    """The figures of one case from localize's outputs (a) and (b) and the truth (None where missing)."""
    from tfvae.localization import OUTPUT_TAG, stem

    row = {"case": case.name, "seed": case.seed, "tumour_ml": case.truth["tumour_ml"],
           "brain_ml": case.truth["brain_ml"], "pose": case.truth["pose"]}
    name_a, name_b = stem(case.phantom), stem(case.raw)
    score_a = os.path.join(out_a, f"{name_a}{OUTPUT_TAG}score.nii.gz")
    if os.path.isfile(os.path.join(out_a, f"{name_a}{OUTPUT_TAG}record.json")) and os.path.isfile(score_a):
        row["a"] = map_figures(_load(score_a), _load(os.path.join(out_a, f"{name_a}{OUTPUT_TAG}mask.nii.gz")),
                               _load(case.phantom_mask), _load(case.phantom_seg))
    score_b = os.path.join(out_b, f"{name_b}{OUTPUT_TAG}score.nii.gz")
    if os.path.isfile(os.path.join(out_b, f"{name_b}{OUTPUT_TAG}record.json")) and os.path.isfile(score_b):
        true_brain = _load(case.brainmask)
        row["b"] = map_figures(_load(score_b), _load(os.path.join(out_b, f"{name_b}{OUTPUT_TAG}mask.nii.gz")),
                               true_brain, _load(case.seg))
        estimated = _load(os.path.join(out_b, f"{name_b}{OUTPUT_TAG}brainmask.nii.gz"))
        row["b"]["brain_dice"] = dice(estimated > 0, true_brain > 0)
        row["b"]["tumour_in_brainmask"] = float((estimated > 0)[_load(case.seg) > 0].mean())
        with open(os.path.join(out_b, f"{name_b}{OUTPUT_TAG}record.json"), encoding="utf-8") as f:
            record = json.load(f)
        row["b"]["preprocessed"] = record.get("row", {}).get("preprocessed")
    for side, out, name in (("a", out_a, name_a), ("b", out_b, name_b)):
        if side in row:
            with open(os.path.join(out, f"{name}{OUTPUT_TAG}record.json"), encoding="utf-8") as f:
                record_row = json.load(f).get("row", {})
            row[side]["threshold"] = _number(record_row.get("threshold"))
    if "a" in row and "b" in row:
        row["diff"] = {m: row["b"][m] - row["a"][m] for m in METRICS}
    return row


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def paired(values) -> dict:
    """Mean, standard deviation, range and a 95 % t interval of the mean of ``values``."""
    from scipy import stats

    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], np.float64)
    if not len(v):
        return {"n": 0}
    out = {"n": int(len(v)), "mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}
    if len(v) > 1:
        sd = float(v.std(ddof=1))
        half = float(stats.t.ppf(0.975, len(v) - 1) * sd / math.sqrt(len(v)))
        out.update(sd=sd, ci95=[out["mean"] - half, out["mean"] + half])
    return out


def summarize(rows: list[dict]) -> dict:
    """Means of (a) and (b), the paired differences (b - a), and whether each is within ``TARGET``:
    met when the 95 % interval of the mean difference lies within +-TARGET, "on the mean" when
    only the mean does, else not."""
    both = [r for r in rows if "diff" in r]
    out = {"n_paired": len(both)}
    for m in METRICS:
        d = paired(r["diff"][m] for r in both)
        verdict = "no pairs"
        if d["n"]:
            ci = d.get("ci95", [d["mean"], d["mean"]])
            verdict = ("met" if -TARGET <= ci[0] and ci[1] <= TARGET
                       else "met on the mean only" if abs(d["mean"]) <= TARGET else "not met")
        out[m] = {"a": paired(r["a"][m] for r in both), "b": paired(r["b"][m] for r in both), "diff": d,
                  "worst_abs_diff": max((abs(r["diff"][m]) for r in both), default=None), "target": verdict}
    out["brain_dice"] = paired(r["b"]["brain_dice"] for r in rows if "b" in r)
    return out


def _f(value, width: int, digits: int = 3, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-".rjust(width)
    return f"{value:+.{digits}f}".rjust(width) if signed else f"{value:.{digits}f}".rjust(width)


def table(rows: list[dict], summary: dict) -> str:
    """Per scan and mean, at most 80 columns: AUROC and Dice of (a) and (b), their difference, and
    (b)'s brain-mask Dice."""
    head = (f"{'seed':>5} {'tumour':>7} {'brain':>6} | {'AUROC':>6} {'AUROC':>6} {'':>7} | "
            f"{'Dice@':>6} {'Dice@':>6} {'':>7}")
    head2 = (f"{'':>5} {'ml':>7} {'Dice b':>6} | {'a':>6} {'b':>6} {'b - a':>7} | "
             f"{'1% a':>6} {'1% b':>6} {'b - a':>7}")
    lines = [head, head2, "-" * len(head)]
    for r in rows:
        a, b, d = r.get("a", {}), r.get("b", {}), r.get("diff", {})
        lines.append(f"{r['seed']:>5} {r['tumour_ml']:>7.1f} {_f(b.get('brain_dice'), 6)} | "
                     f"{_f(a.get('auroc'), 6)} {_f(b.get('auroc'), 6)} {_f(d.get('auroc'), 7, signed=True)} | "
                     f"{_f(a.get('dice'), 6)} {_f(b.get('dice'), 6)} {_f(d.get('dice'), 7, signed=True)}")
    lines.append("-" * len(head))
    s = summary
    lines.append(f"{'mean':>5} {'':>7} {_f(s['brain_dice'].get('mean'), 6)} | "
                 f"{_f(s['auroc']['a'].get('mean'), 6)} {_f(s['auroc']['b'].get('mean'), 6)} "
                 f"{_f(s['auroc']['diff'].get('mean'), 7, signed=True)} | "
                 f"{_f(s['dice']['a'].get('mean'), 6)} {_f(s['dice']['b'].get('mean'), 6)} "
                 f"{_f(s['dice']['diff'].get('mean'), 7, signed=True)}")
    lines.append(f"{'sd':>5} {'':>7} {_f(s['brain_dice'].get('sd'), 6)} | "
                 f"{_f(s['auroc']['a'].get('sd'), 6)} {_f(s['auroc']['b'].get('sd'), 6)} "
                 f"{_f(s['auroc']['diff'].get('sd'), 7)} | "
                 f"{_f(s['dice']['a'].get('sd'), 6)} {_f(s['dice']['b'].get('sd'), 6)} "
                 f"{_f(s['dice']['diff'].get('sd'), 7)}")
    for m, label in (("auroc", "AUROC"), ("dice", "Dice@1%")):
        d = s[m]["diff"]
        if d.get("n"):
            ci = d.get("ci95")
            interval = f"95% CI [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "one pair"
            lines.append(f"{label} (b - a): mean {d['mean']:+.3f}, {interval}")
            lines.append(f"  worst |b - a| {s[m]['worst_abs_diff']:.3f}; target +-{TARGET:g}: {s[m]['target']}")
    return "\n".join(lines)


def report(record: dict, evidence: str) -> str:
    """A markdown section of the figures of ``record`` (what ``scripts/raw_study.py`` writes to its
    JSON, ``evidence`` the JSON's path from the report): each run's table and its paired verdicts."""
    git = record["git"]
    lines = ["", "## Raw heads against the same brains already preprocessed", "",
             f"`{record['command']}` (evidence: [{os.path.basename(evidence)}]({evidence}), commit "
             f"{(git.get('commit') or '?')[:7]}{' with uncommitted ' + ', '.join(git['dirty']) if git.get('dirty') else ''}"
             f", {record['started'][:10]}, {record['wall_s'] / 60:.0f} min at load {record['machine']['load_average'][0]:g} "
             f"on {record['machine']['cpus']} CPUs). Held-out raw phantom heads, seeds "
             f"{min(record['seeds'])}-{max(record['seeds'])}, each with tumours; (a) the phantom subject behind the head "
             "as a skull-stripped volume in phantom space with its true brain mask, (b) the raw head through "
             "`localize --preprocess`. Recommended map, the mask at the run's 1 % FPR threshold "
             "(calibrated on its validation slices, moved per scan as `threshold.mode` says). AUROC inside "
             "the true brain, Dice of the mask against the tumour labels ((b) in the raw grid).", ""]
    for name, result in record["results"].items():
        s = result["summary"]
        lines += [f"Run `{name}`:", "", "```", result["table"], "```", ""]
        for m, label in (("auroc", "AUROC"), ("dice", "Dice@1%")):
            d = s[m]["diff"]
            if d.get("n"):
                lines.append(f"- {label}: (b) - (a) mean {d['mean']:+.3f} (sd {d.get('sd', float('nan')):.3f}, "
                             f"range {d['min']:+.3f} to {d['max']:+.3f}, n {d['n']}): target +-{TARGET:g} "
                             f"**{s[m]['target']}**")
        lines.append("")
    return "\n".join(lines)
