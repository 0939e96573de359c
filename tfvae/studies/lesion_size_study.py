"""What the VAE adds, by lesion size (issue 33): the ``recommended`` map against the same recipe
without a model (``intensity_filtered``: the intensity through the recommended map's filters) and
against the intensity itself, inside the brain, on the phantom's test sets of small-to-medium
tumours (2-60 ml) and of BraTS-sized ones (100-400 ml with oedema), each as designed on and held out.

Reads ``tfvae.studies.threshold_study`` dumps (brain pixels, labels): the recommended map's per run, the
two baselines' once (they have no model: every run gives them the same maps). AUROC and AUPRC
(average precision) over the brain pixels of all volumes of a set pooled, as
``sklearn.metrics.roc_auc_score`` / ``average_precision_score`` compute them (the convention of
``results.md``'s "brain" columns). The same by size class (``SIZE_CLASSES``): the volumes of a
2-60 ml set split by their lesion's share of the brain (small under ``SMALL_SHARE``, medium from
it), the large-lesion sets whole; the class of a volume is its labels', so every predictor is
scored on the same volumes. Used by ``scripts/lesion_size_study.py``.
"""

from __future__ import annotations

import os

import numpy as np

# (test set, tumours, role): the design sets the recommended recipe and the per-scan rule were chosen
# on, and the held-out sets (new subjects, lobulated tumours) built before that design
SETS = (("default", "2-60 ml", "design set"), ("heldout_home", "2-60 ml, lobulated", "held out"),
        ("large_lesions", "100-400 ml", "design set"), ("heldout_large", "100-400 ml, lobulated", "held out"))
BASELINES = ("intensity_filtered", "intensity")
# the boundary between small and medium tumours: the lesion's share of the volume's brain pixels
# (2.5 % is ~35 ml in the phantom's ~1.4 l brain); chosen from the sets' shares alone, before any class was
# scored: about a third to a half of each 2-60 ml set's 20 volumes fall below it
SMALL_SHARE = 0.025
# (class, the sets whose volumes it takes, which of their volumes: "below" / "from" SMALL_SHARE or "all")
SIZE_CLASSES = (("small", ("default", "heldout_home"), "below"), ("medium", ("default", "heldout_home"), "from"),
                ("large", ("large_lesions", "heldout_large"), "all"))


