"""Reproducing the paper's Table 1 (latent size) and Table 2 (beta) and its ensemble line, over
several seeds, with the paper's findings judged on paired per-seed differences.

A *plan* (``configs/reproduce_*.json``, validated by ``load_plan``) says what to run:

- ``base``: the run config every setting starts from (relative to the plan file), ``set``: overrides
  (``KEY=VALUE``) for every run;
- ``seeds``: how many seeds (0, 1, ...) to train per setting, ``seeded_settings``: the
  ``[latent, beta]`` settings that get all of them (null: every setting); the others get seed 0;
- ``extras``: also measure, on the seeded settings, the gradient maps without the reference's
  smoothing and with the paper's Combi (``eval_plain``), and an ensemble over the recommended map,
  the intensity and Rec-grad (``eval_ensemble_plus``, beta 10 only).

One run per setting and seed (``RUNS/l<latent>_b<beta>_s<seed>``; 7 settings: latent 32/64/256 at
beta 1, beta 0.1/0.5/1/2/10 at latent 64), each evaluated into ``RUN/eval`` with the predictors its
table needs plus ``recommended`` and ``intensity``. Finished runs and evaluations made with the same
settings are reused and an interrupted run is resumed, so an interrupted reproduction continues
where it stopped; a run directory trained with other settings is an error unless ``retrain``.

Cells are mean +- std (ddof 1) over seeds. A finding compares two predictors (or settings) seed by
seed: the paired differences' mean ``d`` against their spread ``s`` (the std of the paired
differences; for a setting with one seed, the pooled spread of the same comparison on the settings
that have several, else ``DEFAULT_SPREAD``): ``d > s`` is "better", ``d < -s`` "worse", else "tie".
A claim that two maps perform *comparably* is an equivalence claim, judged by size rather than by
sign: it holds for a setting when ``|d| + s <= EQUIVALENCE`` (0.005 AUROC), even where a tiny
difference is consistent enough across seeds to be "better" or "worse".
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time

import numpy as np

from tfvae import config as config_lib
from tfvae.utils import files
from tfvae.studies import paper
from tfvae.runs.run import Run

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")
QUICK_PLAN = os.path.join(CONFIG_DIR, "reproduce_quick.json")
PAPER_PLAN = os.path.join(CONFIG_DIR, "reproduce_paper.json")
TWO_CORE_PLAN = os.path.join(CONFIG_DIR, "reproduce_2core.json")
# keys that only change the evaluation, not the trained model (a run is reused across them)
EVAL_ONLY_PREFIXES = ("predictors.", "postprocess.", "evaluate.", "recommended.", "ensemble.", "threshold.", "data.manual_dir",
                      "data.test_", "train.image_every", "train.num_images")
NAMES = {"recommended": "Recommended", "rec_error": "Rec-Error", "elbo_grad": "ELBO-grad", "kl_grad": "KL-grad",
         "rec_grad": "Rec-grad", "combi": "Combi", "proj_rec_error": "Proj-Rec-Error", "intensity": "Intensity*",
         "intensity_filtered": "Intensity filtered*", "ensemble": "Ensemble"}
DEFAULT_SPREAD = 0.005
CSV_HEADER = ["table", "varied", "setting", "predictor", "metric", "mean", "std", "seeds", "paper_auroc"]  # tables.csv
EQUIVALENCE = 0.005  # AUROC: "comparable" when the paired difference and its spread stay within it
TARGET = {"auroc_brain_gain": 0.05, "auprc_brain_ratio": 3.0, "dice_fpr01": 0.35}  # issue 10's target
PLAIN_MAPS = ["rec_error", "elbo_grad", "kl_grad", "rec_grad", "combi"]
ENSEMBLE_PLUS = ["recommended", "intensity", "rec_grad"]


@dataclasses.dataclass
class Plan:
    base: str
    overrides: list
    seeds: int
    seeded_settings: list | None
    extras: bool
    source: str = ""
    title: str = ""  # what the tables' titles say of the plan (e.g. "2-core plan: at most 30 epochs")
    settings: list | None = None  # the [latent, beta] settings trained (None: every one of the paper's)
    studies: dict = dataclasses.field(default_factory=dict)  # --all: the other studies' sizes (ALL_STUDIES)

    def seeds_for(self, latent: int, beta: float) -> list[int]:
        seeded = self.seeded_settings is None or [latent, beta] in [[l, float(b)] for l, b in self.seeded_settings]
        return list(range(self.seeds if seeded else 1))


def _seeded_settings(v):
    known = [[l, float(b)] for l, b in paper.settings()]
    for setting in v or []:
        if not (isinstance(setting, list) and len(setting) == 2 and [setting[0], float(setting[1])] in known):
            return f"entries must be [latent, beta] of the paper's tables ({known}), got {setting!r}; it"
    return None


# ``--all``: the studies beside the paper's tables and the keys a plan's ``studies`` may set for each
# (the sizes the tests shrink; left out, each study's own defaults)
ALL_STUDIES = {"cross_domain": ("base", "seeds", "test_sets", "calibration_scans", "calibration_sites"),
               "threshold_study": ("design_sets", "share_sites", "share_subjects", "held_out_sets",
                                   "held_out_share_sites", "screening_sites"),
               "lesion_size": ("sets",), "second_restoration": ("sets",), "beta_search": ("search", "seeds")}


def _list_of(kind, length=None):
    def check(v):
        return isinstance(v, list) and all(isinstance(i, kind) and not isinstance(i, bool) for i in v) and (
            length is None or all(len(i) == length for i in v))
    return check


# what each key of a plan's ``studies`` holds: (check, what the error says it must be)
STUDY_VALUES = {
    "base": (lambda v: isinstance(v, str), "a config file"),
    "search": (lambda v: isinstance(v, str), "a search config file or a shipped search's name"),
    "seeds": (_list_of(int), "a list of integers"), "calibration_scans": (_list_of(int), "a list of integers"),
    "share_subjects": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1"),
    "calibration_sites": (lambda v: v is None or _list_of(str)(v), "null or a list of test-set names"),
    "sets": (_list_of(list, 3), "a list of [test set, tumours, role] lists"),
}


def _studies(v):
    for study, keys in v.items():
        if study not in ALL_STUDIES:
            return f"unknown study {study!r} (known: {', '.join(ALL_STUDIES)}); it"
        if not isinstance(keys, dict) or set(keys) - set(ALL_STUDIES[study]):
            return f"{study}: keys must be among {', '.join(ALL_STUDIES[study])}, got {keys!r}; it"
        for key, value in keys.items():
            check, what = STUDY_VALUES.get(key, (_list_of(str), "a list of test-set names"))
            if not check(value):
                return f"{study}.{key} must be {what}, got {value!r}; it"
    return None


PLAN_SCHEMA = {
    "description": config_lib.Field((str,), ""),
    "base": config_lib.Field((str,), config_lib.REQUIRED),
    "set": config_lib.Field((list,), [], lambda v: None if all(isinstance(i, str) for i in v)
                            else "must be a list of KEY=VALUE strings"),
    "seeds": config_lib.Field((int,), 1, lambda v: None if v >= 1 else "must be >= 1"),
    "seeded_settings": config_lib.Field((list, type(None)), None, _seeded_settings),
    "extras": config_lib.Field((bool,), False),
    "title": config_lib.Field((str,), ""),
    "settings": config_lib.Field((list, type(None)), None, _seeded_settings),
    "studies": config_lib.Field((dict,), {}, _studies),
}


def load_plan(path: str, seeds: int | None = None, overrides=()) -> Plan:
    """The plan at ``path`` (keys: ``PLAN_SCHEMA``, validated as run configs are); ``seeds``
    replaces its seed count, ``overrides`` are added to its ``set``. Raises ``config.ConfigError``
    (one line naming the file and the key) for a bad plan."""
    path = config_lib.locate(path)  # a file, or a shipped plan by name (reproduce_quick, or quick)
    if not os.path.exists(path) and not os.path.dirname(path) and not path.startswith("reproduce_"):
        path = config_lib.locate("reproduce_" + path)  # --plan 2core: configs/reproduce_2core.json
    raw = config_lib.read_json(path, "plan file")
    plan = config_lib.validate(raw, PLAN_SCHEMA, path, what="a plan")
    if seeds is not None:
        plan = config_lib.validate({**raw, "seeds": seeds}, PLAN_SCHEMA, f"{path} (--seeds)", what="a plan")
    base = plan["base"] if os.path.isabs(plan["base"]) else os.path.join(os.path.dirname(os.path.abspath(path)),
                                                                          plan["base"])
    return Plan(base, list(plan["set"]) + list(overrides), plan["seeds"], plan["seeded_settings"], plan["extras"],
                path, plan["title"], plan["settings"], plan["studies"])


def run_name(latent: int, beta: float, seed: int) -> str:
    return f"l{latent}_b{beta:g}_s{seed}"


def predictors_for(latent: int, beta: float) -> list[str]:
    """The table's predictors of this setting, the recommended map and the two intensity baselines."""
    out = ["recommended", *paper.TABLE1_PREDICTORS]
    if latent == paper.TABLE2_LATENT and beta in paper.BETAS:
        out.append("proj_rec_error")
    if (latent, beta) == (paper.ENSEMBLE["latent_dim"], paper.ENSEMBLE["beta"]):
        out.append("ensemble")
    return out + ["intensity", "intensity_filtered"]


