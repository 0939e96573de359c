"""Scoring a test split with every predictor, volume by volume, and measuring the maps.

For each predictor (``tfvae.maps.predictors.ALL_PREDICTORS``) ``evaluate`` reports

- ``auroc``, ``auprc``: over all pixels of all test slices (the paper's convention: background
  included, labels = seg > 0);
- ``auroc_brain``, ``auprc_brain``: over pixels inside the brain mask only;
- ``best_dice``: the best dataset-wise Dice over all thresholds (brain pixels), with its threshold;
- ``dice_fpr01``, ``dice_fpr05``: Dice per volume (brain pixels) at the threshold that flags 1 % /
  5 % of the brain pixels of healthy *validation* slices (no test label is used), averaged over
  volumes, with the spread (``*_std``) and the thresholds;
- ``measured_fpr01``, ``measured_fpr05``: the share of the test scans' healthy brain pixels (label
  0) those thresholds flag, and ``*_far``: the same over the healthy brain pixels more than
  ``FAR_MM`` from any lesion voxel (``far_from_lesions``) -- what is flagged in healthy tissue,
  without the lesion's border, where the label's edge, partial volumes and the maps' smoothing
  make flagged label-0 pixels a matter of outline rather than a false detection;
  ``*_volumes``: the distribution of each volume's own rate (mean, std, median, 90th percentile,
  maximum, n: ``metrics.VolumeDice.fpr_summary``) -- what a single scan may get, beside the pooled
  rate; ``fallback_fpr01``, ``fallback_fpr05``: how many of the ``volumes`` kept the calibrated
  threshold because their scores could not be fitted (``ScanThreshold.fallback``).

When post-processing is on (``postprocess.*``, see ``tfvae.maps.postprocessing``), every metric is
reported twice: on the raw maps and, under ``"postprocessed"``, on the post-processed ones (with
their own thresholds, calibrated on post-processed validation maps; connected components are
removed from the binary masks before the Dice at a fixed FPR, not in ``best_dice``).

Metrics are streamed (``tfvae.metrics``): memory does not grow with the test set. Maps of each
volume are written back into the source volume's grid as NIfTI (``maps/``), and a few slices with
and without tumour are kept for the figures.

Before any test slice is scored, ``Scorer.fit`` takes from the healthy validation volumes what
the maps need (the reference Combi's KL-grad range, the recommended map's settings chosen with
synthetic lesions), and ``calibrate`` the thresholds; no test label is used by either.

The ensemble is fitted on ``evaluate.ensemble_fraction`` of the test volumes (with their labels),
which are processed first; its metrics are over the other volumes only. Every predictor's metrics
over all volumes are in its result, and, when the ensemble is evaluated, again over the ensemble's
scored volumes only (``"ensemble_volumes"``), so the ensemble is compared like with like.

``evaluate_run`` hands the results on: tables and figures to ``reporting`` (files, and TensorBoard
through ``reporting.log_evaluation``), the thresholds to ``calibration.store_evaluation`` (the
run's ``thresholds.json``, for localize).
"""

from __future__ import annotations

import os
import time

import keras
import numpy as np
import tensorflow as tf
from scipy import ndimage

from tfvae import config as config_lib
from tfvae.data import pipelines as data
from tfvae.maps import ensemble as ensemble_lib
from tfvae import metrics
from tfvae.maps import postprocessing
from tfvae.evaluation import reporting
from tfvae.thresholds import scan_threshold
from tfvae.maps import recommended as recommended_lib
from tfvae.data import reference_labels
from tfvae.utils import rundir, timing
from tfvae.thresholds import calibration
from tfvae.thresholds.calibration import DISPLAY_FPRS, FPRS, HISTOGRAM_BITS, calibrate
from tfvae.data.nifti import write_maps
from tfvae.maps.predictors import ALL_PREDICTORS
from tfvae.evaluation.reporting import FigureSlices
from tfvae.maps.scoring import FLAG_KEY, Scorer, Volume, variants, volumes

FAR_MM = 6.0  # two voxels of the 64 x 64 phantom grid (3 mm), three of a 2 mm one


