"""Scoring a test split with every predictor, volume by volume, and measuring the maps.

For each predictor (``tfvae.predictors.ALL_PREDICTORS``) ``evaluate`` reports

- ``auroc``, ``auprc``: over all pixels of all test slices (the paper's convention: background
  included, labels = seg > 0);
- ``auroc_brain``, ``auprc_brain``: over pixels inside the brain mask only;
- ``best_dice``: the best dataset-wise Dice over all thresholds (brain pixels), with its threshold;
- ``dice_fpr01``, ``dice_fpr05``: Dice per volume (brain pixels) at the threshold that flags 1 % /
  5 % of the brain pixels of healthy *validation* slices (no test label is used), averaged over
  volumes, with the spread (``*_std``) and the thresholds.

Metrics are streamed (``tfvae.metrics``): memory does not grow with the test set. Maps of each
volume are written back into the source volume's grid as NIfTI (``maps/``), and a few slices with
and without tumour are kept for the figures.

The ensemble is fitted on ``evaluate.ensemble_fraction`` of the test volumes, which are processed
first; its metrics are over the other volumes only (all other predictors use every volume).
"""

from __future__ import annotations

import dataclasses
import os

import keras
import nibabel as nib
import numpy as np
import tensorflow as tf

from tfvae import ensemble as ensemble_lib
from tfvae import metrics, preprocessing
from tfvae.predictors import ALL_PREDICTORS, PixelPredictors, smooth
from tfvae.projection import CompiledProjection

FPRS = {"dice_fpr01": 0.01, "dice_fpr05": 0.05}
HISTOGRAM_BITS = 22  # 4M bins per class when the exact mode overflows: ~1e-5 of AUROC, 64 MB each
MAX_CALIBRATION_SLICES = 4096


@dataclasses.dataclass
class Volume:
    """The slices of one test volume and everything scored on them."""

    volume_id: str
    image: np.ndarray
    label: np.ndarray
    brain_mask: np.ndarray
    slice_index: np.ndarray
    geometry: preprocessing.SliceGeometry
    maps: dict = dataclasses.field(default_factory=dict)


def volumes(examples: tf.data.Dataset, batch_size: int = 256):
    """Group a split's examples (stored volume by volume) into ``Volume`` objects."""
    current, parts, seen = None, [], set()

    def finish():
        first = parts[0]
        cat = {k: np.concatenate([p[k] for p in parts]) for k in ("image", "label", "brain_mask", "slice_index")}
        geometry = preprocessing.SliceGeometry.from_arrays(first["source_shape"][0], first["source_affine"][0],
                                                           first["crop"][0])
        return Volume(current, cat["image"], cat["label"], cat["brain_mask"], cat["slice_index"], geometry)

    for batch in examples.batch(batch_size).as_numpy_iterator():
        ids = [v.decode() for v in batch["volume_id"]]
        for vid in dict.fromkeys(ids):
            rows = np.array([i == vid for i in ids])
            if vid != current:
                if current is not None:
                    yield finish()
                if vid in seen:
                    raise ValueError(f"slices of volume {vid} are not stored together; rebuild the dataset")
                seen.add(vid)
                current, parts = vid, []
            parts.append({k: v[rows] for k, v in batch.items() if k != "volume_id"})
    if current is not None:
        yield finish()


class Scorer:
    """All requested maps of a batch of slices."""

    def __init__(self, model, config: dict, predictors):
        p = config["predictors"]
        self.predictors = list(predictors)
        self.pixel = PixelPredictors(model, n_samples=p["n_samples"], combi=p["combi"],
                                     smooth_sigma=p["smooth_sigma"])
        self.projection = (CompiledProjection(model, p["projection_steps"], p["projection_lambda"],
                                              p["projection_lr"]) if "proj_rec_error" in self.predictors else None)
        self.smooth_sigma = p["smooth_sigma"]
        self.batch_size = config["evaluate"]["batch_size"]

    def __call__(self, images: np.ndarray) -> dict:
        out: dict[str, list] = {}
        for start in range(0, len(images), self.batch_size):
            x = images[start:start + self.batch_size]
            maps = self.pixel(x)
            if self.projection is not None:
                projected, score, _ = self.projection(x)
                maps["proj_rec_error"] = smooth(score, self.smooth_sigma)
                maps["projected"] = projected
            for k, v in maps.items():
                out.setdefault(k, []).append(v)
        return {k: np.concatenate(v) for k, v in out.items()}