def configs(plan: Plan) -> dict[tuple, dict]:
    """``{(latent, beta, seed): run config}`` for every run of the plan."""
    out = {}
    for latent, beta in settings_of(plan):
        for seed in plan.seeds_for(latent, beta):
            out[(latent, beta, seed)] = config_lib.load(plan.base, plan.overrides + [
                f"name={run_name(latent, beta, seed)}", f"seed={seed}", f"model.latent_dim={latent}",
                f"model.beta={beta}", "evaluate.predictors=" + json.dumps(predictors_for(latent, beta))])
    return out


def training_keys(config: dict) -> dict:
    return {k: v for k, v in config_lib.flatten(config).items() if not k.startswith(EVAL_ONLY_PREFIXES)
            and k != "name"}


class RetrainError(ValueError):
    """A run directory holds a run trained with other settings."""


def check_trained_with(config: dict, run_dir: str, retrain: bool = False) -> bool:
    """Whether ``run_dir`` holds a run trained with ``config``'s training settings; a run trained
    with other settings is a ``RetrainError`` unless ``retrain``."""
    run = Run(run_dir)
    if not run.is_run:
        return False
    saved, wanted = training_keys(config_lib.load(run.config_path)), training_keys(config)
    if saved != wanted and not retrain:
        diff = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
        from tfvae.utils.console import option

        raise RetrainError(f"{run_dir} was trained with other settings ({', '.join(diff)}); pass "
                           f"{option('--retrain', 'retrain=True')} to replace it or "
                           f"{option('--runs-dir', 'another runs_dir')} to use another folder")
    return saved == wanted


def ensure_trained(config: dict, run_dir: str, retrain: bool = False, verbose=2) -> str:
    """Train the run (or reuse / resume it); returns what was done."""
    run = Run(run_dir)
    if check_trained_with(config, run_dir, retrain):
        if os.path.isfile(run.model_path("final")):
            return "reused"
        Run.create(run_dir, config, resume=True).train(verbose=verbose)  # interrupted: continue from its backup
        return "resumed"
    Run.create(run_dir, config, overwrite=retrain).train(verbose=verbose)
    return "trained"


def ensure_evaluated(config: dict, run_dir: str, reevaluate: bool = False, verbose: bool = False,
                     name: str = "eval") -> dict:
    """The results of ``RUN/<name>``, computed unless an evaluation with the same config is there."""
    run = Run(run_dir)
    found = None if reevaluate else run.finished_evaluation(config, name)
    if found is not None:
        return found
    return run.evaluate(config=config, out_dir=os.path.join(run_dir, name), overwrite=True, verbose=verbose)


def extras_for(config: dict) -> dict[str, dict]:
    """The extra evaluations of a seeded run: ``{folder name: config}``."""
    latent, beta = config["model"]["latent_dim"], config["model"]["beta"]
    out = {"eval_plain": config_lib.resolve(config, [
        "predictors.smooth_gradients=false", "predictors.combi=paper",
        "evaluate.predictors=" + json.dumps(PLAIN_MAPS)])}
    if (latent, beta) == (paper.ENSEMBLE["latent_dim"], paper.ENSEMBLE["beta"]):
        out["eval_ensemble_plus"] = config_lib.resolve(config, [
            "ensemble.features=" + json.dumps(ENSEMBLE_PLUS), 'evaluate.predictors=["ensemble", "rec_grad"]'])
    return out


def history(run_dir: str) -> dict:
    """Epochs trained, the best epoch (1-based) and its validation loss, from history.csv."""
    with open(Run(run_dir).history_path, newline="") as f:
        losses = [float(row["val_loss"]) for row in csv.DictReader(f)]
    best = int(np.argmin(losses)) if losses else -1
    return {"epochs": len(losses), "best_epoch": best + 1, "best_val_loss": losses[best] if losses else None}


# --- statistics ------------------------------------------------------------------------------------
def value(results: dict, predictor: str, metric: str):
    r = results.get(predictor)
    return None if r is None else r.get(metric)


