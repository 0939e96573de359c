"""The per-scan threshold's design study (issue 30): every test scan's brain scores dumped once,
then threshold rules compared offline on them -- no rule is judged by re-running a model.

- ``dump_maps``: a trained run's maps (``recommended`` by default) of every volume of one test set
  -- brain pixels only, with their labels and whether each lies far from a lesion
  (``evaluation.far_from_lesions``) -- and the healthy reference of the run's validation split at
  ``DENSE_FPRS``, into one ``.npz`` per (run, test set).
- ``lesion_share_volumes``: healthy phantom subjects of a site with one lesion covering 0-40 % of
  the brain (``phantom.synthesize_subject(lesion_share=...)``), sliced as the builder slices.
- ``measure``: a rule's threshold on every scan of a dump, and what it gives there -- the FPR on the
  scan's healthy brain pixels (label 0), its Dice, the share of the lesion found.

Used by ``scripts/threshold_study.py``; its JSON is ``docs/threshold_study.json``.
"""

from __future__ import annotations

import os

import numpy as np

from tfvae.thresholds import scan_threshold

# the healthy reference's quantiles kept for the study: every half per cent, and the stored tail
DENSE_FPRS = tuple(sorted({round(float(x), 4) for x in np.linspace(0.005, 0.995, 199)}
                          | set(scan_threshold.REFERENCE_FPRS) | {0.01, 0.05}, reverse=True))
SHARES = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4)
# what ``scripts/threshold_study.py`` (and ``tfvae reproduce --all``) dumps: the design test sets, the
# sites of the lesion-share sweep, the held-out sets (opened once, after the rule was fixed) and the
# small lesions of the screening study
DESIGN_SETS = ("default", "thick_slices", "contrast", "bias", "noise", "resolution", "hypointense", "atrophy",
               "combined", "large_lesions")
SHARE_SITES = ("default", "bias")
SHARE_SUBJECTS = 4
HELD_OUT_SETS = ("heldout_home", "heldout_large", "heldout_site")
HELD_OUT_SHARE_SITES = ("heldout_home", "heldout_site")
SCREENING_SHARES = (0.0, 0.005, 0.01, 0.02)  # small lesions in a healthy set (--screening)


def lesion_share_volumes(site: str, subjects: int, shares=SHARES, image_size: int = 64):
    """``(share, Volume)`` for each of ``subjects`` healthy validation subjects of the phantom's
    ``site`` config and each share of ``shares``: the subject with one lesion covering that share of
    its brain, sliced as the builder slices (``preprocessing.volume_to_slices``)."""
    from tfvae.data import preprocessing
    from tfvae.maps.scoring import Volume
    from tfvae_datasets.brain_phantom import brain_phantom_dataset_builder as builder_lib
    from tfvae_datasets.brain_phantom import phantom

    cfg = builder_lib.Builder.builder_configs[site]
    for i in range(subjects):
        seed = builder_lib.subject_seed(cfg.split_seed("validation"), "validation", i)
        for share in shares:
            subject = phantom.synthesize_subject(seed, tumours=False, voxel_mm=cfg.voxel_mm, shift=cfg.shift,
                                                 lesion_share=share)
            sliced = preprocessing.volume_to_slices(
                subject.image, subject.affine, mask=subject.brain_mask, label=subject.label,
                image_size=image_size, fov_mm=cfg.fov_mm, min_brain_fraction=cfg.min_brain_fraction)
            yield share, Volume(f"{site}_{i:02d}_share{share:g}", sliced.image, sliced.label, sliced.brain_mask,
                                sliced.slice_index, sliced.geometry)


def _brain_arrays(volume, score) -> dict:
    from tfvae.evaluation.evaluate import far_from_lesions

    brain = volume.brain_mask[..., 0] > 0
    far = far_from_lesions(volume.label[..., 0], volume.geometry.voxel_mm())
    return {"score": np.asarray(score[..., 0][brain], np.float32), "lesion": volume.label[..., 0][brain] > 0,
            "far": far[brain]}