def calibrate(scorer: Scorer, validation: tf.data.Dataset, predictors, ensemble=None) -> dict:
    """Per predictor, the thresholds at the false-positive rates of ``FPRS`` on healthy validation
    brain pixels (at most ``MAX_CALIBRATION_SLICES`` slices)."""
    hists = {p: metrics.PixelHistogram(bits=HISTOGRAM_BITS) for p in predictors}
    taken = 0
    for volume in volumes(validation):
        if taken >= MAX_CALIBRATION_SLICES:
            break
        maps = scorer(volume.image)
        if ensemble is not None and "ensemble" in predictors:
            maps["ensemble"] = ensemble.score(maps)
        brain = volume.brain_mask > 0
        for p in predictors:
            hists[p].update(maps[p], np.zeros_like(volume.label), mask=brain)
        taken += len(volume.image)
    return {p: {k: hists[p].threshold_at_fpr(fpr) for k, fpr in FPRS.items()} for p in predictors}


class Measures:
    """The streamed metrics of one predictor."""

    def __init__(self, thresholds: dict):
        self.all = metrics.PixelHistogram(bits=HISTOGRAM_BITS)
        self.brain = metrics.PixelHistogram(bits=HISTOGRAM_BITS)
        self.thresholds = thresholds
        self.dice = metrics.VolumeDice(thresholds)

    def update(self, score, label, brain):
        self.all.update(score, label)
        self.brain.update(score, label, mask=brain)
        self.dice.update(score, label, mask=brain)

    def result(self) -> dict:
        best, best_threshold = self.brain.best_dice()
        out = {"auroc": self.all.auroc(), "auprc": self.all.auprc(), "auroc_brain": self.brain.auroc(),
               "auprc_brain": self.brain.auprc(), "best_dice": best, "best_dice_threshold": best_threshold}
        for key, summary in self.dice.summary().items():
            out[key], out[f"{key}_std"] = summary["mean"], summary["std"]
            out[f"{key}_threshold"] = self.thresholds[key]
        out["pixels"] = self.all.n_pos + self.all.n_neg
        return out


class FigureSlices:
    """Keeps the ``n`` test slices with the largest tumour area, and ``n`` tumour-free slices with
    the largest brain area, with their maps, for the figures."""

    def __init__(self, n: int):
        self.n = n
        self.tumour: list[tuple[float, dict]] = []
        self.healthy: list[tuple[float, dict]] = []

    def update(self, volume: Volume):
        tumour_area = (volume.label > 0).sum(axis=(1, 2, 3))
        brain_area = (volume.brain_mask > 0).sum(axis=(1, 2, 3))
        for i in range(len(volume.image)):
            pool, key = (self.tumour, tumour_area[i]) if tumour_area[i] else (self.healthy, brain_area[i])
            if len(pool) < self.n or key > pool[-1][0]:
                item = {"title": f"{volume.volume_id} z={volume.slice_index[i]}", "image": volume.image[i],
                        "label": volume.label[i], **{k: v[i] for k, v in volume.maps.items()}}
                pool.append((float(key), item))
                pool.sort(key=lambda t: -t[0])
                del pool[self.n:]