def cell_stats(values) -> tuple[float, float, int] | None:
    """(mean, std with ddof 1 (0 for one value), n) of the non-missing values, or None."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, len(values)


def paired(first: list, second: list) -> list[float]:
    """Per-seed differences first - second, over the seeds that have both."""
    return [a - b for a, b in zip(first, second) if a is not None and b is not None]


def judge(diffs: list[float], pooled: float | None = None) -> dict:
    """``{"mean", "spread", "n", "verdict"}``: better / worse / tie against the spread of the
    paired differences (for one seed: ``pooled``, else ``DEFAULT_SPREAD``)."""
    mean = float(np.mean(diffs))
    if len(diffs) > 1:
        spread = float(np.std(diffs, ddof=1))
    else:
        spread = pooled if pooled is not None else DEFAULT_SPREAD
    margin = max(spread, 1e-9)  # differences at float rounding are ties too
    verdict = "better" if mean > margin else "worse" if mean < -margin else "tie"
    return {"mean": mean, "spread": spread, "n": len(diffs), "verdict": verdict}


def pooled_spread(all_diffs: list[list[float]]) -> float | None:
    """sqrt of the mean variance of the paired differences of the settings with several seeds."""
    variances = [np.var(d, ddof=1) for d in all_diffs if len(d) > 1]
    return float(np.sqrt(np.mean(variances))) if variances else None


def compare(per_setting: dict, first: str, second: str, metric: str = "auroc", settings=None) -> dict:
    """``{setting: judge(...)}`` of ``first`` against ``second`` on ``metric`` over the seeds of
    each setting; ``per_setting[(latent, beta)]`` is a list of per-seed results."""
    settings = [s for s in (settings or per_setting) if s in per_setting]
    diffs = {s: paired([value(r, first, metric) for r in per_setting[s]],
                       [value(r, second, metric) for r in per_setting[s]]) for s in settings}
    diffs = {s: d for s, d in diffs.items() if d}
    pooled = pooled_spread(list(diffs.values()))
    return {s: judge(d, pooled) for s, d in diffs.items()}


def _fmt(stats, digits=3) -> str:
    if stats is None:
        return "—"
    mean, std, n = stats
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


# --- tables ----------------------------------------------------------------------------------------
def table_rows(per_setting: dict, table: int, metric: str = "auroc"):
    """``(rows, predictors)``: per row the setting and predictor -> (mean, std, n)."""
    if table == 1:
        keys = [((l, paper.TABLE1_BETA), l) for l in paper.LATENT_SIZES]
        predictors = ["recommended", *paper.TABLE1_PREDICTORS, "intensity", "intensity_filtered"]
    else:
        keys = [((paper.TABLE2_LATENT, b), b) for b in paper.BETAS]
        predictors = ["recommended", *paper.TABLE2_PREDICTORS, "intensity", "intensity_filtered"]
    rows = []
    for key, setting in keys:
        seeds = per_setting.get(key, [])
        rows.append({"key": key, "setting": setting, "seeds": len(seeds),
                     "values": {p: cell_stats([value(r, p, metric) for r in seeds]) for p in predictors}})
    return rows, predictors


def render(per_setting: dict, compare_paper: bool, metric: str = "auroc", suffix: str = "") -> tuple[str, list[list]]:
    """Both tables (markdown) and CSV rows. With ``compare_paper`` (BraTS 2018 test data), each cell
    has, in brackets, our AUROC over the reference code's pixels (``auroc_reference``, from
    ``evaluate.pixel_set: reference``), the paper's number and the difference of the two -- the
    comparison made on the pixels the paper's number is over, or said to be missing;
    ``metric="auroc_brain"`` gives brain pixels only; ``suffix`` (the test set's role, the plan's
    title) ends each table's title."""
    compare_paper = compare_paper and metric == "auroc"
    lines, csv_rows = [], []
    what = "AUROC" if metric == "auroc" else "AUROC inside the brain mask"
    for table, label, title in ((1, "latent size l", f"Table 1: {what}, VAE (beta 1)"),
                                (2, "beta", f"Table 2: {what}, beta-VAE (latent {paper.TABLE2_LATENT})")):
        title += f" ({suffix})" if suffix else ""
        rows, predictors = table_rows(per_setting, table, metric)
        lines += [f"### {title}", "", "| " + " | ".join([label, "seeds"] + [NAMES[p] for p in predictors]) + " |",
                  "|" + "---|" * (len(predictors) + 2)]
        for row in rows:
            cells = [f"{row['setting']:g}", str(row["seeds"])]
            for p in predictors:
                stats = row["values"][p]
                pub = paper.published(table, row["setting"], p)
                cell = _fmt(stats)
                if compare_paper and pub is not None and stats is not None:
                    ref = cell_stats([value(r, p, "auroc_reference") for r in per_setting[row["key"]]])
                    cell += (f" (reference pixels {ref[0]:.3f}; paper {pub:.3f}, {ref[0] - pub:+.3f})" if ref
                             else f" (paper {pub:.3f}; not comparable: not on the reference's pixels)")
                cells.append(cell)
                csv_rows.append([table, label.split()[0], row["setting"], p, metric,
                                 *(stats if stats else (None, None, 0)), pub])
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(("Cells: pixel AUROC over all pixels of all test slices (the paper's convention)"
                  if metric == "auroc" else "Cells: pixel AUROC over brain pixels only (not in the paper)")
                 + ", mean ± std over seeds" + ("; in brackets the same over the reference code's pixels (whole "
                                                "slices but the first and last 20, as the paper's), the paper's "
                                                "number and the difference of those two." if compare_paper else "."))
    lines.append("Recommended, Intensity* (the plain-threshold baseline) and Intensity filtered* (the same through "
                 "the recommended map's recipe, no model) are not in the paper.")
    return "\n".join(lines), csv_rows