def far_from_lesions(label: np.ndarray, voxel_mm) -> np.ndarray:
    """Boolean (z, S, S): the voxels more than ``FAR_MM`` from every lesion voxel (``label > 0``) of
    a stacked volume whose voxels measure ``voxel_mm`` (slice spacing, row, column) -- Euclidean
    distance (``scipy.ndimage.distance_transform_edt``); all True without a lesion."""
    lesion = np.asarray(label) > 0
    if not lesion.any():
        return np.ones(lesion.shape, bool)
    return ndimage.distance_transform_edt(~lesion, sampling=voxel_mm) > FAR_MM


SAME_VOLUME_METRICS = ("auroc", "auprc", "auroc_brain", "auprc_brain", "best_dice", "dice_fpr01", "dice_fpr05")


def measured_key(dice_key: str) -> str:
    """The results key of the false-positive rate measured at a calibrated threshold:
    ``dice_fpr01`` -> ``measured_fpr01`` (the nominal rate is ``calibration.FPRS[dice_key]``)."""
    return dice_key.replace("dice_", "measured_")


class Measures:
    """The streamed metrics of one predictor (one variant). ``thresholds`` (key -> threshold) are the
    calibrated ones; ``update`` may give each volume its own (``scan_threshold.for_scan``), and the
    Dice and measured FPR are reported at those, with the calibrated thresholds' beside them
    (``fixed_threshold``)."""

    def __init__(self, thresholds: dict, min_component_voxels: int = 0):
        self.all = metrics.PixelHistogram(bits=HISTOGRAM_BITS)
        self.brain = metrics.PixelHistogram(bits=HISTOGRAM_BITS)
        self.thresholds = thresholds
        clean = ((lambda pred: postprocessing.remove_small_components(pred, min_component_voxels))
                 if min_component_voxels else None)
        self.dice = metrics.VolumeDice(thresholds, clean=clean)
        self.fixed = metrics.VolumeDice(thresholds, clean=clean)
        self.estimated = {k: [] for k in thresholds}  # label-free estimates at the thresholds used ...
        self.estimated_fixed = {k: [] for k in thresholds}  # ... and at the calibrated ones
        self.fallbacks = {k: 0 for k in thresholds}  # volumes whose per-scan threshold fell back to the calibrated one

    def update(self, score, label, brain, scan_thresholds: dict | None = None, far=None):
        """One volume; ``scan_thresholds``: key -> ``ScanThreshold`` of this volume (default: the
        calibrated thresholds); ``far`` (z, S, S): the pixels far from any lesion (``far_from_lesions``)."""
        self.all.update(score, label)
        self.brain.update(score, label, mask=brain)
        args = (score[..., 0], label[..., 0], brain[..., 0])
        self.fixed.update(*args, far=far)
        if scan_thresholds is None:
            self.dice.update(*args, far=far)
            return
        self.dice.update(*args, thresholds={k: st.threshold for k, st in scan_thresholds.items()}, far=far)
        for k, st in scan_thresholds.items():
            self.fallbacks[k] += bool(st.fallback)
            self.estimated[k].append(st.estimated_fpr)
            self.estimated_fixed[k].append(st.estimated_fpr_at_reference)

    def result(self) -> dict:
        best, best_threshold = self.brain.best_dice()
        out = {"auroc": self.all.auroc(), "auprc": self.all.auprc(), "auroc_brain": self.brain.auroc(),
               "auprc_brain": self.brain.auprc(), "best_dice": best, "best_dice_threshold": best_threshold}
        fprs, fixed_fprs, fixed_dice = self.dice.fpr_summary(), self.fixed.fpr_summary(), self.fixed.summary()
        out["fixed_threshold"] = {}
        for key, summary in self.dice.summary().items():
            out[key], out[f"{key}_std"] = summary["mean"], summary["std"]
            out[f"{key}_threshold"] = self.thresholds[key]
            measured = measured_key(key)
            out[measured] = fprs[key]["pooled"]
            out[f"{measured}_far"] = fprs[key]["far_pooled"]
            out[f"{measured}_volumes"] = {k: fprs[key][k] for k in VOLUME_STATS}
            out[measured.replace("measured_", "fallback_")] = self.fallbacks[key]
            estimated = measured.replace("measured_", "estimated_")
            if self.estimated[key]:
                out[estimated] = _nanmean(self.estimated[key])
            out["fixed_threshold"].update({key: fixed_dice[key]["mean"], measured: fixed_fprs[key]["pooled"],
                                           f"{measured}_far": fixed_fprs[key]["far_pooled"],
                                           f"{measured}_volumes": {k: fixed_fprs[key][k] for k in VOLUME_STATS}})
            if self.estimated_fixed[key]:
                out["fixed_threshold"][estimated] = _nanmean(self.estimated_fixed[key])
        out["pixels"] = self.all.n_pos + self.all.n_neg
        out["volumes"] = len(next(iter(self.dice.values.values())))
        return out