def write_nifti(volume: Volume, out_dir: str, names) -> None:
    """``<volume>_<name>.nii.gz`` in the source volume's shape and affine, for each map ``name``,
    plus the preprocessed ``image`` and the ``label``."""
    os.makedirs(out_dir, exist_ok=True)
    layers = {"image": (volume.image, 1), "label": (volume.label, 0), **{n: (volume.maps[n], 1) for n in names}}
    for name, (planes, order) in layers.items():
        data = preprocessing.slices_to_volume(planes, volume.slice_index, volume.geometry, order=order)
        data = data.astype(np.uint8) if name == "label" else data
        nib.save(nib.Nifti1Image(data, volume.geometry.source_affine),
                 os.path.join(out_dir, f"{volume.volume_id}_{name}.nii.gz"))


def evaluate(model, config: dict, test: tf.data.Dataset, validation: tf.data.Dataset, out_dir: str,
             predictors=None, verbose: bool = True) -> tuple[dict, FigureSlices]:
    """Score ``test`` with ``predictors`` (default: the config's, else all) and return
    ``(results, figure slices)``; NIfTI maps go to ``out_dir/maps`` when the config says so."""
    predictors = list(predictors or config["evaluate"]["predictors"] or ALL_PREDICTORS)
    unknown = [p for p in predictors if p not in ALL_PREDICTORS]
    if unknown:
        raise ValueError(f"unknown predictor(s) {', '.join(unknown)} (known: {', '.join(ALL_PREDICTORS)})")
    ev = config["evaluate"]
    needed = set(predictors) | ({"rec_error", "kl_grad", "rec_grad"} if "ensemble" in predictors else set())
    scorer = Scorer(model, config, [p for p in ALL_PREDICTORS if p in needed])

    ids = [v.decode() for v in test.map(lambda ex: ex["volume_id"]).as_numpy_iterator()]
    fit_ids, scored_ids = (ensemble_lib.split_volumes(ids, ev["ensemble_fraction"], config["seed"])
                           if "ensemble" in predictors else ([], sorted(set(ids))))

    progress = keras.utils.Progbar(len(ids), verbose=1 if verbose else 0, unit_name="slice")
    fit_set = tf.constant(fit_ids or [""])

    def in_fit(ex):
        return tf.reduce_any(tf.equal(ex["volume_id"], fit_set))

    def score(volume: Volume) -> Volume:
        volume.maps = scorer(volume.image)
        progress.add(len(volume.image))
        return volume

    # 1. the ensemble's fit volumes (kept: they are measured by the other predictors too)
    ensemble, fit_volumes = None, []
    if fit_ids:
        ensemble = ensemble_lib.PredictorEnsemble(seed=config["seed"])
        for volume in volumes(test.filter(in_fit)):
            fit_volumes.append(score(volume))
            ensemble.add_volume(volume.volume_id, volume.maps, volume.label)
        ensemble.fit()
    # 2. thresholds from healthy validation slices
    thresholds = calibrate(scorer, validation, predictors, ensemble)
    measures = {p: Measures(thresholds[p]) for p in predictors}
    figures = FigureSlices(ev["num_figures"])

    # 3. every test volume
    def measure(volume: Volume, fitting: bool):
        label, brain = volume.label, volume.brain_mask > 0
        if ensemble is not None and not fitting:
            volume.maps["ensemble"] = ensemble.score(volume.maps)
        for p in predictors:
            if p in volume.maps:
                measures[p].update(volume.maps[p], label, brain)
        if ev["write_nifti"]:
            write_nifti(volume, os.path.join(out_dir, "maps"),
                        [p for p in predictors if p in volume.maps and p != "intensity"])
        figures.update(volume)

    for volume in fit_volumes:
        measure(volume, fitting=True)
    del fit_volumes
    rest = test.filter(lambda ex: tf.logical_not(in_fit(ex))) if fit_ids else test
    for volume in volumes(rest):
        measure(score(volume), fitting=False)

    results = {p: measures[p].result() for p in predictors}
    if ensemble is not None:
        results["ensemble"].update(coefficients=ensemble.coefficients(), scored_volumes=len(scored_ids))
    return results, figures
