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
import time

import nibabel as nib
import numpy as np

METRICS = ("auroc", "dice")  # the target's figures, paired (b - a)
EXTRA_METRICS = ("dice_calibrated", "best_dice")  # beside them: the threshold's share of a difference
TARGET = 0.02
MIN_BRAIN_DICE = 0.95  # issue 32's target for the preprocessing's brain mask


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

    @property
    def truth_voxel_ml(self) -> float:
        """The raw grid's voxel volume (ml)."""
        return float(abs(np.linalg.det(np.asarray(self.truth["affine"])[:3, :3])) / 1000.0)


def prepare(work: str, cases: int, first_seed: int, *, coarse: bool = False, log=print) -> list[Case]:
    """The raw phantom set in ``WORK/tree`` (IXI-sized heads, or 4 mm ones when ``coarse``) and the
    phantom-space volume of each head in ``WORK/phantom`` (both kept when there)."""
    from tfvae.data import nifti
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
            nifti.write_scan(case.phantom_mask, subject.brain_mask.astype(np.uint8), affine)
            nifti.write_scan(case.phantom_seg, subject.label.astype(np.uint8), affine)
            nifti.write_scan(case.phantom, subject.image.astype(np.float32), affine)
            log(f"{name}: phantom-space volume {subject.image.shape} at {truth['brain_voxel_mm']:g} mm")
        out.append(case)
    return out


def with_defaults(overrides: dict):
    """A ``head_preprocessing.Settings`` class whose defaults are ``overrides`` (what ``Settings()``
    gives once it replaces ``head_preprocessing.Settings``: how the study runs ``localize
    --preprocess`` with other preprocessing settings; the records name them)."""
    from tfvae.data import head_preprocessing as hp

    base = hp.Settings
    known = {f.name: f for f in dataclasses.fields(base)}
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ValueError(f"no preprocessing setting {', '.join(unknown)} (known: {', '.join(known)})")
    fields = [(k, known[k].type, dataclasses.field(default=tuple(v) if isinstance(v, list) else v))
              for k, v in overrides.items()]
    return dataclasses.make_dataclass("StudySettings", fields, bases=(base,), frozen=True)


def suffix(tag: str | None) -> str:
    return f"-{tag}" if tag else ""


def preprocess(work: str, cases: list[Case], workers: int = 1, *, tag: str | None = None, log=print) -> dict:
    """``tfvae preprocess`` of the raw heads into ``WORK/preprocessing[-tag]`` (reused when done with
    these settings); {case name: ScanOutcome}."""
    from tfvae.data import head_preprocessing as hp

    folder = os.path.join(work, "preprocessing" + suffix(tag))
    outcomes = hp.preprocess_scans([c.raw for c in cases], folder, hp.Settings(), workers=workers, reuse=True,
                                   log=log)
    return {c.name: o for c, o in zip(cases, outcomes)}


def run_name(run_dir: str) -> str:
    return os.path.basename(os.path.normpath(run_dir))


def localize_run(work: str, run_dir: str, cases: list[Case], outcomes: dict, *, localize, options=(),
                 tag: str | None = None, log=print) -> dict:
    """``tfvae localize`` of ``run_dir`` (with ``options``: none, i.e. the recommended map at 1 % FPR,
    by default) on (a) the phantom-space volumes and (b) the raw heads with ``--preprocess`` (their
    preprocessing copied in first; into WORK/<run>/raw[-tag]); {"a": folder, "b": folder, "rc": {"a": exit
    status, "b": ...}}. ``localize``: the command itself, ``tfvae.commands.localize.main`` (a list of
    arguments -> exit status), given by the caller: a study sits below the commands it measures."""
    from tfvae.data import head_preprocessing as hp

    name = run_name(run_dir)
    out_a, out_b = os.path.join(work, name, "preprocessed"), os.path.join(work, name, "raw" + suffix(tag))
    rc = {"a": localize(["--run-dir", run_dir, *[c.phantom for c in cases], "--out", out_a, *options])}
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
    rc["b"] = localize(["--run-dir", run_dir, *raw, "--out", out_b, "--preprocess", *options]) if raw else None
    return {"a": out_a, "b": out_b, "rc": rc}


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum() + b.sum())
    return float(2.0 * (a & b).sum() / total) if total else float("nan")


def _load(path: str) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def best_dice(score: np.ndarray, tumour: np.ndarray, steps: int = 200) -> float:
    """The best Dice of ``score >= t`` against ``tumour`` over ``steps`` thresholds between the
    score's 80th percentile and its maximum (1-D arrays: the brain's voxels)."""
    top = np.sort(score[score >= np.percentile(score, 80)])[::-1]  # descending
    hits = np.cumsum(tumour[np.argsort(-score, kind="stable")][:len(top)])
    counts = np.unique(np.linspace(1, len(top), steps).astype(int))
    return float(np.max(2.0 * hits[counts - 1] / (counts + tumour.sum())))