VOLUME_STATS = ("mean", "std", "median", "p90", "max", "n")  # of the volumes' measured rates, in results.json


def _nanmean(values) -> float:
    v = np.asarray(values, np.float64)
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


class ScanThresholds:
    """The first consumer of the scored-volume stream: each volume's own threshold per variant,
    predictor and calibrated rate (``scan_threshold.for_scan`` with ``mode``), in
    ``volume.thresholds`` for the consumers after it."""

    def __init__(self, references: dict, mode: str):
        self.references, self.mode = references, mode

    def update(self, volume: Volume) -> None:
        brain = volume.brain_mask > 0
        volume.thresholds = {
            variant: {p: {key: scan_threshold.for_scan(self.references[variant][p], score[brain], fpr, self.mode)
                          for key, fpr in FPRS.items()} for p, score in by_p.items()}
            for variant, by_p in volume.variants.items()}


class Evaluator:
    """The metrics consumer of the scored-volume stream: every predictor's streamed metrics, raw and
    post-processed, and -- when the ensemble is evaluated -- again on the ensemble's scored volumes
    only, to compare like with like. Each volume is thresholded at its own thresholds
    (``volume.thresholds``, from ``ScanThresholds``)."""

    def __init__(self, predictors, thresholds: dict, settings: dict, compare_with_ensemble: bool):
        self.predictors = list(predictors)
        self.measures = {variant: {p: Measures(t, settings["min_component_voxels"] if variant != "raw" else 0)
                                   for p, t in by_p.items()} for variant, by_p in thresholds.items()}
        self.same_volumes = ({p: Measures(thresholds["raw"][p]) for p in self.predictors}
                             if compare_with_ensemble else {})

    def update(self, volume: Volume) -> None:
        label, brain = volume.label, volume.brain_mask > 0
        for variant, by_p in volume.variants.items():
            for p, score in by_p.items():
                self.measures[variant][p].update(score, label, brain, volume.thresholds[variant][p], volume.far)
        if self.same_volumes and not volume.ensemble_fit:  # no far rate among SAME_VOLUME_METRICS
            for p, score in volume.variants["raw"].items():
                self.same_volumes[p].update(score, label, brain, volume.thresholds["raw"][p])

    def results(self) -> dict:
        results = {p: self.measures["raw"][p].result() for p in self.predictors}
        for p, m in self.measures.get("postprocessed", {}).items():
            results[p]["postprocessed"] = m.result()
        for p, m in self.same_volumes.items():
            results[p]["ensemble_volumes"] = {k: v for k, v in m.result().items() if k in SAME_VOLUME_METRICS}
        return results