def target_table(per_setting: dict) -> tuple[str, list[str]]:
    """The recommended map against both intensity baselines inside the brain, with its measured
    false-positive rates at the 1% threshold, per setting; the target's verdict lines (judged on the
    settings with several seeds), and what the model adds over ``intensity_filtered`` (paired)."""
    metrics_ = (("auroc_brain", "AUROC brain"), ("auprc_brain", "AUPRC brain"), ("dice_fpr01", "Dice@1%FPR"))
    baselines = (("recommended", "recommended"), ("intensity_filtered", "intensity filtered"), ("intensity", "intensity"))
    fprs = (("measured_fpr01", "FPR@1%"), ("measured_fpr01_far", "FPR@1% >6mm"))
    lines = ["| latent | beta | seeds | " + " | ".join(f"{n} {b}" for _, n in metrics_ for _, b in baselines)
             + " | " + " | ".join(f"{n} recommended" for _, n in fprs) + " |",
             "|" + "---|" * (3 + len(baselines) * len(metrics_) + len(fprs))]
    for (latent, beta), seeds in per_setting.items():
        cells = [str(latent), f"{beta:g}", str(len(seeds))]
        for m, _ in metrics_:
            cells += [_fmt(cell_stats([value(r, p, m) for r in seeds])) for p, _ in baselines]
        for m, _ in fprs:
            stats = cell_stats([None if v is None else 100 * v for v in (value(r, "recommended", m) for r in seeds)])
            cells.append(_fmt(stats, 2) + "%" if stats else "—")
        lines.append("| " + " | ".join(cells) + " |")
    verdicts = []
    for (latent, beta), seeds in per_setting.items():
        if len(seeds) < 2 or not all("recommended" in r for r in seeds):
            continue
        gain = judge(paired([value(r, "recommended", "auroc_brain") - TARGET["auroc_brain_gain"] for r in seeds],
                            [value(r, "intensity", "auroc_brain") for r in seeds]))
        ratios = [value(r, "recommended", "auprc_brain") / value(r, "intensity", "auprc_brain") for r in seeds]
        ratio = judge([x - TARGET["auprc_brain_ratio"] for x in ratios])
        dice = judge([value(r, "recommended", "dice_fpr01") - TARGET["dice_fpr01"] for r in seeds])
        ok = all(j["verdict"] == "better" for j in (gain, ratio, dice))
        verdicts.append(
            f"latent {latent}, beta {beta:g} ({len(seeds)} seeds): AUROC brain gain over intensity "
            f"{gain['mean'] + TARGET['auroc_brain_gain']:+.3f} ± {gain['spread']:.3f} (target +{TARGET['auroc_brain_gain']}); "
            f"AUPRC brain ratio {np.mean(ratios):.1f}x ± {ratio['spread']:.1f} (target {TARGET['auprc_brain_ratio']:g}x); "
            f"Dice@1%FPR {dice['mean'] + TARGET['dice_fpr01']:.3f} ± {dice['spread']:.3f} (target {TARGET['dice_fpr01']}) "
            f"-> {'met, beyond the seed spread' if ok else 'not met'}.")
        added = {n: judge(paired([value(r, "recommended", m) for r in seeds],
                                 [value(r, "intensity_filtered", m) for r in seeds]))
                 for m, n in metrics_ if all("intensity_filtered" in r for r in seeds)}
        if added:
            verdicts.append(f"latent {latent}, beta {beta:g} ({len(seeds)} seeds), what the model adds over "
                            "intensity_filtered (the same recipe, no model), paired: "
                            + "; ".join(f"{n} {j['mean']:+.3f} ± {j['spread']:.3f} ({j['verdict']})"
                                        for n, j in added.items()) + ".")
    return "\n".join(lines), verdicts


def comparable(j: dict) -> bool:
    """Equivalence: the paired difference, widened by its spread, stays within ``EQUIVALENCE``."""
    return abs(j["mean"]) + j["spread"] <= EQUIVALENCE


def _summary(judged: dict, label, equivalence: bool = False) -> tuple[str, dict]:
    counts = {v: sum(j["verdict"] == v for j in judged.values()) for v in ("better", "tie", "worse")}
    if equivalence:
        counts["comparable"] = sum(comparable(j) for j in judged.values())
    parts = [f"{label(s)}: {j['mean']:+.3f} ± {j['spread']:.3f} ({j['n']} seed{'s' if j['n'] > 1 else ''}, {j['verdict']}"
             + (f"; {'within' if comparable(j) else 'beyond'} ±{EQUIVALENCE:g}" if equivalence else "") + ")"
             for s, j in judged.items()]
    return "; ".join(parts), counts


def _setting_label(s) -> str:
    return f"l{s[0]} b{s[1]:g}"


def _verdict(counts: dict, want: str) -> str:
    total = sum(counts[v] for v in ("better", "tie", "worse"))
    if not total:
        return "not measured"
    if counts[want] == total:
        return "holds"
    if want == "comparable":
        if counts[want]:
            return f"holds in part ({counts[want]} of {total} within ±{EQUIVALENCE:g})"
        return "undecided (the seed spread is wider than the margin)" if counts["tie"] == total else "does not hold"
    if counts[want]:
        return (f"holds in part ({counts[want]} of {total}: {counts['better']} better, {counts['tie']} tie, "
                f"{counts['worse']} worse)")
    return "tie" if counts["tie"] == total else "does not hold"


def findings(per_setting: dict) -> list[str]:
    """The paper's claims, each judged on paired per-seed differences (see the module docstring)."""
    out = []
    table2 = [(paper.TABLE2_LATENT, b) for b in paper.BETAS]

    def claim(text, first, second, want, metric="auroc", settings=None):
        judged = compare(per_setting, first, second, metric, settings)
        detail, counts = _summary(judged, _setting_label, equivalence=want == "comparable")
        out.append(f"{text}: {detail} -> {_verdict(counts, want)}.")

    claim("Rec-grad beats Rec-Error (paper: in every row, by ~0.03-0.05)", "rec_grad", "rec_error", "better")
    claim("ELBO-grad and Rec-grad perform comparably (paper: within 0.001)", "elbo_grad", "rec_grad", "comparable")
    claim("KL-grad is worse than Rec-grad (paper: in every row)", "kl_grad", "rec_grad", "worse")
    claim("Combi is worse than Rec-grad (paper: in every row)", "combi", "rec_grad", "worse")
    claim("Projection improves Rec-Error (paper: Proj-Rec-Error > Rec-Error for every beta, by ~0.005)",
          "proj_rec_error", "rec_error", "better", settings=table2)

    def across(text, predictor, low, high, want):
        a, b = per_setting.get(high, []), per_setting.get(low, [])
        diffs = paired([value(r, predictor, "auroc") for r in a], [value(r, predictor, "auroc") for r in b])
        if not diffs:
            return
        j = judge(diffs)
        counts = {v: int(j["verdict"] == v) for v in ("better", "tie", "worse")}
        counts["comparable"] = int(comparable(j))
        size = f"; {'within' if comparable(j) else 'beyond'} ±{EQUIVALENCE:g}" if want == "comparable" else ""
        out.append(f"{text}: {_setting_label(high)} - {_setting_label(low)} = {j['mean']:+.3f} ± {j['spread']:.3f} "
                   f"({j['n']} seed pair{'s' if j['n'] > 1 else ''}, {j['verdict']}{size}) -> {_verdict(counts, want)}.")

    across("Combi degrades as beta grows (paper: .800 at beta 1 -> .749 at beta 10)", "combi",
           (paper.TABLE2_LATENT, 1.0), (paper.TABLE2_LATENT, 10.0), "worse")
    across("beta 10 gives better gradient predictors than beta 1 (paper: Rec-grad .900 -> .905)", "rec_grad",
           (paper.TABLE2_LATENT, 1.0), (paper.TABLE2_LATENT, 10.0), "better")
    across("KL-grad does not depend on beta (paper: .809 at beta 1, .810 at beta 10)", "kl_grad",
           (paper.TABLE2_LATENT, 1.0), (paper.TABLE2_LATENT, 10.0), "comparable")
    across("A large latent space (256) gives worse gradient predictors than 64 (paper: Rec-grad .900 -> .871 at "
           "beta 1)", "rec_grad", (64, 1.0), (256, 1.0), "worse")
    key = (paper.ENSEMBLE["latent_dim"], paper.ENSEMBLE["beta"])
    seeds = per_setting.get(key, [])
    diffs = paired([value(r, "ensemble", "auroc") for r in seeds],
                   [(r.get("rec_grad", {}).get("ensemble_volumes") or {}).get("auroc") for r in seeds])
    if diffs:
        j = judge(diffs)
        verdict = "holds" if j["verdict"] != "better" else "does not hold"
        out.append(f"The ensemble does not beat Rec-grad (paper: .903 vs .905), both on the ensemble's scored "
                   f"volumes: ensemble - Rec-grad = {j['mean']:+.3f} ± {j['spread']:.3f} ({j['n']} seeds, "
                   f"{j['verdict']}) -> {verdict}.")
    return out