def dump_maps(run_dir: str, test_set: str | None, out_path: str, *, predictor: str = "recommended",
              volumes=None, verbose: bool = False) -> str:
    """Score every volume of the phantom's ``test_set`` (None with ``volumes``: those ``(name,
    Volume)`` pairs instead) with the run's ``predictor`` and write ``out_path`` (.npz, whole):
    ``score``, ``lesion``, ``far`` (brain pixels of all volumes, concatenated), ``offsets`` (each
    volume's start; one more at the end), ``names`` and ``reference`` (thresholds at
    ``DENSE_FPRS`` of the run's healthy validation brain pixels)."""
    from tfvae.thresholds import calibration
    from tfvae import config as config_lib
    from tfvae.evaluation.evaluate import run_inputs, stored_calibration
    from tfvae.runs.run import Run
    from tfvae.maps.scoring import Scorer

    run = Run(run_dir)
    config = run.config()
    if test_set is not None:
        config = config_lib.resolve(config, ["data.test_name=null", f"data.test_config={test_set}"])
    model, test, validation = run_inputs(run, config)
    scorer = Scorer(model, config, [predictor])
    scorer.fit(validation, stored=stored_calibration(run, config, "final")["reference"], verbose=verbose)
    reference = calibration.calibrate(scorer, validation, [predictor], config["postprocess"],
                                      fprs=DENSE_FPRS)["raw"][predictor]
    scorer.release()
    from tfvae.maps.scoring import volumes as split_volumes

    pairs = volumes if volumes is not None else ((v.volume_id, v) for v in split_volumes(test))
    parts, names = [], []
    for name, volume in pairs:
        maps = scorer(volume.image, volume.brain_mask, volume.geometry.voxel_mm())
        parts.append(_brain_arrays(volume, maps[predictor]))
        names.append(name)
    return write_dump(out_path, parts, names, sorted(reference), [reference[r] for r in sorted(reference)],
                      model_digest=run.model_digest())


def write_dump(out_path: str, parts: list[dict], names, reference_fprs, reference, **extra) -> str:
    """A dump (.npz, written whole; its folder made): the volumes' ``parts`` (``_brain_arrays``)
    concatenated with their ``offsets``, their ``names``, the healthy ``reference`` thresholds at
    ``reference_fprs`` (what ``Dump`` reads), and ``extra`` arrays beside them."""
    from tfvae.utils import files

    offsets = np.cumsum([0] + [len(p["score"]) for p in parts])
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with files.written_whole(out_path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **{k: np.concatenate([p[k] for p in parts]) for k in ("score", "lesion", "far")},
                                offsets=offsets, names=np.array(names), reference_fprs=np.array(reference_fprs),
                                reference=np.array(reference), **extra)
    return out_path


def reusable(path: str, run_dir: str) -> bool:
    """Whether the dump at ``path`` can stand for ``run_dir``'s model: it exists and was made by that
    model (the ``model_digest`` it records is ``Run.model_digest()``); dumps made before the digest
    was recorded are kept, as they were. A dump of another model -- another run of the same folder
    name, or the run retrained since -- is made again."""
    from tfvae.runs.run import Run

    if not os.path.isfile(path):
        return False
    with np.load(path) as d:
        recorded = str(d["model_digest"]) if "model_digest" in d.files else None
    return recorded is None or recorded == Run(run_dir).model_digest()


def dump_sets(runs, out: str, sets=(), share_sites=(), *, shares=SHARES, share_subjects: int = SHARE_SUBJECTS,
              log=None) -> list[str]:
    """``dump_maps`` of each run (``OUT/<run folder's name>/``) on every test set of ``sets``
    (``<set>.npz``) and on the lesion-share sweep of each site of ``share_sites``
    (``shares_<site>.npz``: ``share_subjects`` healthy subjects with one lesion of each share of
    ``shares``, at the run's image size); a dump already there is kept when the same model made it
    (``reusable``). Returns the paths."""
    from tfvae.runs.run import Run

    paths = []
    for run_dir in runs:
        folder = os.path.join(out, os.path.basename(os.path.normpath(run_dir)))
        for test_set in sets:
            path = os.path.join(folder, f"{test_set}.npz")
            if not reusable(path, run_dir):
                dump_maps(run_dir, test_set, path)
            paths.append(path)
            if log:
                log(path)
        for site in share_sites:
            path = os.path.join(folder, f"shares_{site}.npz")
            if not reusable(path, run_dir):
                size = Run(run_dir).config()["data"]["image_size"]
                volumes = lesion_share_volumes(site, share_subjects, shares, image_size=size)
                dump_maps(run_dir, None, path, volumes=((v.volume_id, v) for _, v in volumes))
            paths.append(path)
            if log:
                log(path)
    return paths


class Dump:
    """A dump written by ``dump_maps``: ``volumes()`` yields (name, score, lesion, far) per volume."""

    def __init__(self, path: str):
        with np.load(path) as z:
            self.__dict__.update({k: z[k] for k in z.files})
        self.path = path

    def reference_thresholds(self) -> dict:
        return {float(f): float(t) for f, t in zip(self.reference_fprs, self.reference)}

    def volumes(self):
        for i, name in enumerate(self.names):
            a, b = self.offsets[i], self.offsets[i + 1]
            yield str(name), self.score[a:b], self.lesion[a:b], self.far[a:b]