class PerVolume:
    """The per-volume consumer: for every volume and predictor (raw maps), the lesion and flagged
    volumes in ml, the Dice and the false-positive rate measured on the volume's healthy brain
    pixels (label 0) at each calibrated FPR, the same more than ``FAR_MM`` from any lesion
    (``measured_fpr<rate>_far``), and the AUROC inside the brain (empty for a volume without
    lesion), as rows of ``per_volume.csv``. Beside them, what is known without labels
    (``scan_threshold.ScanThreshold``): the estimated share of the brain that does not look healthy
    (``estimated_lesion_share``, the scan's fit, the same at every rate), and at each rate the
    estimated FPR at the threshold used and at the calibrated one, why the per-scan threshold fell
    back to the calibrated one (``fallback_fpr<rate>``) and the scan's warnings (joined by " | ",
    with the share of its brain pixels flagged) -- empty where there is none (an estimate is NaN
    when the scan could not be fitted: not estimated)."""

    def __init__(self, predictors):
        self.predictors, self.rows = list(predictors), []

    def update(self, volume: Volume) -> None:
        brain, lesion = volume.brain_mask[..., 0] > 0, (volume.label[..., 0] > 0) & (volume.brain_mask[..., 0] > 0)
        ml = float(np.prod(volume.geometry.voxel_mm())) / 1000.0
        healthy = brain & ~lesion
        far = healthy & volume.far
        for p, score in volume.variants["raw"].items():
            chosen_by_key = volume.thresholds["raw"][p]
            row = {"volume": volume.volume_id, "predictor": p, "lesion_ml": round(lesion.sum() * ml, 3),
                   "ensemble_fit": volume.ensemble_fit,
                   "estimated_lesion_share": _rounded(next(iter(chosen_by_key.values())).lesion_share)}
            for key, fpr in FPRS.items():
                chosen = chosen_by_key[key]
                flagged = (score[..., 0] >= chosen.threshold) & brain
                row[f"threshold_fpr{fpr:g}"] = f"{chosen.threshold:.6g}"
                row[f"flagged_ml_fpr{fpr:g}"] = round(flagged.sum() * ml, 3)
                row[f"dice_fpr{fpr:g}"] = round(metrics.dice(flagged, lesion), 4)
                row[f"measured_fpr{fpr:g}"] = (round(float((flagged & healthy).sum() / healthy.sum()), 5)
                                               if healthy.any() else "")
                row[f"measured_fpr{fpr:g}_far"] = round(float((flagged & far).sum() / far.sum()), 5) if far.any() else ""
                row[f"estimated_fpr{fpr:g}"] = _rounded(chosen.estimated_fpr)
                row[f"estimated_fpr{fpr:g}_at_calibrated"] = _rounded(chosen.estimated_fpr_at_reference)
                row[f"fallback_fpr{fpr:g}"] = chosen.reason if chosen.fallback else ""
                flagged_share = float(flagged.sum() / brain.sum()) if brain.any() else None
                row[f"warnings_fpr{fpr:g}"] = " | ".join(chosen.warnings(flagged_share=flagged_share))
            if lesion.any() and (brain & ~lesion).any():
                hist = metrics.PixelHistogram()
                hist.update(score[..., 0], lesion, mask=brain)
                row["auroc_brain"] = round(hist.auroc(), 4)
            else:
                row["auroc_brain"] = ""
            self.rows.append(row)


def _rounded(value: float, digits: int = 5):
    """``value`` rounded for a CSV cell; "" for NaN (not estimated)."""
    return "" if not np.isfinite(value) else round(float(value), digits)


class ReferencePixels:
    """The pixel set of Zimmerer et al.'s code (``evaluate.pixel_set: reference``): every canonical
    axial slice of the scan but the first and last ``skip``, each whole slice resized to ``size`` x
    ``size``, background included -- the population the paper's AUROC counts. The maps are written
    back into the scan's grid (``preprocessing.slices_to_volume``: 0 on the slices and pixels we do
    not score) and resized linearly; the labels are the volume's original segmentation
    (``labels``: a ``reference_labels.reader``), checked against the dataset and resampled once
    (``reference_labels.paper_crop``) -- slices our preprocessing left out included with their true
    labels, as the reference scores every slice (see ``tfvae.data.reference_labels``)."""

    def __init__(self, predictors, size: int, skip: int, labels):
        self.size, self.skip, self.labels = size, skip, labels
        self.all = {p: metrics.PixelHistogram(bits=HISTOGRAM_BITS) for p in predictors}

    def _slices(self, volume: Volume, planes) -> np.ndarray:
        from tfvae.data import preprocessing

        data = preprocessing.slices_to_volume(planes, volume.slice_index, volume.geometry, order=1)
        data = preprocessing.to_canonical(data, volume.geometry.source_affine)
        kept = data[:, :, self.skip:data.shape[2] - self.skip]
        if kept.shape[2] == 0:  # a scan of no more than 2 * skip slices: none kept
            return np.zeros((self.size, self.size, 0), np.float32)
        zoom = (self.size / kept.shape[0], self.size / kept.shape[1], 1.0)
        return ndimage.zoom(kept, zoom, order=1, grid_mode=True, mode="grid-constant")

    def update(self, volume: Volume) -> None:
        from tfvae.data import reference_labels

        segmentation, affine = self.labels(volume.volume_id)
        label = reference_labels.paper_crop(reference_labels.checked(segmentation, affine, volume),
                                            volume.geometry.source_affine, self.size, self.skip)
        if label.shape[2] == 0:
            return
        for p, score in volume.variants["raw"].items():
            self.all[p].update(self._slices(volume, score), label)

    def results(self) -> dict:
        return {p: {"auroc_reference": h.auroc(), "auprc_reference": h.auprc()} for p, h in self.all.items()
                if h.n_pos and h.n_neg}