def plateau_table(histories: dict) -> str:
    """Where each run stopped, and (where measured) how long it took to train and to evaluate."""
    def minutes(seconds):
        return "—" if seconds is None else f"{seconds / 60:.1f}"

    lines = ["| run | epochs trained | best epoch | best validation loss | train min | evaluate min |",
             "|---|---|---|---|---|---|"]
    for name, h in histories.items():
        lines.append(f"| {name} | {h['epochs']} | {h['best_epoch']} | {h['best_val_loss']:.1f} | "
                     f"{minutes(h.get('train_s'))} | {minutes(h.get('evaluate_s'))} |")
    return "\n".join(lines)


def extras_section(extras: dict) -> str:
    """Markdown for the extra evaluations: reference map-making against the plain maps, and the
    ensemble over the recommended map, the intensity and Rec-grad."""
    lines = []
    plain = {s: [r for r in runs if r] for s, runs in extras.get("eval_plain", {}).items()}
    main_ = extras.get("eval", {})
    if plain:
        lines += ["### Reference map-making against plain maps", "",
                  "The same models, the gradient maps without the reference's 7x7 smoothing and Combi as the "
                  "paper's product (`predictors.smooth_gradients=false predictors.combi=paper`); AUROC over all "
                  "pixels, then inside the brain, mean ± std over seeds, and the paired difference reference - plain.",
                  "", "| setting | map | reference | plain | difference | AUROC brain reference | plain | difference |",
                  "|---|---|---|---|---|---|---|---|"]
        for s, runs in plain.items():
            ref = main_.get(s, [])
            for p in ("elbo_grad", "kl_grad", "rec_grad", "combi"):
                cells = [_setting_label(s), NAMES[p]]
                for m in ("auroc", "auroc_brain"):
                    a, b = [value(r, p, m) for r in ref], [value(r, p, m) for r in runs]
                    d = paired(a, b)
                    j = judge(d) if d else None
                    cells += [_fmt(cell_stats(a)), _fmt(cell_stats(b)),
                              f"{j['mean']:+.3f} ± {j['spread']:.3f} ({j['verdict']})" if j else "—"]
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    plus = extras.get("eval_ensemble_plus", {})
    for s, runs in plus.items():
        runs = [r for r in runs if r]
        if not runs:
            continue
        lines += [f"### Ensemble over {', '.join(NAMES[p] for p in ENSEMBLE_PLUS)} ({_setting_label(s)})", "",
                  "Fitted on 10% of the test volumes with their labels (as the paper's ensemble), scored on the rest; "
                  "every map measured on those same volumes.", "",
                  "| map | AUROC | AUROC brain | AUPRC brain | Dice@1%FPR |", "|---|---|---|---|---|"]
        ref = main_.get(s, [])
        rows = {"ensemble (recommended, intensity, Rec-grad)": [r.get("ensemble") for r in runs],
                "ensemble (paper: Rec-Error, KL-grad, Rec-grad)": [r.get("ensemble") for r in ref],
                **{NAMES[p]: [(r.get(p) or {}).get("ensemble_volumes") for r in ref]
                   for p in ("recommended", "rec_grad", "intensity")}}
        for name, results in rows.items():
            results = [r for r in results if r]
            lines.append("| " + " | ".join([name] + [_fmt(cell_stats([r.get(m) for r in results]))
                                                  for m in ("auroc", "auroc_brain", "auprc_brain", "dice_fpr01")]) + " |")
        lines.append("")
    return "\n".join(lines)


# --- the whole reproduction --------------------------------------------------------------------------
WALL_TIME = "reproduce_wall_s.json"  # RUN/<this>: how long the run took to train and evaluate, when it was


def _wall(run_dir: str, key: str, seconds: float | None = None):
    """The run's recorded wall time of ``key`` (``train_s``, ``evaluate_s``), or record ``seconds``."""
    path = os.path.join(run_dir, WALL_TIME)
    recorded = json.load(open(path)) if os.path.isfile(path) else {}
    if seconds is None:
        return recorded.get(key)
    recorded[key] = round(seconds, 1)
    files.write_json(path, recorded)
    return recorded[key]