def measure(dump: Dump, rule, fpr: float = 0.01) -> list[dict]:
    """Per volume: the threshold ``rule(reference thresholds, scores, fpr)`` gives, and at it the
    FPR on the healthy brain pixels, the same far from lesions, the Dice, the share of lesion
    pixels found (sensitivity) and the lesion share of the brain."""
    reference = dump.reference_thresholds()
    rows = []
    for name, score, lesion, far in dump.volumes():
        t = float(rule(reference, score, fpr))
        flagged = score >= t
        healthy = ~lesion
        tp = int(np.sum(flagged & lesion))
        n_lesion, n_flagged = int(lesion.sum()), int(flagged.sum())
        rows.append({"name": name, "threshold": t, "fpr": float(np.mean(flagged[healthy])) if healthy.any() else np.nan,
                     "fpr_far": float(np.mean(flagged[healthy & far])) if (healthy & far).any() else np.nan,
                     "dice": 2 * tp / (n_lesion + n_flagged) if n_lesion else np.nan,
                     "sensitivity": tp / n_lesion if n_lesion else np.nan,
                     "lesion_share": n_lesion / len(score), "healthy_pixels": int(healthy.sum()),
                     "false_positives": int(np.sum(flagged & healthy))})
    return rows


def best_dice(dump: Dump) -> float:
    """The best mean Dice over one threshold for all volumes (brain pixels, volumes with lesions):
    over the scores' 0.5-99.9 % quantiles of the pooled brain pixels, 400 candidates."""
    candidates = np.quantile(dump.score, np.linspace(0.5, 0.999, 400))
    vols = [(s, l) for _, s, l, _ in dump.volumes() if l.any()]
    best = 0.0
    for t in candidates:
        d = np.mean([2 * np.sum((s >= t) & l) / (l.sum() + np.sum(s >= t)) for s, l in vols])
        best = max(best, float(d))
    return best