class NiftiMaps:
    """The NIfTI consumer of the stream: each volume's maps in its source grid (``nifti.write_maps``)
    -- those of ``predictors`` (``evaluate.nifti_maps``) that were scored; with "all", or when none
    of them was scored, every map but the input itself;
    no in-sample ensemble map for the ensemble's fit volumes."""

    def __init__(self, out_dir: str, predictors="all", scored=()):
        self.out_dir = out_dir
        # "all", or the maps asked for that are scored; none of those (e.g. --predictors rec_error): all
        asked = [] if predictors == "all" else [p for p in predictors if p in scored]
        self.wanted = (lambda p: p in asked) if asked else (lambda p: p != "intensity")

    def update(self, volume: Volume) -> None:
        raw, post = volume.variants["raw"], volume.variants.get("postprocessed", {})
        # a volume id with folders (nifti_folder's "lesions/case0", "imagesTr/BRATS_001_0000"): its subfolder
        os.makedirs(os.path.dirname(os.path.join(self.out_dir, volume.volume_id)), exist_ok=True)
        write_maps(volume, self.out_dir, {p: v for p, v in raw.items() if self.wanted(p)}
                   | {f"{p}_postprocessed": v for p, v in post.items() if self.wanted(p)})


def scored_volumes(scorer: Scorer, test: tf.data.Dataset, predictors, settings: dict, *, fit_ids=(),
                   ensemble_features=(), seed: int = 0, progress=None, on_ensemble=None):
    """The stream: every test volume with its maps (``volume.maps``), raw and post-processed
    (``volume.variants``), whether the ensemble was fitted on it (``volume.ensemble_fit``) and its
    pixels far from any lesion (``volume.far``, ``far_from_lesions``; made once for every consumer).

    With ``fit_ids``, those volumes come first, the ensemble (``ensemble.PredictorEnsemble`` over
    ``ensemble_features``) is fitted on them with their labels, ``on_ensemble(ensemble)`` is called
    (e.g. to calibrate its thresholds), and every later volume gets its ``ensemble`` map."""
    fit_set = tf.constant(list(fit_ids) or [""])

    def in_fit(ex):
        return tf.reduce_any(tf.equal(ex["volume_id"], fit_set))

    def score(volume: Volume) -> Volume:
        volume.maps = scorer(volume.image, volume.brain_mask, volume.geometry.voxel_mm())
        if progress is not None:
            progress.add(len(volume.image))
        return volume

    def finish(volume: Volume, fitting: bool) -> Volume:
        if ensemble is not None and not fitting:
            volume.maps["ensemble"] = ensemble.score(volume.maps)
        volume.variants = variants(volume, predictors, settings)
        volume.ensemble_fit = fitting
        volume.far = far_from_lesions(volume.label[..., 0], volume.geometry.voxel_mm())
        return volume

    ensemble, fit_volumes = None, []
    if fit_ids:  # kept in memory: the other predictors measure them too, once the ensemble exists
        ensemble = ensemble_lib.PredictorEnsemble(ensemble_features, seed=seed)
        for volume in volumes(test.filter(in_fit)):
            fit_volumes.append(score(volume))
            ensemble.add_volume(volume.volume_id, volume.maps, volume.label)
        ensemble.fit()
    if on_ensemble is not None:
        on_ensemble(ensemble)
    while fit_volumes:
        yield finish(fit_volumes.pop(0), fitting=True)
    rest = test.filter(lambda ex: tf.logical_not(in_fit(ex))) if fit_ids else test
    for volume in volumes(rest):
        yield finish(score(volume), fitting=False)