def map_figures(score: np.ndarray, mask: np.ndarray, brain: np.ndarray, label: np.ndarray,
                calibrated: float | None = None) -> dict:
    """AUROC of ``score`` inside ``brain`` against ``label > 0``, Dice of ``mask`` against it, the
    share of the healthy brain flagged, the volumes (voxels); beside them, to tell the threshold's
    part from the map's: ``dice_calibrated``, the Dice of the score cut at the run's ``calibrated``
    threshold as it is (not moved per scan; no component filter), and ``best_dice``, the best Dice
    any one threshold reaches on this scan (``best_dice``)."""
    from sklearn.metrics import roc_auc_score

    tumour = label > 0
    inside = brain > 0
    flagged = mask > 0
    out = {"auroc": float(roc_auc_score(tumour[inside], score[inside])), "dice": dice(flagged, tumour),
           "healthy_flagged": float(flagged[inside & ~tumour].mean()),
           "tumour_voxels": int(tumour.sum()), "flagged_voxels": int(flagged.sum()),
           "tumour_outside_brain": int((tumour & ~inside).sum()),
           "best_dice": best_dice(score[inside], tumour[inside])}
    if calibrated is not None:
        out["dice_calibrated"] = dice((score >= calibrated) & inside, tumour)
    return out


def _record_row(out: str, name: str) -> dict | None:
    """The summary row of a scan's localize record when it is done and its score is there."""
    from tfvae.evaluation.localization import OUTPUT_TAG

    path = os.path.join(out, f"{name}{OUTPUT_TAG}record.json")
    if not (os.path.isfile(path) and os.path.isfile(os.path.join(out, f"{name}{OUTPUT_TAG}score.nii.gz"))):
        return None
    with open(path, encoding="utf-8") as f:
        row = json.load(f).get("row", {})
    return row if row.get("status") == "done" else None


def measure(case: Case, out_a: str, out_b: str) -> dict:
    """The figures of one case from localize's outputs (a) and (b) and the truth (a side missing
    where its scan is not done)."""
    from tfvae.evaluation.localization import OUTPUT_TAG, stem

    row = {"case": case.name, "seed": case.seed, "tumour_ml": case.truth["tumour_ml"],
           "brain_ml": case.truth["brain_ml"], "pose": case.truth["pose"]}
    for side, out, name, brain, label in (("a", out_a, stem(case.phantom), case.phantom_mask, case.phantom_seg),
                                          ("b", out_b, stem(case.raw), case.brainmask, case.seg)):
        record = _record_row(out, name)
        if record is None:
            continue
        figures = map_figures(_load(os.path.join(out, f"{name}{OUTPUT_TAG}score.nii.gz")),
                              _load(os.path.join(out, f"{name}{OUTPUT_TAG}mask.nii.gz")), _load(brain), _load(label),
                              calibrated=_number(record.get("calibrated_threshold")))
        figures.update(threshold=_number(record.get("threshold")),
                       calibrated_threshold=_number(record.get("calibrated_threshold")))
        if side == "b":
            true_brain, estimated = _load(brain) > 0, _load(os.path.join(out, f"{name}{OUTPUT_TAG}brainmask.nii.gz")) > 0
            figures.update(brain_dice=dice(estimated, true_brain),
                           brain_ml_estimated=float(estimated.sum()) * case.truth_voxel_ml,
                           tumour_in_brainmask=float(estimated[_load(label) > 0].mean()),
                           preprocessed=record.get("preprocessed"))
            made = os.path.join(out, f"{name}_tfvae_preprocessing.json")  # when the preprocessing ran, and how long
            if os.path.isfile(made):
                with open(made, encoding="utf-8") as f:
                    times = json.load(f)
                figures.update(preprocessing_s=(times.get("times_s") or {}).get("total_s"),
                               preprocessing_cpu_s=(times.get("cpu_s") or {}).get("total_s"),
                               preprocessing_made=time.strftime("%Y-%m-%d %H:%M", time.gmtime(os.path.getmtime(made))))
        row[side] = figures
    if "a" in row and "b" in row:
        row["diff"] = {m: row["b"][m] - row["a"][m] for m in METRICS + EXTRA_METRICS
                       if m in row["a"] and m in row["b"]}
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
    for m in EXTRA_METRICS:
        pairs = [r for r in both if m in r["diff"]]
        out[m] = {"a": paired(r["a"][m] for r in pairs), "b": paired(r["b"][m] for r in pairs),
                  "diff": paired(r["diff"][m] for r in pairs)}
    for m in METRICS:
        d = paired(r["diff"][m] for r in both)
        verdict = "no pairs"
        if d["n"]:
            ci = d.get("ci95")
            verdict = ("met" if ci and -TARGET <= ci[0] and ci[1] <= TARGET
                       else "met on the mean only" if abs(d["mean"]) <= TARGET else "not met")
        out[m] = {"a": paired(r["a"][m] for r in both), "b": paired(r["b"][m] for r in both), "diff": d,
                  "worst_abs_diff": max((abs(r["diff"][m]) for r in both), default=None), "target": verdict}
    out["brain_dice"] = paired(r["b"]["brain_dice"] for r in rows if "b" in r)
    return out