def reproduce(plan: Plan, runs_dir: str, out_dir: str, md_path: str | None = None, *, retrain: bool = False,
              reevaluate: bool = False, verbose: bool = True, command: str = "", log=print,
              report_only: bool = False) -> dict:
    """Train and evaluate every run of ``plan`` (reusing what is done), write ``tables.md`` (or
    ``md_path``), ``tables.csv`` and ``tables.json`` to ``out_dir``; returns the per-setting results.
    The document is ``document(evidence)``: with ``md_path``, that evidence is written beside it
    (``<doc>.json``), stamped (the commit, the plan, each run's resolved config and seed, the data's
    fingerprint, each run's wall time and this command's). ``report_only``: train and evaluate
    nothing, write the tables of the runs finished so far (the document says which runs are missing)."""
    from tfvae.data import pipelines as data
    from tfvae.studies import evidence

    runs = configs(plan)
    first = next(iter(runs.values()))
    data.check_available(first["data"])
    for (latent, beta, seed), config in runs.items():  # refuse before anything is trained
        check_trained_with(config, os.path.join(runs_dir, run_name(latent, beta, seed)), retrain)
    results_of: dict = {}
    extras: dict = {}
    histories = {}
    walls = {}
    missing: list[str] = []
    start = time.time()
    # the settings with several seeds first (the findings rest on them), then the others
    order = sorted(runs, key=lambda k: -len(plan.seeds_for(k[0], k[1])))
    for latent, beta, seed in order:
        config = runs[(latent, beta, seed)]
        name = run_name(latent, beta, seed)
        run_dir = os.path.join(runs_dir, name)
        t0, evaluated = time.time(), None
        if report_only:
            results = Run(run_dir).finished_evaluation(config)
            if results is None:
                missing.append(name)
                continue
            done, t1 = "reported", time.time()
        else:
            done = ensure_trained(config, run_dir, retrain, verbose=2 if verbose else 0)
            t1 = time.time()
            if done != "reused":
                _wall(run_dir, "train_s", t1 - t0 + (_wall(run_dir, "train_s") or 0 if done == "resumed" else 0))
            evaluated = None if reevaluate else Run(run_dir).finished_evaluation(config)
            results = ensure_evaluated(config, run_dir, reevaluate, verbose)
        results_of[name] = results
        histories[name] = history(run_dir)
        if plan.extras and len(plan.seeds_for(latent, beta)) > 1:
            for extra_name, extra in extras_for(config).items():
                found = (Run(run_dir).finished_evaluation(extra, extra_name) if report_only
                         else ensure_evaluated(extra, run_dir, reevaluate, verbose, name=extra_name))
                if found is not None:
                    extras.setdefault(extra_name, {})[name] = found
        if not report_only and evaluated is None:
            _wall(run_dir, "evaluate_s", time.time() - t1)
        walls[name] = {"train_s": _wall(run_dir, "train_s"), "evaluate_s": _wall(run_dir, "evaluate_s")}
        histories[name].update(walls[name])
        log(f"[{time.time() - start:6.0f}s] {run_dir}: {done} ({t1 - t0:.0f}s), evaluated ({time.time() - t1:.0f}s)")

    found_configs = {run_name(*k): runs[k] for k in runs if run_name(*k) in results_of}
    stamp = evidence.stamp(command, found_configs or {run_name(*next(iter(runs))): first})
    md_file = md_path or os.path.join(out_dir, "tables.md")
    written = evidence_path(md_path) if md_path else os.path.join(out_dir, "evidence.json")
    source = os.path.relpath(plan.source, os.path.dirname(CONFIG_DIR)) if plan.source else ""
    stamp.update({"evidence": os.path.basename(written), "plan": {"source": source,
                           "title": plan.title, "base": os.path.basename(plan.base), "seeds": plan.seeds,
                           "seeded_settings": plan.seeded_settings, "settings": [list(s) for s in settings_of(plan)],
                           "overrides": list(plan.overrides), "extras": plan.extras},
                  "runs_wall_s": walls, "wall_s": round(time.time() - start, 1)})
    evidence = make_evidence(results_of, extras, histories, missing, stamp)
    per_setting = per_setting_of(evidence)
    claims, verdicts = evidence["findings"], evidence["target"]
    md, csv_rows = render(per_setting, _compare_paper(first), suffix=_label_of(evidence))
    _, csv_brain = render(per_setting, False, metric="auroc_brain")
    os.makedirs(out_dir, exist_ok=True)
    files.write_csv(os.path.join(out_dir, "tables.csv"), csv_rows + csv_brain, header=CSV_HEADER)
    files.write_json(os.path.join(out_dir, "tables.json"), results_of)
    files.write_json(written, evidence)  # beside the document: every run's cells, the effects, every verdict
    kept = _kept_notes(md_file) or (f"\n{NOTES_MARKER}\n" if md_path else "")
    files.write_text(md_file, document(evidence, cross_domain_md=md_path if CROSS_DOMAIN_BEGIN in kept else None)
                     + kept)
    extras_by_setting = {"eval": per_setting, **{n: _by_setting(r) for n, r in evidence["extras"].items()}}
    return {"per_setting": per_setting, "findings": claims, "target": verdicts, "extras": extras_by_setting,
            "missing": missing, "evidence": evidence}


def settings_of(plan: Plan) -> list[tuple]:
    """The paper's settings the plan trains (``settings``; default every one)."""
    return [(l, float(b)) for l, b in (plan.settings if plan.settings is not None else paper.settings())]


def evidence_path(md_path: str) -> str:
    """Where the paper tables' evidence is written beside their document: ``<doc>.json``."""
    return os.path.splitext(md_path)[0] + ".json"


def _compare_paper(config: dict) -> bool:
    from tfvae.data import pipelines as data

    test_data = data.test_data_config(config["data"])
    return test_data["name"] == paper.TEST_DATASET and data.brats_releases(test_data) == ["2018"]


def test_role(config: dict) -> str:
    """What the test set of a run config was to the design: ``design set`` for the phantom's test
    sets the recommended recipe and the per-scan rule were chosen on (its default test split and
    shifted sites), ``held out`` for the others (the phantom's ``heldout_*`` sites, real data)."""
    from tfvae.studies import cross_domain
    from tfvae.data import pipelines as data

    test_data = data.test_data_config(config["data"])
    return ("design set" if test_data["name"] == "brain_phantom" and test_data["config"] not in cross_domain.HELD_OUT
            else "held out")


def _label_of(evidence: dict) -> str:
    """What every table title of the document says: its test set's role and the plan's title."""
    config = next(iter(evidence["stamp"]["configs"].values()))
    title = evidence["stamp"]["plan"].get("title")
    return test_role(config) + (f"; {title}" if title else "")


def _parse_run(name: str) -> tuple[int, float, int]:
    latent, beta, seed = name.split("_")
    return int(latent[1:]), float(beta[1:]), int(seed[1:])


def _by_setting(by_run: dict) -> dict:
    """``{run name: results}`` as ``{(latent, beta): [results by seed]}``, in the paper's order."""
    out: dict = {}
    for name in sorted(by_run, key=lambda n: _parse_run(n)[2]):
        latent, beta, _ = _parse_run(name)
        out.setdefault((latent, beta), []).append(by_run[name])
    return {k: out[k] for k in paper.settings() if k in out}


def per_setting_of(evidence: dict) -> dict:
    """The evidence's runs as ``{(latent, beta): [results by seed]}`` (what the tables are made of)."""
    return _by_setting(evidence["runs"])


EVIDENCE_METRICS = ("auroc", "auprc", "auroc_brain", "auprc_brain", "best_dice", "dice_fpr01", "dice_fpr05",
                    "measured_fpr01", "measured_fpr05", "measured_fpr01_far", "measured_fpr05_far",
                    "auroc_reference")


def _cells(results: dict) -> dict:
    """A predictor's figures the document shows (``EVIDENCE_METRICS``), with those on the ensemble's
    scored volumes (``ensemble_volumes``)."""
    out = {}
    for p, r in results.items():
        if isinstance(r, dict):
            out[p] = {m: r[m] for m in EVIDENCE_METRICS if m in r}
            if isinstance(r.get("ensemble_volumes"), dict):
                out[p]["ensemble_volumes"] = {m: r["ensemble_volumes"][m] for m in EVIDENCE_METRICS
                                              if m in r["ensemble_volumes"]}
    return out


def make_evidence(results_of: dict, extras: dict, histories: dict, missing: list, stamp: dict) -> dict:
    """What the document's numbers rest on, as JSON: every run's figures (per predictor), the extra
    evaluations' (the measured effects), where each run stopped, the runs missing, every judged
    claim with its verdict -- those that fail beside those that hold -- and the ``stamp``."""
    runs = {name: _cells(r) for name, r in results_of.items()}
    per_setting = _by_setting(runs)
    claims = findings(per_setting)
    _, verdicts = target_table(per_setting)
    return {"stamp": stamp, "runs": runs,
            "extras": {name: {run: _cells(r) for run, r in by_run.items() if r} for name, by_run in extras.items()},
            "histories": histories, "missing": missing, "findings": claims, "target": verdicts}