def evaluate(model, config: dict, test: tf.data.Dataset, validation, out_dir: str,
             predictors=None, verbose: bool = True, stored: dict | None = None,
             stages: timing.Stages | None = None) -> tuple[dict, FigureSlices, list[dict]]:
    """Score ``test`` with ``predictors`` (default: the config's, else all) and return
    ``(results, figure slices, per-volume rows)``; NIfTI maps go to ``out_dir/maps`` when the config
    says so. ``validation``: the healthy split (or list of healthy ``Volume`` s) the thresholds and
    the maps' statistics come from; ``stored``: ``{"reference": Scorer.fit's, "thresholds":
    {predictor: {rate: threshold}}}`` an earlier calibration of the same checkpoint, settings and
    healthy data stored (``stored_calibration``), reused instead of computed again.

    The scored-volume stream (``scored_volumes``) feeds its consumers: the metrics
    (``Evaluator``), the figure selection (``reporting.FigureSlices``) and the NIfTI maps.

    ``stages``, when given, receives the wall seconds of the set-up -- "selection" (``Scorer.fit``:
    the KL-grad range and the filtered maps' sizes) and "calibration" -- and of "scoring" the test
    split (its stream and consumers, then the metrics; the calibration run
    inside the stream left out), e.g. for ``benchmark.evaluation``."""
    asked = list(predictors or config["evaluate"]["predictors"] or [])
    predictors = asked or list(ALL_PREDICTORS)
    unknown = [p for p in predictors if p not in ALL_PREDICTORS]
    if unknown:
        raise ValueError(f"unknown predictor(s) {', '.join(unknown)} (known: {', '.join(ALL_PREDICTORS)})")
    predictors = [p for p in ALL_PREDICTORS if p in predictors]  # tables list them in this order
    ids = [v.decode() for v in test.map(lambda ex: ex["volume_id"]).as_numpy_iterator()]
    if "ensemble" in predictors and len(set(ids)) < 2 and "ensemble" not in asked:
        # fitted on some test volumes and scored on the others: nothing to score with one volume
        print(f"note: the test split has {len(set(ids))} volume(s): the ensemble (fitted on some test volumes, "
              "scored on the others) is left out", flush=True)
        predictors.remove("ensemble")
    ev, settings = config["evaluate"], config["postprocess"]
    features = config["ensemble"]["features"]
    # the original segmentations the reference pixel set takes its labels from: found before any scoring
    reference_reader = (reference_labels.reader(data.test_data_config(config["data"]))
                        if ev["pixel_set"] == "reference" else None)
    needed = set(predictors) | (set(features) if "ensemble" in predictors else set())
    scorer = Scorer(model, config, [p for p in ALL_PREDICTORS if p in needed])
    stored = stored or {}
    stages = stages if stages is not None else timing.Stages()
    # KL-grad range, recommended settings: healthy validation only (or what an earlier calibration stored)
    with stages("selection"):
        reference = scorer.fit(validation, stored=stored.get("reference"), verbose=verbose)

    start, calibrating = time.perf_counter(), stages.seconds.get("calibration", 0.0)  # the scoring's clock
    fit_ids, scored_ids = (ensemble_lib.split_volumes(ids, ev["ensemble_fraction"], config["seed"])
                           if "ensemble" in predictors else ([], sorted(set(ids))))
    from tfvae.utils.console import progress_verbosity

    scoring_line = f"scoring the test split: {len(ids)} slices of {len(set(ids))} volumes, {len(predictors)} map(s)"
    if verbose and fit_ids:  # the ensemble's volumes are scored first, then the thresholds calibrated
        print(f"{scoring_line}; first the {len(fit_ids)} volume(s) the ensemble is fitted on", flush=True)
    progress = keras.utils.Progbar(len(ids), verbose=progress_verbosity() if verbose else 0, unit_name="slice")
    figures = FigureSlices(ev["num_figures"])
    consumers: list = [figures] + ([NiftiMaps(os.path.join(out_dir, "maps"), ev["nifti_maps"], predictors)]
                                   if ev["write_nifti"] else [])
    fitted: dict = {}

    def start_measuring(ensemble):  # thresholds from healthy validation slices, the ensemble's included
        fitted["ensemble"] = ensemble
        if verbose and fit_ids and progress_verbosity() == 1:
            print(flush=True)  # end the test split's bar line on a terminal before the calibration's
        rates = sorted(set(FPRS.values()) | set(DISPLAY_FPRS.values()) | set(scan_threshold.REFERENCE_FPRS))
        # a predictor whose every rate an earlier calibration of this checkpoint and these settings stored
        # is not calibrated again (the same numbers: selection and calibration are deterministic)
        reused = ({p: t for p, t in stored.get("thresholds", {}).items() if p in predictors and p != "ensemble"
                   and set(rates) <= set(t)} if not postprocessing.enabled(settings) else {})
        with stages("calibration"):
            calibrated = (calibrate(scorer, validation, [p for p in predictors if p not in reused], settings,
                                    ensemble, fprs=rates, verbose=verbose) if len(reused) < len(predictors)
                          else {"raw": {}})
        scorer.release()  # the healthy volumes' network outputs, shared by the fit and the calibration
        if verbose:
            print(f"{scoring_line}, continued" if fit_ids else scoring_line, flush=True)
        calibrated["raw"] = {p: reused[p] if p in reused else calibrated["raw"][p] for p in predictors}
        fitted["calibrated"] = calibrated
        fitted["display"] = {p: [by_rate[DISPLAY_FPRS[k]] for k in DISPLAY_FPRS] for p, by_rate in calibrated["raw"].items()}
        thresholds = {variant: {p: {key: by_rate[fpr] for key, fpr in FPRS.items()} for p, by_rate in by_p.items()}
                      for variant, by_p in calibrated.items()}
        references = {variant: {p: scan_threshold.HealthyReference(by_rate) for p, by_rate in by_p.items()}
                      for variant, by_p in calibrated.items()}
        fitted["evaluator"] = Evaluator(predictors, thresholds, settings, compare_with_ensemble=ensemble is not None)
        fitted["per_volume"] = PerVolume(predictors)
        consumers[:0] = [ScanThresholds(references, config["threshold"]["mode"]), fitted["evaluator"],
                         fitted["per_volume"]]
        if ev["pixel_set"] == "reference":
            fitted["reference_pixels"] = ReferencePixels(predictors, config["data"]["image_size"],
                                                         ev["reference_skip"], reference_reader)
            consumers.append(fitted["reference_pixels"])

    for volume in scored_volumes(scorer, test, predictors, settings, fit_ids=fit_ids, ensemble_features=features,
                                 seed=config["seed"], progress=progress, on_ensemble=start_measuring):
        for consumer in consumers:
            consumer.update(volume)

    results, per_volume = fitted["evaluator"].results(), fitted["per_volume"].rows
    for p, extra in (fitted["reference_pixels"].results() if "reference_pixels" in fitted else {}).items():
        results[p].update(extra)
    for p, display in fitted["display"].items():  # one colour scale per map, from healthy validation
        results[p]["display_range"] = display
    for p, result in results.items():
        result["threshold_mode"] = config["threshold"]["mode"]
        result["healthy_reference"] = {f"{rate:g}": t for rate, t in fitted["calibrated"]["raw"][p].items()}
        if "postprocessed" in result:
            result["postprocessed"]["healthy_reference"] = {f"{rate:g}": t for rate, t in
                                                            fitted["calibrated"]["postprocessed"][p].items()}
    if fitted["ensemble"] is not None:
        results["ensemble"].update(coefficients=fitted["ensemble"].coefficients(), scored_volumes=len(scored_ids))
    for name in scorer.sizes:  # the filtered maps' sizes, and how they were chosen
        if name in results:
            # the sizes (mm), the validation grid and their voxels there (each scan: its own grid's)
            results[name]["settings"] = recommended_lib.described(**scorer.sizes[name], grid=scorer.grids[name])
            if name in reference:
                results[name]["selection"] = reference[name]
    if "recommended" in results and FLAG_KEY in reference:  # the second restoration's threshold
        results["recommended"][FLAG_KEY] = reference[FLAG_KEY]
    if "combi" in results and "kl_grad_range" in reference:
        results["combi"]["kl_grad_range"] = reference["kl_grad_range"]
    calibrating = stages.seconds.get("calibration", 0.0) - calibrating  # run inside the stream: not scoring
    stages.add("scoring", time.perf_counter() - start - calibrating)
    return results, figures, per_volume


