"""The large-lesion gap (issue 33): the recommended map with a second restoration
(``recommended.second_restoration``) against the map as it is, on the phantom's design and held-out
test sets, several runs, paired by run.

A large tumour spoils the restoration the recommended map subtracts: the projection's data term
holds the restored image near the lesion, so the model restores part of it and the residual there
shrinks. The second restoration frees the region the first map flags at its healthy 1 % FPR
threshold from the data term (``tfvae.maps.scoring.Scorer._second_restoration``).

``dump(run_dir, test_set, out_dir)`` scores a test set once with both maps (the first is the map as
it is: ``recommended_first_restoration``) and writes two dumps in ``threshold_study``'s format,
``<out_dir>/<run>/<set>/{first,second}.npz``, each with its healthy reference: thresholds at
``threshold_study.DENSE_FPRS`` from the quantiles of the healthy validation volumes' brain pixels,
the same rule for both maps. ``measure`` reads them: AUROC / AUPRC over the brain pixels (sklearn),
the best single-threshold Dice, and at a nominal 1 % FPR the per-scan rule's and the fixed
threshold's Dice and measured FPR (pooled, 90th percentile and maximum of the volumes);
``report`` writes the table into ``docs/results_phantom.md`` and its stamped evidence beside it.
Used by ``scripts/second_restoration_study.py``.
"""

from __future__ import annotations

import os
import time

import numpy as np

# (test set, tumours, role): the design sets (the recommended recipe, the per-scan rule and this
# remedy were chosen on them) and the held-out sets, built before that design and scored once
SETS = (("default", "2-60 ml", "design"), ("large_lesions", "100-400 ml", "design"),
        ("heldout_home", "2-60 ml, lobulated", "held out"), ("heldout_large", "100-400 ml, lobulated", "held out"),
        ("heldout_site", "2-60 ml, another site (thick slices, bias, noise)", "held out"))
MAPS = ("first", "second")
FIGURES = ("auroc", "auprc", "best_dice", "per_scan_dice", "per_scan_fpr_pooled", "per_scan_fpr_p90",
           "per_scan_fpr_max", "fixed_dice", "fixed_fpr_pooled", "fixed_fpr_p90")


def healthy_thresholds(scores) -> np.ndarray:
    """Thresholds at ``DENSE_FPRS``: the (1 - FPR) quantiles of the healthy brain pixels ``scores``
    (a list of arrays, pooled)."""
    from tfvae.studies.threshold_study import DENSE_FPRS

    pooled = np.concatenate(scores)
    return np.array([float(np.quantile(pooled, 1.0 - f)) for f in DENSE_FPRS])


def dump(run_dir: str, test_set: str, out_dir: str, log=print) -> str:
    """Both maps of ``run_dir``'s model on the phantom's ``test_set`` into
    ``out_dir/<run>/<test_set>/{first,second}.npz`` (written whole; a folder holding both, made by
    the same model, is left as it is: ``threshold_study.reusable``); returns the folder."""
    from tfvae import config as config_lib
    from tfvae.evaluation.evaluate import run_inputs, stored_calibration
    from tfvae.maps.scoring import Scorer, as_volumes, volumes
    from tfvae.runs.run import Run
    from tfvae.studies.threshold_study import DENSE_FPRS, _brain_arrays, reusable, write_dump

    folder = os.path.join(out_dir, os.path.basename(os.path.normpath(run_dir)), test_set)
    if all(reusable(os.path.join(folder, f"{m}.npz"), run_dir) for m in MAPS):
        return folder
    start = time.time()
    run = Run(run_dir)
    config = config_lib.resolve(run.config(), ["data.test_name=null", f"data.test_config={test_set}",
                                               "recommended.second_restoration=true"])
    model, test, validation = run_inputs(run, config)
    scorer = Scorer(model, config, ["recommended"])
    # the first map's filter sizes as the run stored them (the option does not change them)
    scorer.fit(validation, stored=stored_calibration(run, run.config(), "final")["reference"])

    def both(volume):
        maps = scorer(volume.image, volume.brain_mask, volume.geometry.voxel_mm())
        return {"first": maps["recommended_first_restoration"], "second": maps["recommended"]}

    healthy = {m: [] for m in MAPS}
    for volume in as_volumes(validation):
        brain = volume.brain_mask > 0
        for m, score in both(volume).items():
            healthy[m].append(score[brain])
    parts, names = {m: [] for m in MAPS}, []
    for volume in volumes(test):
        for m, score in both(volume).items():
            parts[m].append(_brain_arrays(volume, score))
        names.append(volume.volume_id)
        log(f"{os.path.basename(os.path.normpath(run_dir))} {test_set} {volume.volume_id}: {time.time() - start:.0f} s")
    scorer.release()
    for m in MAPS:
        write_dump(os.path.join(folder, f"{m}.npz"), parts[m], names, DENSE_FPRS, healthy_thresholds(healthy[m]),
                   flag_threshold=scorer.flag_threshold, wall_s=time.time() - start, model_digest=run.model_digest())
    return folder