def document(evidence: dict, cross_domain_md: str | None = None) -> str:
    """The paper tables' markdown document, made from its ``evidence`` alone (``make_evidence``) --
    a document that differs from what its evidence renders to is out of date (tested against
    ``docs/results_phantom.md``); ``cross_domain_md``: the document holds the cross-domain section
    too (a line says how it is made)."""
    stamp, plan = evidence["stamp"], evidence["stamp"]["plan"]
    first = next(iter(stamp["configs"].values()))
    per_setting = per_setting_of(evidence)
    missing = evidence.get("missing", [])
    label = _label_of(evidence)
    from tfvae.data import pipelines as data

    test_data = data.test_data_config(first["data"])
    md, _ = render(per_setting, _compare_paper(first), suffix=label)
    md_brain, _ = render(per_setting, False, metric="auroc_brain", suffix=label)
    target, _ = target_table(per_setting)
    t = first["train"]
    seeded = plan["seeded_settings"]
    role = test_role(first)
    text = [f"# The paper's tables on {test_data['name']}/{test_data['config']} ({first['data']['image_size']}px)"
            + (f": {plan['title']}" if plan.get("title") else ""), "",
            "Made by", "", f"```bash\n{stamp['command'].strip()}\n```", "",
            f"Plan `{plan['source']}`: base config `{plan['base']}`, Adam lr {t['learning_rate']:g}, batch "
            f"{t['batch_size']}, at most {t['epochs']} epochs" + (
                f", stopped when the validation loss had not improved for {t['patience']} epochs (best epoch kept)"
                if t["patience"] else "")
            + f", projection {first['predictors']['projection_steps']} steps (lambda "
            f"{first['predictors']['projection_lambda']:g}, lr {first['predictors']['projection_lr']:g}); "
            f"seeds: {plan['seeds']} for " + ("every setting" if seeded is None else
                                              ", ".join(f"latent {l} beta {float(b):g}" for l, b in seeded)
                                              + ", 1 for the others")
            + f"; overrides: {' '.join(plan['overrides']) or 'none'}. Evidence: `{evidence_name(stamp)}` beside this "
            f"document (every run's figures, resolved config and seed, the data's fingerprint, the wall times; "
            f"commit `{stamp['commit'][:7]}`)." + _wall_line(stamp), "",
            (f"**Every figure of these tables is on a design set**: the test split of `{test_data['name']}/"
             f"{test_data['config']}`, whose subjects the recommended recipe and the per-scan threshold rule were "
             "designed on (`threshold_study.md`); figures on sets held out of that design are marked *held out* "
             "where they appear." if role == "design set" else
             f"**Every figure of these tables is held out**: `{test_data['name']}/{test_data['config']}` was not "
             "used in designing the recommended recipe or the per-scan threshold rule."), "",
            *([f"**Not finished yet** (the same command without `--report-only` completes them): "
               f"{', '.join(missing)}. The tables below hold the finished runs only.", ""] if missing else []),
            f"## The recommended map against the intensity baselines (inside the brain; {label})", "", target, "",
            "FPR@1%: the share of the test scans' healthy brain pixels flagged at the per-scan 1% thresholds; "
            "FPR@1% >6mm: the same more than 6 mm from any lesion (the lesions' borders left out).", "",
            *[f"- {v}" for v in evidence["target"]], "", "## The paper's tables", "", md, "",
            "## The same tables inside the brain mask", "", md_brain, "",
            f"## The paper's findings, judged on paired per-seed differences ({label})", "",
            "A difference is 'better' or 'worse' only when its mean over seeds exceeds the spread (std) of the "
            "paired differences -- with 3 seeds, a difference consistent over the seeds, not a significance test "
            "-- otherwise it is a 'tie'. Settings with one seed use the pooled spread of the "
            "same comparison on the settings with several. 'Comparable' is judged by size instead: it holds "
            f"where the mean difference plus its spread stays within ±{EQUIVALENCE:g} AUROC.", "",
            *[f"- {c}" for c in evidence["findings"]], ""]
    if plan["extras"]:
        extras = {"eval": per_setting, **{n: _by_setting(r) for n, r in evidence["extras"].items()}}
        text += [f"## Measured effects ({label})", "", extras_section(extras)]
    text += ["## Where each run stopped", "", plateau_table(evidence["histories"]), ""]
    if cross_domain_md:  # the cross-domain study's section, made by its own command, is kept
        text[6:6] = [f"The cross-domain section at the end is made by `python scripts/reproduce_tables.py "
                     f"--cross-domain --md {cross_domain_md}` (see there).", ""]
    return "\n".join(text)


def _wall_line(stamp: dict) -> str:
    """The runs' wall time, summed over those measured (a run trained before it was recorded: not)."""
    walls = stamp.get("runs_wall_s", {})
    train = [w["train_s"] for w in walls.values() if w.get("train_s") is not None]
    evaluate = [w["evaluate_s"] for w in walls.values() if w.get("evaluate_s") is not None]
    if not train and not evaluate:
        return ""
    return (f" Wall time: {sum(train) / 60:.0f} min training ({len(train)} of {len(walls)} runs measured) and "
            f"{sum(evaluate) / 60:.0f} min evaluating ({len(evaluate)} of {len(walls)}), per run in "
            "\"Where each run stopped\".")


def evidence_name(stamp: dict) -> str:
    return stamp.get("evidence") or "the evidence JSON"