def stored_calibration(run, config: dict, checkpoint: str) -> dict:
    """What the run's ``thresholds.json`` holds for this checkpoint's content, the map settings and
    the healthy data of ``config``: ``{"reference": ..., "thresholds": {predictor: {rate: t}}}``."""
    store = calibration.ThresholdStore(run.thresholds_path)
    digest = run.model_digest(checkpoint)
    keys = {p: store.key(digest, p, config) for p in ALL_PREDICTORS if p != "ensemble"}
    reference: dict = {}
    for key in keys.values():
        reference.update(store.reference(key) or {})
    return {"reference": reference, "thresholds": {p: store.thresholds(k) for p, k in keys.items()}}


def evaluated_test_split(config: dict) -> tf.data.Dataset:
    """The test examples an evaluation with ``config`` scores: the test split of
    ``data.test_data_config`` (e.g. trained on hcp_t2, tested on brats) without the volumes
    ``evaluate.exclude_volumes`` names (those a search's auroc objective selected the model with)."""
    d = config["data"]
    test = data.load_split(data.test_data_config(d), d["test_split"])
    excluded = config["evaluate"]["exclude_volumes"]
    if excluded:
        left_out = tf.constant(excluded)
        test = test.filter(lambda ex: tf.logical_not(tf.reduce_any(tf.equal(ex["volume_id"], left_out))))
    return test