def _f(value, width: int, digits: int = 3, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-".rjust(width)
    return f"{value:+.{digits}f}".rjust(width) if signed else f"{value:.{digits}f}".rjust(width)


def groups(rows: list[dict]) -> dict:
    """``summarize`` of every head ("all") and of the heads whose brain mask the preprocessing got
    right (Dice >= ``MIN_BRAIN_DICE``, issue 32's own target for it: "brain_ok")."""
    ok = [r for r in rows if (r.get("b", {}).get("brain_dice") or 0.0) >= MIN_BRAIN_DICE]
    return {"all": summarize(rows), "brain_ok": {**summarize(ok), "seeds": [r["seed"] for r in ok]}}


def _mean_lines(label: str, s: dict) -> list[str]:
    return [f"{label:>5} {'':>7} {_f(s['brain_dice'].get(key), 6)} | "
            f"{_f(s['auroc']['a'].get(key), 6)} {_f(s['auroc']['b'].get(key), 6)} "
            f"{_f(s['auroc']['diff'].get(key), 7, signed=key == 'mean')} | "
            f"{_f(s['dice']['a'].get(key), 6)} {_f(s['dice']['b'].get(key), 6)} "
            f"{_f(s['dice']['diff'].get(key), 7, signed=key == 'mean')}"
            for key, label in ((("mean", label), ("sd", "sd")))]


def _verdict_lines(title: str, s: dict) -> list[str]:
    lines = [title]
    for m, label in (("auroc", "AUROC"), ("dice", "Dice@1%")):
        d = s[m]["diff"]
        if d.get("n"):
            ci = d.get("ci95")
            interval = f"95% CI [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "one pair"
            lines.append(f"  {label} b - a: mean {d['mean']:+.3f}, {interval}, worst {s[m]['worst_abs_diff']:.3f}")
            lines.append(f"    target +-{TARGET:g}: {s[m]['target']}")
    return lines


def table(rows: list[dict], summaries: dict) -> str:
    """Per scan and mean (of all heads, and of those with brain Dice >= ``MIN_BRAIN_DICE``), at most
    80 columns: AUROC and Dice@1% of (a) and (b), their difference, and (b)'s brain-mask Dice."""
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
    every, ok = summaries["all"], summaries["brain_ok"]
    lines += _mean_lines("mean", every)
    if 0 < ok["n_paired"] < every["n_paired"]:
        lines += _mean_lines("ok", ok)
    lines += _verdict_lines(f"all {every['n_paired']} heads:", every)
    if 0 < ok["n_paired"] < every["n_paired"]:
        lines += _verdict_lines(f"ok: the {ok['n_paired']} heads with brain Dice >= {MIN_BRAIN_DICE:g}:", ok)
    return "\n".join(lines)


def threshold_table(rows: list[dict]) -> str:
    """The threshold's part (80 columns): Dice@1% as localize writes it (its threshold moved per
    scan), the score cut at the run's calibrated threshold, and the best any threshold reaches."""
    head = f"{'':>5} | {'Dice@1% (written)':^22} | {'calibrated threshold':^22} | {'best threshold':^22}"
    head2 = (f"{'seed':>5} | {'a':>6} {'b':>6} {'b - a':>8} | {'a':>6} {'b':>6} {'b - a':>8} | "
             f"{'a':>6} {'b':>6} {'b - a':>8}")
    lines = [head, head2, "-" * len(head2)]
    for r in rows:
        a, b, d = r.get("a", {}), r.get("b", {}), r.get("diff", {})
        lines.append(f"{r['seed']:>5} | {_f(a.get('dice'), 6)} {_f(b.get('dice'), 6)} "
                     f"{_f(d.get('dice'), 8, signed=True)} | {_f(a.get('dice_calibrated'), 6)} "
                     f"{_f(b.get('dice_calibrated'), 6)} {_f(d.get('dice_calibrated'), 8, signed=True)} | "
                     f"{_f(a.get('best_dice'), 6)} {_f(b.get('best_dice'), 6)} {_f(d.get('best_dice'), 8, signed=True)}")
    return "\n".join(lines)