def brain_figures(dump, volumes=None) -> dict:
    """``{"auroc", "auprc"}`` of a dump's pooled brain pixels against its labels (sklearn); with
    ``volumes`` (indices into the dump's volumes), of those volumes' pixels only."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    lesion, score = dump.lesion, dump.score
    if volumes is not None:
        keep = np.concatenate([np.arange(dump.offsets[i], dump.offsets[i + 1]) for i in volumes])
        lesion, score = lesion[keep], score[keep]
    return {"auroc": float(roc_auc_score(lesion, score)), "auprc": float(average_precision_score(lesion, score))}


def same_volumes(a, b) -> bool:
    """Whether two dumps hold the same volumes: names in the same order, the same brain pixels per
    volume (offsets) and the same labels."""
    return ([str(n) for n in a.names] == [str(n) for n in b.names] and np.array_equal(a.offsets, b.offsets)
            and np.array_equal(a.lesion, b.lesion))


def class_volumes(dump, which: str) -> list[int]:
    """The indices of the dump's volumes in a size class: ``which`` is ``"below"`` / ``"from"``
    ``SMALL_SHARE`` (the lesion's share of the volume's brain pixels) or ``"all"``; volumes without a
    lesion belong to no class but ``"all"``."""
    out = []
    for i in range(len(dump.names)):
        lesion = dump.lesion[dump.offsets[i]:dump.offsets[i + 1]]
        share = float(lesion.mean()) if len(lesion) else 0.0
        if which == "all" or (share > 0 and (share < SMALL_SHARE) == (which == "below")):
            out.append(i)
    return out


def _find(folders, file: str) -> str | None:
    return next((os.path.join(f, file) for f in folders if os.path.isfile(os.path.join(f, file))), None)


def measure(run_folders, baseline_folders, sets=SETS) -> dict:
    """``{set: {"recommended": [figures per run], "<baseline>": figures, "by_size": {class:
    {"volumes": [names], "recommended": [...], "<baseline>": ...}}}}`` from the dumps ``<set>.npz``
    (the recommended map; ``run_folders``: per run, the folders its dumps are in) and
    ``<set>__<baseline>.npz`` (in ``baseline_folders``); a set without every dump is left out;
    ``by_size``: the size classes (``SIZE_CLASSES``) that take volumes of the set and have some;
    ``ValueError`` when a set's dumps hold other volumes (made from another build of the set)."""
    from tfvae.studies.threshold_study import Dump

    out: dict = {}
    for name, _, _ in sets:
        paths = [_find(folders, f"{name}.npz") for folders in run_folders]
        bases = {b: _find(baseline_folders, f"{name}__{b}.npz") for b in BASELINES}
        if None in paths or None in bases.values():
            continue
        dumps = [Dump(p) for p in paths]
        base_dumps = {b: Dump(p) for b, p in bases.items()}
        for d in [*dumps[1:], *base_dumps.values()]:  # the same volumes, pixels and labels in every dump
            if not same_volumes(d, dumps[0]):
                raise ValueError(f"{d.path}: other volumes than {dumps[0].path} (names, pixels or labels differ); "
                                 "make the dumps again from the same build of the set")
        out[name] = {"recommended": [brain_figures(d) for d in dumps],
                     **{b: brain_figures(d) for b, d in base_dumps.items()}, "by_size": {}}
        for size, names, which in SIZE_CLASSES:
            if name not in names:
                continue
            chosen = class_volumes(dumps[0], which)
            if not chosen:  # no volume of the set in this class
                continue
            volumes = [str(dumps[0].names[i]) for i in chosen]
            out[name]["by_size"][size] = {
                "volumes": volumes, "recommended": [brain_figures(d, chosen) for d in dumps],
                **{b: brain_figures(d, chosen) for b, d in base_dumps.items()}}
    return out


def _cells(f: dict) -> list[str]:
    """The AUROC, AUPRC and "the model adds" cells of one row: the recommended map (mean ± std over
    the runs) / the recipe without a model / the intensity; the AUROC difference and AUPRC ratio of
    the recommended map against the recipe without it (means over the runs)."""
    cells = []
    for metric in ("auroc", "auprc"):
        rec = np.array([r[metric] for r in f["recommended"]])
        cells.append(f"{rec.mean():.3f} ± {rec.std():.3f} / {f['intensity_filtered'][metric]:.3f} / "
                     f"{f['intensity'][metric]:.3f}")
    rec_auroc = np.array([r["auroc"] for r in f["recommended"]])
    rec_auprc = np.array([r["auprc"] for r in f["recommended"]])
    cells.append(f"{(rec_auroc - f['intensity_filtered']['auroc']).mean():+.3f} / "
                 f"{(rec_auprc / f['intensity_filtered']['auprc']).mean():.2f}")
    return cells


def render(figures: dict, runs: int, sets=SETS) -> str:
    """The markdown tables of ``measure``'s figures: per set, then per size class and role, the
    recommended map (mean ± std over the runs), the recipe without a model, the intensity, and what
    the model adds (AUROC difference, AUPRC ratio) against the recipe without it."""
    head = (f"AUROC brain: recommended ({runs} runs) / recipe, no model / intensity | AUPRC brain: the same "
            "| the model adds: AUROC / AUPRC x |")
    lines = ["| test set | tumours | role | " + head, "|---|---|---|---|---|---|"]
    for name, tumours, role in sets:
        if name in figures:
            lines.append(f"| `{name}` | {tumours} | {role} | " + " | ".join(_cells(figures[name])) + " |")
    rows = []
    for size, names, which in SIZE_CLASSES:
        for name, _, role in sets:
            got = figures.get(name, {}).get("by_size", {}).get(size)
            if name not in names or not got:
                continue
            share = {"below": f"lesion < {100 * SMALL_SHARE:g} % of the brain",
                     "from": f"lesion >= {100 * SMALL_SHARE:g} % of the brain", "all": "every volume"}[which]
            rows.append(f"| {size} | `{name}`: {share} | {role} | {len(got['volumes'])} | "
                        + " | ".join(_cells(got)) + " |")
    if rows:
        lines += ["", "By size class (the same dumps, each class's volumes pooled):", "",
                  "| size | volumes of | role | volumes | " + head, "|---|---|---|---|---|---|---|", *rows]
    return "\n".join(lines) + "\n"