def run_inputs(run, config: dict, checkpoint: str = "final"):
    """``(model, test split, healthy split)`` an evaluation of ``run`` with ``config`` scores: the
    saved ``checkpoint``, ``evaluated_test_split(config)`` and the validation split or the user's
    healthy scans (``threshold.calibration``); Keras's random seed set to the config's first, as
    every evaluation does."""
    keras.utils.set_random_seed(config["seed"])
    model = run.model(checkpoint)
    return model, evaluated_test_split(config), run.healthy_split(config)


def evaluate_run(run, config: dict, out_dir: str, *, checkpoint: str = "final",
                 verbose: bool = True) -> tuple[dict, str]:
    """Evaluate a run's saved model (``run``: the ``tfvae.Run`` whose ``evaluate`` calls this;
    ``checkpoint``: final, best or last) on its test data (``data.test_data_config``) with ``config``; write results,
    figures and the config used to ``out_dir``, the figures and metrics to TensorBoard (``logs/``) and the
    thresholds to the run's ``thresholds.json``. Returns (results, title)."""
    model, test, validation = run_inputs(run, config, checkpoint)
    results, figures, per_volume = evaluate(model, config, test, validation, out_dir, verbose=verbose,
                                            stored=stored_calibration(run, config, checkpoint))
    title = reporting.title(config, checkpoint)
    reporting.write_results(results, out_dir, header=f"# {title}")
    reporting.write_per_volume(per_volume, os.path.join(out_dir, "per_volume.csv"))
    images = reporting.save_figures(figures, list(results), os.path.join(out_dir, "figures"),
                                    scales={p: tuple(r["display_range"]) for p, r in results.items()},
                                    thresholds={p: r["dice_fpr01_threshold"] for p, r in results.items()})
    reporting.log_evaluation(run.logs_dir, results, images)
    calibration.store_evaluation(run, config, checkpoint, results)
    config_lib.save(config, os.path.join(out_dir, rundir.CONFIG_FILE))  # last: what these results were made with
    return results, title