def dice_curve(score: np.ndarray, lesion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every threshold one volume can be cut at, exactly: ``(dice, false_positives)``, one entry per
    distinct score (flagging the pixels at or above it), first the empty cut (nothing flagged, Dice 0).
    ``score`` (n,) float, ``lesion`` (n,) bool; Dice = 2 TP / (lesion pixels + flagged pixels).
    Ties are cut together (a threshold cannot split equal scores)."""
    order = np.argsort(-np.asarray(score, np.float64), kind="stable")
    s, les = np.asarray(score)[order], np.asarray(lesion, bool)[order]
    tp, fp = np.cumsum(les), np.cumsum(~les)
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # last index of each run of equal scores
    flagged = ends + 1
    n_lesion = int(les.sum())
    dice = 2.0 * tp[ends] / (n_lesion + flagged)
    return np.r_[0.0, dice], np.r_[0, fp[ends]].astype(np.int64)


def dice_bound(dump: Dump, pooled_fpr: float = 0.02, volume_fpr: float = 0.03, lambdas: int = 600) -> dict:
    """How much Dice *any* threshold rule can reach on a dump's maps while its FPR stays in bounds:
    each volume cut at the threshold of its own that an oracle (the labels) would choose, such that
    the pooled FPR over the healthy brain pixels is <= ``pooled_fpr`` and no volume's FPR exceeds
    ``volume_fpr`` (so its 90th percentile cannot either). A per-scan rule is one such choice, so
    none can do better than this bound with those FPRs.

    Maximise mean Dice (volumes with lesions) s.t. sum FP <= pooled_fpr * sum healthy, per volume
    FP_v <= volume_fpr * healthy_v, over every cut of ``dice_curve``. Lagrangian dual (e.g. Boyd &
    Vandenberghe, Convex Optimization, 5.1): for any lambda >= 0, max_cuts sum_v (Dice_v / V -
    lambda FP_v) + lambda * budget bounds the optimum from above; the minimum over 0 and a geometric
    grid of ``lambdas`` values up to twice the largest (Dice / V) / FP of any cut (beyond which only
    cuts without false positives are chosen: the budget is met) is returned as ``upper``;
    ``achieved`` is the best mean Dice of the per-lambda maximisers that meet the pooled budget (an
    oracle rule that exists). Returns ``{"upper", "achieved", "achieved_fpr_pooled", "volumes"}``;
    raises ``ValueError`` without a volume with lesions."""
    curves, budget, with_lesion = [], 0.0, 0
    for _, score, lesion, _ in dump.volumes():
        dice, fp = dice_curve(score, lesion)
        healthy = int((~lesion).sum())
        keep = fp <= volume_fpr * healthy  # the empty cut (fp 0) is always kept
        curves.append((dice[keep] if lesion.any() else np.zeros(int(keep.sum())), fp[keep]))
        budget += pooled_fpr * healthy
        with_lesion += bool(lesion.any())
    if not with_lesion:
        raise ValueError(f"{dump.path}: no volume with lesions to bound the Dice of")
    total_healthy = budget / pooled_fpr
    steepest = max(float(np.max(np.where(fp > 0, dice / with_lesion / np.maximum(fp, 1), 0.0))) for dice, fp in curves)
    top = 2.0 * max(steepest, 1e-300)
    upper, achieved, achieved_fpr = np.inf, -np.inf, np.nan
    for lam in np.r_[0.0, np.geomspace(top * 1e-9, top, lambdas)]:
        value, dice_sum, fp_sum = lam * budget, 0.0, 0
        for dice, fp in curves:
            objective = dice / with_lesion - lam * fp
            k = int(np.argmax(objective))
            value += objective[k]
            dice_sum, fp_sum = dice_sum + dice[k], fp_sum + int(fp[k])
        upper = min(upper, value)
        if fp_sum <= budget and dice_sum / with_lesion > achieved:
            achieved, achieved_fpr = dice_sum / with_lesion, fp_sum / total_healthy
    if not np.isfinite(achieved):  # cannot happen: at the top of the grid no cut with a false positive is chosen
        raise RuntimeError(f"{dump.path}: no oracle choice met the pooled budget (lambda grid up to {top:.3g})")
    return {"upper": float(upper), "achieved": float(achieved), "achieved_fpr_pooled": float(achieved_fpr),
            "volumes": len(curves)}


def _levels(low: float, high: float, n: int) -> tuple:
    return tuple(float(p) for p in np.round(np.linspace(low, high, n), 6))


LOW_10_50 = _levels(0.1, 0.5, 9)  # the healthy line through the 10th-50th percentiles
# the rules compared: ``scan_threshold.fit`` options (None: the calibrated threshold as it is); each
# name says every option it sets (tests/test_threshold_study.py checks the levels against the names)
CANDIDATES = {
    "fixed": None,
    "bulk 20-80, no discount (issue 18's line, with the refusals)": dict(halo_share=1.0),
    "two-stage, low 10-50, halo 0": dict(halo_share=0.0, low=LOW_10_50),
    "two-stage, low 10-50, halo 0.05": dict(halo_share=0.05, low=LOW_10_50),
    "two-stage, low 10-50, halo 0.1": dict(halo_share=0.1, low=LOW_10_50),
    "two-stage, low 10-50, halo 0.15": dict(halo_share=0.15, low=LOW_10_50),
    "two-stage, low 10-50, halo 0.2": dict(halo_share=0.2, low=LOW_10_50),
    "two-stage, low 10-70, halo 0.1": dict(halo_share=0.1, low=_levels(0.1, 0.7, 13)),
    "two-stage, low 10-70, halo 0.15": dict(halo_share=0.15, low=_levels(0.1, 0.7, 13)),
    "two-stage, low 10-70, halo 0.15, h from 0 only (before the review)": dict(
        halo_share=0.15, low=_levels(0.1, 0.7, 13), starts=(0.0,)),
    "two-stage, low 10-70, halo 0.2": dict(halo_share=0.2, low=_levels(0.1, 0.7, 13)),
    "two-stage, low 10-70, halo 0.1, excess 2%": dict(halo_share=0.1, low=_levels(0.1, 0.7, 13), excess=0.02),
    "two-stage, low 10-50, halo 0.1, excess 2%": dict(halo_share=0.1, low=LOW_10_50, excess=0.02),
    "two-stage, low 10-50, halo 0.15, excess 2%": dict(halo_share=0.15, low=LOW_10_50, excess=0.02),
    "two-stage, bulk 20-80 for both, halo 0.1": dict(halo_share=0.1, low=_levels(0.2, 0.8, 9)),
}


def rule_of(options):
    """The ``measure`` rule of a candidate's ``fit`` options (None: the calibrated threshold)."""
    def rule(reference: dict, scores, fpr):
        ref = scan_threshold.HealthyReference(reference)
        if options is None:
            return ref.threshold(fpr)
        return scan_threshold.for_scan(ref, scores, fpr, **options).threshold
    return rule


def summary(rows: list[dict]) -> dict:
    """A test set's figures from ``measure``'s rows: pooled FPR, its per-volume median, 90th
    percentile and maximum, mean Dice (volumes with lesions); for a lesion-share sweep, the mean
    sensitivity at each share."""
    fprs = np.array([r["fpr"] for r in rows], np.float64)
    out = {"fpr_pooled": sum(r["false_positives"] for r in rows) / max(sum(r["healthy_pixels"] for r in rows), 1),
           "fpr_median": float(np.nanmedian(fprs)), "fpr_p90": float(np.nanpercentile(fprs, 90)),
           "fpr_max": float(np.nanmax(fprs)), "dice": float(np.nanmean([r["dice"] for r in rows]))
           if any(np.isfinite(r["dice"]) for r in rows) else float("nan")}
    if all("_share" in r["name"] for r in rows):
        shares: dict = {}
        for r in rows:
            shares.setdefault(r["name"].rsplit("_share", 1)[1], []).append(r)
        out["sensitivity_by_share"] = {s: float(np.nanmean([r["sensitivity"] for r in v])) if float(s) > 0 else None
                                       for s, v in shares.items()}
        out["fpr_by_share"] = {s: float(np.mean([r["fpr"] for r in v])) for s, v in shares.items()}
    return out


def screening(dump: Dump) -> dict:
    """``tfvae calibrate``'s screen (``healthy_scans.exclusions``) on a lesion-share sweep's dump
    (volumes named ``<subject>_share<share>``, ``lesion_share_volumes``), offline: the healthy set
    is every subject at share 0; then, for each subject and share, the same set with that subject's
    scan replaced by its lesioned one. Returns ``{"subjects": n, "healthy_left_out": scans left out
    of the healthy set, "found": {share: sets whose lesioned scan was left out (of n)},
    "others_left_out": {share: healthy scans left out beside it, summed over the n sets}}``. The
    maps are the run's, fitted on its validation split (calibrate fits on the set itself)."""
    from tfvae.thresholds import healthy_scans

    by: dict = {}
    for name, score, _, _ in dump.volumes():
        subject, share = name.rsplit("_share", 1)
        by.setdefault(subject, {})[share] = score
    subjects = sorted(by)
    healthy = [by[s]["0"] for s in subjects]
    out = {"subjects": len(subjects), "healthy_left_out": len(healthy_scans.exclusions(healthy)[1]),
           "found": {}, "others_left_out": {}}
    for share in sorted({k for v in by.values() for k in v if float(k) > 0}, key=float):
        found = others = 0
        for i, subject in enumerate(subjects):
            scores = list(healthy)
            scores[i] = by[subject][share]
            left = [j for j, _, _ in healthy_scans.exclusions(scores)[1]]
            found += i in left
            others += sum(j != i for j in left)
        out["found"][share], out["others_left_out"][share] = found, others
    return out


def compare(dump_paths, candidates=None, fpr: float = 0.01, log=None) -> dict:
    """``{dump name: {candidate: summary}}`` over the dumps (``dump_maps``' files, named by their
    file name without ``.npz``) for every candidate rule (``CANDIDATES``)."""
    candidates = CANDIDATES if candidates is None else candidates
    out: dict = {}
    for path in dump_paths:
        dump, name = Dump(path), os.path.splitext(os.path.basename(path))[0]
        out[name] = {c: summary(measure(dump, rule_of(o), fpr)) for c, o in candidates.items()}
        out[name]["best_dice"] = best_dice(dump) if dump.lesion.any() and not name.startswith("shares") else None
        if name.startswith("shares"):
            out[name]["screening"] = screening(dump)
        if log:
            log(name)
    return out


def _mean_std(values) -> str:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if not len(v):
        return "n/a"
    return f"{v.mean():.3f}" if len(v) == 1 else f"{v.mean():.3f} ± {v.std():.3f}"


def _pct(values) -> str:
    v = np.asarray(values, np.float64) * 100
    return f"{v.mean():.1f}" if len(v) == 1 else f"{v.mean():.1f}±{v.std():.1f}"


def render(by_seed: dict, stamp: dict) -> str:
    """The study's markdown report from ``{seed folder: compare(...)}`` and its ``stamp``."""
    names = list(dict.fromkeys(t for by_set in by_seed.values() for t in by_set))
    sets = [t for t in names if not t.startswith("shares")]
    sweeps = [t for t in names if t.startswith("shares")]
    first = next(by_set[t] for by_set in by_seed.values() for t in by_set)
    candidates = [c for c in first if c not in ("best_dice", "screening")]
    runs_of = {t: [s for s in sorted(by_seed) if t in by_seed[s]] for t in names}  # the runs that scored t
    lines = [f"Runs: {', '.join(sorted(by_seed))} (`{stamp['runs_config']}`, seeds {stamp['seeds']}); commit "
             f"`{stamp['commit']}`; nominal FPR 1%; recommended map. Cells: mean ± std over the runs that scored "
             "the set (" + "; ".join(f"{t}: {len(r)}" for t, r in runs_of.items()) + ").", ""]
    if sets:
        lines += ["### Measured FPR on the healthy brain pixels (%): pooled / 90th percentile of volumes / maximum",
                  "", "| rule | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
        for c in candidates:
            cells = [f"{_pct([by_seed[s][t][c]['fpr_pooled'] for s in runs_of[t]])} / "
                     f"{_pct([by_seed[s][t][c]['fpr_p90'] for s in runs_of[t]])} / "
                     f"{_pct([by_seed[s][t][c]['fpr_max'] for s in runs_of[t]])}" for t in sets]
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        lines += ["", "### Dice at the threshold (mean over the volumes with lesions)", "",
                  "| rule | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
        for c in candidates:
            lines.append(f"| {c} | " + " | ".join(_mean_std([by_seed[s][t][c]["dice"] for s in runs_of[t]])
                                                  for t in sets) + " |")
        lines.append("| best single threshold (labels) | " + " | ".join(
            _mean_std([by_seed[s][t]["best_dice"] for s in runs_of[t]]) for t in sets) + " |")
    for sweep in sweeps:
        seeds = runs_of[sweep]
        shares = [k for k, v in by_seed[seeds[0]][sweep][candidates[0]]["sensitivity_by_share"].items()
                  if v is not None]
        lines += ["", f"### Lesion-share sweep `{sweep[len('shares_'):]}`: share of the lesion found, by the lesion's "
                      "share of the brain (FPR of the lesion-free scans last)", "",
                  "| rule | " + " | ".join(f"{100 * float(k):g}%" for k in shares) + " | 30% / 5% | FPR at 0% |",
                  "|---|" + "---|" * (len(shares) + 2)]
        for c in candidates:
            sens = [[by_seed[s][sweep][c]["sensitivity_by_share"][k] for s in seeds] for k in shares]
            by_share = [by_seed[s][sweep][c]["sensitivity_by_share"] for s in seeds]
            ratio = [b["0.3"] / b["0.05"] for b in by_share if "0.3" in b and "0.05" in b]
            lines.append(f"| {c} | " + " | ".join(_mean_std(v) for v in sens) + f" | {_mean_std(ratio)} | "
                         f"{_pct([by_seed[s][sweep][c]['fpr_by_share']['0'] for s in seeds])}% |")
    screened = [t for t in sweeps if all("screening" in by_seed[s][t] for s in runs_of[t])]
    if screened:
        shares = list(by_seed[runs_of[screened[0]][0]][screened[0]]["screening"]["found"])
        lines += ["", "### Screening a healthy set (`tfvae calibrate`): the lesioned scan left out", "",
                  "Each sweep's healthy subjects as a calibration set, then the same set with one subject's scan "
                  "replaced by its lesioned one (each subject in turn): how often calibrate's screen "
                  "(`healthy_scans.exclusions`) left that scan out, by the lesion's share of the brain, and how many "
                  "healthy scans it left out (of the healthy set alone; beside the lesioned one, summed over the "
                  "sets). Summed over the runs.", "",
                  "| site | runs x subjects | healthy set: left out | " + " | ".join(f"{100 * float(k):g}%" for k in shares)
                  + " | healthy left out beside it |", "|---|---|---|" + "---|" * (len(shares) + 1)]
        for t in screened:
            got = [by_seed[s][t]["screening"] for s in runs_of[t]]
            n = sum(g["subjects"] for g in got)
            lines.append(f"| {t[len('shares_'):]} | {len(got)} x {got[0]['subjects']} | "
                         f"{sum(g['healthy_left_out'] for g in got)} of {n} | "
                         + " | ".join(f"{sum(g['found'][k] for g in got)}/{n}" for k in shares)
                         + f" | {sum(sum(g['others_left_out'].values()) for g in got)} of "
                         f"{sum(g['subjects'] * (g['subjects'] - 1) for g in got) * len(shares)} |")
    return "\n".join(lines) + "\n"


def section_body(section: str, evidence: dict) -> str:
    """A section's markdown (``report``'s or, for ``bound``, ``bound_report``'s) from its evidence
    alone: what the published section must read (tested against ``docs/threshold_study.md``)."""
    render_ = render_bounds if section == "bound" else render
    return f"Made by `{evidence['stamp']['command']}`.\n\n" + render_(evidence["results"], evidence["stamp"])


def markers(section: str) -> tuple[str, str]:
    """The lines that enclose a report section (``design``, ``held-out``, ``screening`` or ``bound``) in
    its markdown file."""
    flag = "--bound" if section == "bound" else "--report"
    return (f"<!-- threshold study, {section}: begin (regenerated by scripts/threshold_study.py {flag}) -->",
            f"<!-- threshold study, {section}: end -->")


def report(dump_root: str, md_path: str, runs, *, section: str = "design", command: str = "", log=None) -> dict:
    """Compare ``CANDIDATES`` on every dump of ``runs`` (run folders; their dumps in
    ``dump_root/<run folder's name>``), write the tables into ``md_path`` between ``BEGIN`` and
    ``END`` of ``section`` (``markers``; the rest of the file is kept) and the evidence beside it
    (``<doc>_<section>.json``: every figure per run, each run's resolved config, the dumps' SHA-256,
    the commit, the command and the wall time); returns the evidence."""
    import time

    start = time.time()
    seeds, configs, by_seed, digests = per_run([dump_root], runs, lambda paths: compare(paths, log=log),
                                               key=lambda path: os.path.relpath(path, dump_root))
    stamp = stamp_of(command, configs, seeds, digests)
    stamp.update({"candidates": {c: o for c, o in CANDIDATES.items()}, "wall_s": None})
    body = section_body(section, {"stamp": stamp, "results": by_seed})
    return publish(md_path, section, f"{os.path.splitext(md_path)[0]}_{section.replace('-', '_')}.json", stamp,
                   by_seed, body, start)


def per_run(dump_roots, runs, analyse, key) -> tuple[list, dict, dict, dict]:
    """Each run's dumps analysed: ``(seeds, configs, by_seed, digests)`` -- the runs' folder names,
    their resolved configs, ``analyse(paths)`` of each run's dumps (``<root>/<run folder's
    name>/*.npz`` for each of ``dump_roots``, sorted within a root) and the dumps' SHA-256 keyed by
    ``key(path)``."""
    import glob

    from tfvae.utils import files
    from tfvae.runs.run import Run

    seeds = [os.path.basename(os.path.normpath(r)) for r in runs]
    configs = {seed: Run(r).config() for seed, r in zip(seeds, runs)}
    by_seed, digests = {}, {}
    for seed in seeds:
        paths = [p for root in dump_roots for p in sorted(glob.glob(os.path.join(root, seed, "*.npz")))]
        by_seed[seed] = analyse(paths)
        digests.update({key(p): files.file_digest(p) for p in paths})
    return seeds, configs, by_seed, digests


def publish(md_path: str, section: str, evidence_path: str, stamp: dict, results: dict, body: str, start: float,
            *, enclosed_by: tuple[str, str] | None = None) -> dict:
    """The evidence ``{"stamp": stamp with the wall time since ``start``, "results"}`` written to
    ``evidence_path`` and ``body`` into ``md_path``'s ``section`` (``write_section``); returns the evidence."""
    import time

    from tfvae.utils import files

    stamp["wall_s"] = round(time.time() - start, 1)
    evidence = {"stamp": stamp, "results": results}
    files.write_json(evidence_path, evidence)
    write_section(md_path, section, body, enclosed_by=enclosed_by)
    return evidence


def stamp_of(command: str, configs: dict, seeds, digests: dict, tested=None) -> dict:
    """The evidence's stamp (``evidence.stamp``: the commit, here its short hash, and the files
    uncommitted then, the command, each run's resolved config and seed, the fingerprint of the data
    the runs trained on and of the phantom's test sets dumped: ``tested``, or read from the dumps'
    names ``<set>.npz`` / ``<set>__<predictor>.npz``), the dumps' SHA-256."""
    from tfvae.data import pipelines as data
    from tfvae.studies import evidence

    stamp = evidence.stamp(command, configs)
    trained = [c["data"] for c in configs.values()]
    if tested is None:
        tested = sorted({os.path.basename(k)[:-len(".npz")].split("__")[0] for k in digests})
    for name in tested:  # the test sets dumped (the sweeps' volumes are made here, their dumps fingerprinted)
        for config in trained[:1]:
            test = dict(config, test_name=None, test_config=name)
            try:
                stamp["data"].update(evidence.data_fingerprint([test]))
            except data.DataError:  # not a dataset: a sweep (shares_<site>)
                pass
    return {**stamp, "commit": stamp["commit"][:7], "runs_config": "configs/quickstart.json",
            "seeds": [configs[s]["seed"] for s in seeds], "dumps_sha256": digests}


# (pooled FPR, cap on every volume's FPR) of the oracle bound: issue 30's targets (pooled <= 2 %,
# 90th percentile <= 3 %: a cap on every volume is stricter than on the 90th, so a second bound
# drops the cap), both at a nominal 1 %
BOUNDS = ((0.02, 0.03), (0.02, 1.0))


def bounds(dump_paths, fpr: float = 0.01, log=None) -> dict:
    """``{dump name: {"fixed": summary, "per_scan": summary, "best_dice": ..., "bound <pooled>/<cap>":
    dice_bound}}`` for the dumps with lesions (lesion-share sweeps skipped): what the calibrated and
    the per-scan thresholds give, and what an oracle choosing each volume's threshold could give
    within ``BOUNDS``."""
    out: dict = {}
    for path in dump_paths:
        dump, name = Dump(path), os.path.splitext(os.path.basename(path))[0]
        if name.startswith("shares") or not dump.lesion.any():
            continue
        row = {"fixed": summary(measure(dump, rule_of(None), fpr)), "per_scan": summary(measure(dump, rule_of({}), fpr)),
               "best_dice": best_dice(dump)}
        # one threshold for every volume, set (with the labels) to flag the per-scan rule's pooled FPR:
        # what the per-scan rule's moving of each scan's threshold adds at an equal rate
        at = float(np.quantile(dump.score[~dump.lesion], 1.0 - row["per_scan"]["fpr_pooled"]))
        row["one_threshold_at_per_scan_fpr"] = summary(measure(dump, lambda reference, scores, f: at, fpr))
        for pooled, cap in BOUNDS:
            row[f"bound {pooled:g}/{cap:g}"] = dice_bound(dump, pooled, cap)
        out[name] = row
        if log:
            log(name)
    return out


def render_bounds(by_seed: dict, stamp: dict) -> str:
    """The bound section's markdown from ``{run: bounds(...)}``."""
    names = list(dict.fromkeys(t for by_set in by_seed.values() for t in by_set))
    lines = [f"Runs: {', '.join(sorted(by_seed))} (`{stamp['runs_config']}`, seeds {stamp['seeds']}); commit "
             f"`{stamp['commit']}`; nominal FPR 1%; recommended map; mean ± std over the runs. Dice: mean over the "
             "volumes with lesions; FPR (%): pooled / 90th percentile of volumes. Oracle: each volume cut where the "
             "labels say is best, within the FPR bounds (`threshold_study.dice_bound`; upper = Lagrangian dual "
             "bound: no threshold rule can exceed it within those bounds; reached = an oracle choice that meets them).",
             "", "| set | fixed: Dice | fixed: FPR | per-scan: Dice | per-scan: FPR | one threshold at the per-scan "
             "pooled FPR: Dice | best single threshold: Dice | "
             "oracle, pooled <= 2 %, every volume <= 3 %: upper / reached | oracle, pooled <= 2 %: upper / reached |",
             "|---|---|---|---|---|---|---|---|---|"]
    for t in names:
        runs = [s for s in sorted(by_seed) if t in by_seed[s]]
        rows = [by_seed[s][t] for s in runs]
        cells = [_mean_std([r["fixed"]["dice"] for r in rows]),
                 f"{_pct([r['fixed']['fpr_pooled'] for r in rows])} / {_pct([r['fixed']['fpr_p90'] for r in rows])}",
                 _mean_std([r["per_scan"]["dice"] for r in rows]),
                 f"{_pct([r['per_scan']['fpr_pooled'] for r in rows])} / {_pct([r['per_scan']['fpr_p90'] for r in rows])}",
                 _mean_std([r["one_threshold_at_per_scan_fpr"]["dice"] for r in rows]),
                 _mean_std([r["best_dice"] for r in rows])]
        for pooled, cap in BOUNDS:
            key = f"bound {pooled:g}/{cap:g}"
            cells.append(f"{_mean_std([r[key]['upper'] for r in rows])} / {_mean_std([r[key]['achieved'] for r in rows])}")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def bound_report(dump_roots, md_path: str, runs, *, command: str = "", log=None) -> dict:
    """``bounds`` on every dump of ``runs`` (their dumps in ``<root>/<run folder's name>`` for each of
    ``dump_roots``: the design and the held-out dumps), written into ``md_path``'s section ``bound``
    and its evidence ``<doc>_bound.json`` (stamped as ``report``'s)."""
    import time

    start = time.time()
    seeds, configs, by_seed, digests = per_run(dump_roots, runs, lambda paths: bounds(paths, log=log),
                                               key=lambda path: os.path.relpath(path, os.path.dirname(dump_roots[0])))
    stamp = stamp_of(command, configs, seeds, digests)
    stamp["bounds"] = [list(b) for b in BOUNDS]
    body = section_body("bound", {"stamp": stamp, "results": by_seed})
    return publish(md_path, "bound", f"{os.path.splitext(md_path)[0]}_bound.json", stamp, by_seed, body, start)


def write_section(md_path: str, section: str, body: str, *, enclosed_by: tuple[str, str] | None = None) -> None:
    """``body`` between ``markers(section)`` (or the lines ``enclosed_by``) in ``md_path``: replacing
    that section where the file has it, appended where it has not; the rest of the file is kept
    (written whole)."""
    from tfvae.utils import files

    begin, end = enclosed_by or markers(section)
    text = f"{begin}\n\n{body.strip()}\n\n{end}"
    old = open(md_path, encoding="utf-8").read() if os.path.isfile(md_path) else ""
    if begin in old and end in old:
        text = old[:old.index(begin)] + text + old[old.index(end) + len(end):]
    elif old:
        text = old.rstrip("\n") + "\n\n" + text + "\n"
    with files.open_whole(md_path) as f:
        f.write(text)