MARKERS = ("<!-- what the VAE adds by lesion size: begin (regenerated by scripts/lesion_size_study.py) -->",
           "<!-- what the VAE adds by lesion size: end -->")


def dump(runs, dump_root: str, baseline_root: str, sets=SETS, log=None) -> None:
    """The dumps ``report`` reads, made where missing (``threshold_study.dump_maps``): each run's
    recommended map of every set (``DUMPS/<run>/<set>.npz``, the held-out sets' in
    ``DUMPS/heldout/<run>/``, where ``scripts/threshold_study.py`` writes them too) and the baselines'
    (``BASELINES/<set>__<predictor>.npz``, with the first run: they need no model)."""
    from tfvae.studies.threshold_study import dump_maps

    for run_dir in runs:
        seed = os.path.basename(os.path.normpath(run_dir))
        for name, _, role in sets:
            path = os.path.join(dump_root, *(("heldout",) if role == "held out" else ()), seed, f"{name}.npz")
            if not os.path.isfile(path):
                dump_maps(run_dir, name, path)
            if log:
                log(path)
    for name, _, _ in sets:
        for baseline in BASELINES:
            path = os.path.join(baseline_root, f"{name}__{baseline}.npz")
            if not os.path.isfile(path):
                dump_maps(runs[0], name, path, predictor=baseline)
            if log:
                log(path)


def body(evidence: dict, sets=SETS) -> str:
    """The section ``report`` writes, from its evidence alone (tested against the published one)."""
    stamp = evidence["stamp"]
    seeds = list(stamp["configs"])
    return (f"Made by `{stamp['command']}`; commit `{stamp['commit']}`; runs {', '.join(seeds)} "
            f"(`{stamp['runs_config']}`, seeds {stamp['seeds']}); the baselines have no model (the same maps for "
            f"every run). *design set*: the recommended recipe and the per-scan rule were chosen on its subjects; "
            f"*held out*: built before that design and scored after it.\n\n"
            + render(evidence["results"], len(seeds), sets))


def report(runs, dump_root: str, baseline_root: str, md_path: str, *, command: str = "", sets=SETS) -> dict:
    """``measure`` on the dumps of ``runs`` (run folders; their recommended maps' dumps in
    ``dump_root/<run>`` and ``dump_root/heldout/<run>``, the baselines' in ``baseline_root``), the
    table into ``md_path`` between ``MARKERS`` (the rest of the file kept) and the evidence beside it
    (``<doc>_lesion_size.json``: every figure, the stamp of ``threshold_study.report``, the wall time);
    returns the evidence."""
    import glob
    import time

    from tfvae.utils import files
    from tfvae.runs.run import Run
    from tfvae.studies.threshold_study import publish, stamp_of

    start = time.time()
    seeds = [os.path.basename(os.path.normpath(r)) for r in runs]
    configs = {seed: Run(r).config() for seed, r in zip(seeds, runs)}
    run_folders = [[os.path.join(dump_root, s), os.path.join(dump_root, "heldout", s)] for s in seeds]
    figures = measure(run_folders, [baseline_root], sets)
    paths = sorted({p for folders in run_folders for f in folders for p in glob.glob(os.path.join(f, "*.npz"))}
                   | set(glob.glob(os.path.join(baseline_root, "*__*.npz"))))
    stamp = stamp_of(command, configs, seeds, {os.path.relpath(p): files.file_digest(p) for p in paths})
    text = body({"stamp": stamp, "results": figures}, sets)
    return publish(md_path, "lesion size", evidence_path(md_path), stamp, figures, text, start, enclosed_by=MARKERS)


def evidence_path(md_path: str) -> str:
    return f"{os.path.splitext(md_path)[0]}_lesion_size.json"