def figures_of(path: str) -> dict:
    """``FIGURES`` of one dump (see the module docstring)."""
    from tfvae.studies.lesion_size_study import brain_figures
    from tfvae.studies.threshold_study import Dump, best_dice, measure, rule_of, summary

    d = Dump(path)
    out = {**brain_figures(d), "best_dice": best_dice(d)}
    for rule, options in (("per_scan", {}), ("fixed", None)):
        out.update({f"{rule}_{k}": v for k, v in summary(measure(d, rule_of(options))).items()})
    return out


def measure(dump_root: str, runs, sets=SETS) -> dict:
    """``{set: {map: {run: figures}}}`` for the ``sets`` (``SETS``' rows) whose dumps every run has."""
    out: dict = {}
    names = [os.path.basename(os.path.normpath(r)) for r in runs]
    for test_set, _, _ in sets:
        paths = {m: {n: os.path.join(dump_root, n, test_set, f"{m}.npz") for n in names} for m in MAPS}
        if all(os.path.isfile(p) for by in paths.values() for p in by.values()):
            out[test_set] = {m: {n: figures_of(p) for n, p in by.items()} for m, by in paths.items()}
    return out


def _pct(key: str) -> bool:
    return "fpr" in key


def render(results: dict, sets=SETS) -> str:
    """Per set and figure: the map as it is, with the second restoration (means over the runs) and
    their paired difference (mean, and the smallest and largest of the runs')."""
    heads = {"auroc": "AUROC", "auprc": "AUPRC", "best_dice": "best Dice", "per_scan_dice": "Dice@1%",
             "per_scan_fpr_pooled": "FPR pooled", "per_scan_fpr_p90": "FPR p90", "per_scan_fpr_max": "FPR max",
             "fixed_dice": "fixed: Dice@1%", "fixed_fpr_pooled": "fixed: FPR pooled", "fixed_fpr_p90": "fixed: FPR p90"}
    lines = ["| test set | tumours | role | figure | as it is | second restoration | paired difference (min, max) |",
             "|---|---|---|---|---:|---:|---|"]
    for test_set, tumours, role in sets:
        if test_set not in results:
            continue
        by = results[test_set]
        runs = sorted(by["first"])
        for key in FIGURES:
            a = np.array([by["first"][r][key] for r in runs])
            b = np.array([by["second"][r][key] for r in runs])
            d, scale, unit = b - a, (100.0 if _pct(key) else 1.0), (" %" if _pct(key) else "")
            fmt = ".2f" if _pct(key) else ".3f"
            lines.append(f"| `{test_set}` | {tumours} | {role} | {heads[key]} | {scale * a.mean():{fmt}}{unit} | "
                         f"{scale * b.mean():{fmt}}{unit} | {scale * d.mean():+{fmt}} ({scale * d.min():+{fmt}}, "
                         f"{scale * d.max():+{fmt}}){unit} |")
    return "\n".join(lines) + "\n"


MARKERS = ("<!-- the second restoration: begin (regenerated by scripts/second_restoration_study.py) -->",
           "<!-- the second restoration: end -->")


def report(runs, dump_root: str, md_path: str, *, command: str = "", note: str = "", sets=SETS) -> dict:
    """``measure`` of ``runs``' dumps in ``dump_root``, the table into ``md_path`` between ``MARKERS``
    and the evidence beside it (``<doc>_second_restoration.json``: every figure, the stamp with the
    dumps' SHA-256, the wall time); ``note``: a paragraph put before the table. Returns the evidence."""
    import glob

    from tfvae.runs.run import Run
    from tfvae.studies.threshold_study import publish, stamp_of
    from tfvae.utils import files

    start = time.time()
    seeds = [os.path.basename(os.path.normpath(r)) for r in runs]
    configs = {seed: Run(r).config() for seed, r in zip(seeds, runs)}
    results = measure(dump_root, runs, sets)
    paths = sorted(p for s in seeds for t in results for p in glob.glob(os.path.join(dump_root, s, t, "*.npz")))
    stamp = stamp_of(command, configs, seeds, {os.path.relpath(p, dump_root): files.file_digest(p) for p in paths},
                     tested=sorted(results))
    body = (f"Made by `{command}`; commit `{stamp['commit']}`; runs {', '.join(seeds)} (`configs/quickstart.json`, "
            f"seeds {stamp['seeds']}); at a nominal 1 % FPR, thresholds from each map's own healthy validation "
            "quantiles.\n\n" + (note.strip() + "\n\n" if note.strip() else "") + render(results, sets))
    return publish(md_path, "second restoration", evidence_path(md_path), stamp, results, body, start,
                   enclosed_by=MARKERS)


def evidence_path(md_path: str) -> str:
    return f"{os.path.splitext(md_path)[0]}_second_restoration.json"