def all_tables(plan: Plan, runs_root: str, docs_dir: str, *, plan_name: str = "", overrides=(), retrain: bool = False,
               reevaluate: bool = False, verbose: bool = False, command: str = "", log=print) -> dict:
    """Every table of ``docs_dir`` that a study of the phantom makes, each by its own generator,
    each reusing what is done (runs, evaluations, dumps) so the same call continues where it stopped,
    each writing its evidence beside its document, stamped:

    - the paper's tables (``reproduce`` with ``plan``; runs in ``RUNS/paper_<plan_name>``) into
      ``results_phantom.md`` (evidence ``results_phantom.json``);
    - the cross-domain study (``cross_domain.study``; runs in ``RUNS/cross_domain``) into the same
      document (``results_phantom_cross_domain.json``);
    - the per-scan threshold's study (``threshold_study``: the design, held-out and screening dumps of
      the cross-domain study's runs -- the quick start, as the study's runs were -- in ``RUNS/study``;
      its design, held-out, screening and bound sections) into ``threshold_study.md``
      (``threshold_study_<section>.json``);
    - what the VAE adds by lesion size (``lesion_size_study``, the same runs and dumps) into
      ``results_phantom.md`` (``results_phantom_lesion_size.json``);
    - the second restoration against the map as it is (``second_restoration_study``, the same runs;
      dumps in ``RUNS/second_restoration``; the hand-written paragraph
      ``results_phantom_second_restoration_note.md`` kept before its table) into ``results_phantom.md``
      (``results_phantom_second_restoration.json``);
    - which beta each search objective picks (``search_study``: its own grid searches, in
      ``RUNS/search_study``) into ``search.md`` (``search_beta_picks.json``).

    ``plan.studies`` sizes the studies (``ALL_STUDIES``; the tests make them tiny); ``overrides``
    (``KEY=VALUE``, e.g. ``data.data_dir``) apply to every run of them. Returns what each wrote."""
    from tfvae.studies import cross_domain, lesion_size_study, search_study, second_restoration_study
    from tfvae.studies import threshold_study as ts

    start = time.time()
    results_md = os.path.join(docs_dir, "results_phantom.md")
    threshold_md = os.path.join(docs_dir, "threshold_study.md")
    paper_runs = os.path.join(runs_root, f"paper_{plan_name}" if plan_name else "paper")
    written = {}
    log(f"[{time.time() - start:6.0f}s] the paper's tables: {paper_runs}")
    reproduce(plan, paper_runs, os.path.join(paper_runs, "tables"), results_md, retrain=retrain,
              reevaluate=reevaluate, verbose=verbose, command=command, log=log)
    written["paper"] = evidence_path(results_md)

    cd = plan.studies.get("cross_domain", {})
    seeds = tuple(cd.get("seeds", cross_domain.SEEDS))
    cross_runs = os.path.join(runs_root, "cross_domain")
    log(f"[{time.time() - start:6.0f}s] the cross-domain study: {cross_runs}")
    base = cd.get("base", cross_domain.BASE_CONFIG)  # relative to the plan file, as the plan's own base
    base = base if os.path.isabs(base) else os.path.join(os.path.dirname(os.path.abspath(plan.source)), base)
    cross_domain.study(cross_runs, results_md, base=base, seeds=seeds, overrides=list(overrides),
                       test_sets=tuple(cd.get("test_sets", cross_domain.TEST_SETS)),
                       calibration_scans=tuple(cd.get("calibration_scans", cross_domain.CALIBRATION_SCANS)),
                       calibration_sites=cd.get("calibration_sites"), verbose=verbose, command=command, log=log)
    written["cross_domain"] = cross_domain.evidence_path(results_md)

    runs = [os.path.join(cross_runs, f"s{seed}") for seed in seeds]
    study = plan.studies.get("threshold_study", {})
    dumps = os.path.join(runs_root, "study")
    subjects = study.get("share_subjects", ts.SHARE_SUBJECTS)
    log(f"[{time.time() - start:6.0f}s] the per-scan threshold's study: dumps in {dumps}")
    steps = (("design", dumps, study.get("design_sets", ts.DESIGN_SETS), study.get("share_sites", ts.SHARE_SITES),
              ts.SHARES),
             ("held-out", os.path.join(dumps, "heldout"), study.get("held_out_sets", ts.HELD_OUT_SETS),
              study.get("held_out_share_sites", ts.HELD_OUT_SHARE_SITES), ts.SHARES),
             ("screening", os.path.join(dumps, "screening"), (), study.get("screening_sites", ts.SHARE_SITES),
              ts.SCREENING_SHARES))
    for section, folder, sets, share_sites, shares in steps:
        if not sets and not share_sites:
            continue
        ts.dump_sets(runs, folder, sets, share_sites, shares=shares, share_subjects=subjects)
        ts.report(folder, threshold_md, runs, section=section, command=command)
        written[f"threshold_study {section}"] = f"{os.path.splitext(threshold_md)[0]}_{section.replace('-', '_')}.json"
    ts.bound_report([dumps, os.path.join(dumps, "heldout")], threshold_md, runs, command=command)
    written["threshold_study bound"] = f"{os.path.splitext(threshold_md)[0]}_bound.json"

    sets = tuple(tuple(s) for s in plan.studies.get("lesion_size", {}).get("sets", lesion_size_study.SETS))
    baselines = os.path.join(runs_root, "study_baselines", "s0")
    log(f"[{time.time() - start:6.0f}s] what the VAE adds by lesion size: baselines in {baselines}")
    lesion_size_study.dump(runs, dumps, baselines, sets)
    lesion_size_study.report(runs, dumps, baselines, results_md, command=command, sets=sets)
    written["lesion_size"] = lesion_size_study.evidence_path(results_md)

    sets = plan.studies.get("second_restoration", {}).get("sets", second_restoration_study.SETS)
    sets = tuple(tuple(s) for s in sets)
    restored = os.path.join(runs_root, "second_restoration")
    log(f"[{time.time() - start:6.0f}s] the second restoration: dumps in {restored}")
    for run_dir in runs:
        for test_set, _, _ in sets:
            second_restoration_study.dump(run_dir, test_set, restored, log=log if verbose else (lambda m: None))
    note_path = os.path.join(docs_dir, "results_phantom_second_restoration_note.md")  # hand-written, kept
    note = open(note_path, encoding="utf-8").read() if os.path.isfile(note_path) else ""
    second_restoration_study.report(runs, restored, results_md, command=command, note=note, sets=sets)
    written["second_restoration"] = second_restoration_study.evidence_path(results_md)

    beta = plan.studies.get("beta_search", {})
    searches = os.path.join(runs_root, "search_study")
    log(f"[{time.time() - start:6.0f}s] which beta each search objective picks: searches in {searches}")
    search_md = os.path.join(docs_dir, "search.md")
    search = beta.get("search", search_study.SEARCH_CONFIG)  # a file relative to the plan file, or a shipped name
    beside_plan = os.path.join(os.path.dirname(os.path.abspath(plan.source)), search)
    search = beside_plan if not os.path.isabs(search) and os.path.isfile(beside_plan) else search
    search_study.report(search, searches,
                        tuple(beta.get("seeds", search_study.SEEDS)), search_md, overrides=list(overrides),
                        command=command, log=log if verbose else None)
    written["beta_search"] = search_study.evidence_path(search_md)
    log(f"[{time.time() - start:6.0f}s] every table written: " + ", ".join(written.values()))
    return written


NOTES_MARKER = "<!-- notes below this line are kept when the document is regenerated -->"
CROSS_DOMAIN_BEGIN = "<!-- cross-domain study: begin"  # tfvae.studies.cross_domain.BEGIN starts so


def _kept_notes(path: str) -> str:
    """The hand-written notes of an earlier version of ``path`` (from ``NOTES_MARKER`` on), or ""."""
    if not os.path.isfile(path):
        return ""
    with open(path, encoding="utf-8") as f:
        old = f.read()
    return "\n" + old[old.index(NOTES_MARKER):] if NOTES_MARKER in old else ""
