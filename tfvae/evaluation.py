"""Scoring a test split with every predictor, volume by volume, and measuring the maps.

For each predictor (``tfvae.predictors.ALL_PREDICTORS``) ``evaluate`` reports

- ``auroc``, ``auprc``: over all pixels of all test slices (the paper's convention: background
  included, labels = seg > 0);
- ``auroc_brain``, ``auprc_brain``: over pixels inside the brain mask only;
- ``best_dice``: the best dataset-wise Dice over all thresholds (brain pixels), with its threshold;
- ``dice_fpr01``, ``dice_fpr05``: Dice per volume (brain pixels) at the threshold that flags 1 % /
  5 % of the brain pixels of healthy *validation* slices (no test label is used), averaged over
  volumes, with the spread (``*_std``) and the thresholds.

When post-processing is on (``postprocess.*``, see ``tfvae.postprocessing``), every metric is
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
"""

from __future__ import annotations

import dataclasses
import os

import keras
import nibabel as nib
import numpy as np
import tensorflow as tf

from tfvae import config as config_lib
from tfvae import data
from tfvae import ensemble as ensemble_lib
from tfvae import metrics, postprocessing, preprocessing, reporting
from tfvae import recommended as recommended_lib
from tfvae.model import in_float32, load
from tfvae.training import MODEL_FILES
from tfvae.predictors import ALL_PREDICTORS, PixelPredictors, smooth
from tfvae.projection import CompiledProjection

FPRS = {"dice_fpr01": 0.01, "dice_fpr05": 0.05}
HISTOGRAM_BITS = 22  # 4M bins per class when the exact mode overflows: ~1e-5 of AUROC, 64 MB each
MAX_CALIBRATION_SLICES = 4096
SAME_VOLUME_METRICS = ("auroc", "auprc", "auroc_brain", "auprc_brain", "best_dice", "dice_fpr01", "dice_fpr05")


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
    """All requested maps of a volume's slices.

    ``fit(validation)`` must run before scoring when the maps need statistics of healthy
    validation volumes: the fixed KL-grad range of the reference Combi, and the recommended map's
    settings (``tfvae.recommended``); ``reference`` holds what it found."""

    def __init__(self, model, config: dict, predictors):
        p, r = config["predictors"], config["recommended"]
        model = in_float32(model)  # a mixed-precision model's float16 input gradients underflow
        self.model = model
        self.predictors = list(predictors)
        self.seed = config["seed"]
        self.pixel = PixelPredictors(model, n_samples=p["n_samples"], combi=p["combi"],
                                     smooth_gradients=p["smooth_gradients"], smooth_sigma=p["smooth_sigma"])
        self.restore = "recommended" in self.predictors and r["restore"]
        self.projection = (CompiledProjection(model, p["projection_steps"], p["projection_lambda"], p["projection_lr"])
                           if "proj_rec_error" in self.predictors or self.restore else None)
        self.smooth_sigma = p["smooth_sigma"]
        self.batch_size = config["evaluate"]["batch_size"]
        self.recommended = {"median_size": r["median_size"], "gaussian_sigma": r["gaussian_sigma"]}
        self.synthetic_copies = r["synthetic_copies"]
        self.reference: dict = {}

    def _needs_kl_range(self) -> bool:
        return "combi" in self.predictors and self.pixel.combi == "zimmerer" and self.pixel.kl_range is None

    def _needs_selection(self) -> bool:
        return "recommended" in self.predictors and None in self.recommended.values()

    def fit(self, validation: tf.data.Dataset | None, stored: dict | None = None) -> dict:
        """Take what the maps need from the healthy ``validation`` split -- or from ``stored``, the
        ``reference`` of an earlier fit of the same model and settings -- and return ``reference``."""
        stored = stored or {}
        if self._needs_kl_range():
            if "kl_grad_range" in stored:
                lo, hi = stored["kl_grad_range"]
            else:
                lo, hi, taken = np.inf, -np.inf, 0
                for volume in volumes(validation):
                    if taken >= MAX_CALIBRATION_SLICES:
                        break
                    for start in range(0, len(volume.image), self.batch_size):
                        kl = self.pixel.raw_kl_grad(volume.image[start:start + self.batch_size])
                        lo, hi = min(lo, float(kl.min())), max(hi, float(kl.max()))
                    taken += len(volume.image)
            self.pixel.kl_range = (lo, hi)
            self.reference["kl_grad_range"] = [lo, hi]
        if self._needs_selection():
            if "recommended" in stored:
                chosen = stored["recommended"]
            else:
                fixed = {k: v for k, v in self.recommended.items() if v is not None}
                healthy = ((v.image[..., 0], v.brain_mask[..., 0] > 0, v.geometry.voxel_mm())
                           for v in volumes(validation))
                chosen = recommended_lib.select(self._positive_residual, healthy, self.synthetic_copies, self.seed,
                                                **fixed)
            self.recommended = {k: chosen[k] for k in self.recommended}
            self.reference["recommended"] = chosen
        return self.reference

    def _positive_residual(self, images: np.ndarray) -> np.ndarray:
        """max(x - g, 0) with g the reconstruction of the restored image (or of x itself)."""
        parts = []
        for start in range(0, len(images), self.batch_size):
            x = images[start:start + self.batch_size]
            parts.append(self.projection(x)[2] if self.restore else self.model(x, training=False).numpy())
        return recommended_lib.positive_residual(images, np.concatenate(parts))

    def __call__(self, images: np.ndarray, brain_mask: np.ndarray | None = None) -> dict:
        """The maps of one volume's slices (z, S, S, 1); ``brain_mask`` (default: non-zero pixels)
        bounds the recommended map."""
        out: dict[str, list] = {}
        for start in range(0, len(images), self.batch_size):
            x = images[start:start + self.batch_size]
            maps = self.pixel(x)
            if self.projection is not None:
                projected, score, reconstruction = self.projection(x)
                maps["proj_rec_error"] = smooth(score, self.smooth_sigma)
                maps["projected"] = projected
                maps["projected_reconstruction"] = reconstruction
            for k, v in maps.items():
                out.setdefault(k, []).append(v)
        maps = {k: np.concatenate(v) for k, v in out.items()}
        if "recommended" in self.predictors:
            if self._needs_selection():
                raise RuntimeError("Scorer.fit(validation) must choose the recommended map's settings first")
            brain = (images != 0) if brain_mask is None else (np.asarray(brain_mask) > 0)
            reconstruction = maps["projected_reconstruction" if self.restore else "reconstruction"]
            residual = recommended_lib.positive_residual(images, reconstruction)
            maps["recommended"] = recommended_lib.postprocess(residual[..., 0], brain[..., 0],
                                                              **self.recommended)[..., None]
        return maps


def variants(volume: Volume, predictors, settings: dict) -> dict[str, dict]:
    """The maps of ``predictors`` as scored ("raw") and, when any post-processing is on, after it
    ("postprocessed", on the stacked slices of the volume)."""
    out = {"raw": {p: volume.maps[p] for p in predictors if p in volume.maps}}
    if postprocessing.enabled(settings):
        maps = postprocessing.positive_residual(volume.maps, volume.image) if settings["positive_only"] else volume.maps
        brain = volume.brain_mask[..., 0] > 0
        out["postprocessed"] = {p: postprocessing.scores(maps[p][..., 0], brain, settings)[..., None]
                                for p in out["raw"]}
    return out


def calibrate(scorer: Scorer, validation: tf.data.Dataset, predictors, settings: dict, ensemble=None,
              fprs: dict = FPRS) -> dict:
    """``{variant: {predictor: {key: threshold}}}``: the thresholds at the false-positive rates
    ``fprs`` on healthy validation brain pixels (at most ``MAX_CALIBRATION_SLICES`` slices)."""
    hists: dict = {}
    taken = 0
    for volume in volumes(validation):
        if taken >= MAX_CALIBRATION_SLICES:
            break
        volume.maps = scorer(volume.image, volume.brain_mask)
        if ensemble is not None and "ensemble" in predictors:
            volume.maps["ensemble"] = ensemble.score(volume.maps)
        brain = volume.brain_mask > 0
        for variant, maps in variants(volume, predictors, settings).items():
            for p, score in maps.items():
                hist = hists.setdefault(variant, {}).setdefault(p, metrics.PixelHistogram(bits=HISTOGRAM_BITS))
                hist.update(score, np.zeros_like(volume.label), mask=brain)
        taken += len(volume.image)
    return {variant: {p: {k: h.threshold_at_fpr(fpr) for k, fpr in fprs.items()} for p, h in by_p.items()}
            for variant, by_p in hists.items()}


class Measures:
    """The streamed metrics of one predictor (one variant)."""

    def __init__(self, thresholds: dict, min_component_voxels: int = 0):
        self.all = metrics.PixelHistogram(bits=HISTOGRAM_BITS)
        self.brain = metrics.PixelHistogram(bits=HISTOGRAM_BITS)
        self.thresholds = thresholds
        clean = ((lambda pred: postprocessing.remove_small_components(pred, min_component_voxels))
                 if min_component_voxels else None)
        self.dice = metrics.VolumeDice(thresholds, clean=clean)

    def update(self, score, label, brain):
        self.all.update(score, label)
        self.brain.update(score, label, mask=brain)
        self.dice.update(score[..., 0], label[..., 0], mask=brain[..., 0])

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


def write_nifti(volume: Volume, out_dir: str, maps: dict) -> None:
    """``<volume>_<name>.nii.gz`` in the source volume's shape and affine, for each of ``maps``
    (name -> slices), plus the preprocessed ``image`` and the ``label``."""
    os.makedirs(out_dir, exist_ok=True)
    layers = {"image": (volume.image, 1), "label": (volume.label, 0), **{n: (m, 1) for n, m in maps.items()}}
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
    predictors = [p for p in ALL_PREDICTORS if p in predictors]  # tables list them in this order
    ev = config["evaluate"]
    features = config["ensemble"]["features"]
    needed = set(predictors) | (set(features) if "ensemble" in predictors else set())
    scorer = Scorer(model, config, [p for p in ALL_PREDICTORS if p in needed])
    reference = scorer.fit(validation)  # KL-grad range, recommended settings: healthy validation only

    ids = [v.decode() for v in test.map(lambda ex: ex["volume_id"]).as_numpy_iterator()]
    fit_ids, scored_ids = (ensemble_lib.split_volumes(ids, ev["ensemble_fraction"], config["seed"])
                           if "ensemble" in predictors else ([], sorted(set(ids))))

    progress = keras.utils.Progbar(len(ids), verbose=1 if verbose else 0, unit_name="slice")
    fit_set = tf.constant(fit_ids or [""])

    def in_fit(ex):
        return tf.reduce_any(tf.equal(ex["volume_id"], fit_set))

    def score(volume: Volume) -> Volume:
        volume.maps = scorer(volume.image, volume.brain_mask)
        progress.add(len(volume.image))
        return volume

    # 1. the ensemble's fit volumes (kept: they are measured by the other predictors too)
    ensemble, fit_volumes = None, []
    if fit_ids:
        ensemble = ensemble_lib.PredictorEnsemble(features, seed=config["seed"])
        for volume in volumes(test.filter(in_fit)):
            fit_volumes.append(score(volume))
            ensemble.add_volume(volume.volume_id, volume.maps, volume.label)
        ensemble.fit()
    # 2. thresholds from healthy validation slices
    settings = config["postprocess"]
    thresholds = calibrate(scorer, validation, predictors, settings, ensemble)
    measures = {variant: {p: Measures(t, settings["min_component_voxels"] if variant != "raw" else 0)
                          for p, t in by_p.items()} for variant, by_p in thresholds.items()}
    # every predictor again on the ensemble's scored volumes only, to compare like with like
    same_volumes = {p: Measures(thresholds["raw"][p]) for p in predictors} if ensemble is not None else {}
    figures = FigureSlices(ev["num_figures"])

    # 3. every test volume
    def measure(volume: Volume, fitting: bool):
        label, brain = volume.label, volume.brain_mask > 0
        if ensemble is not None and not fitting:
            volume.maps["ensemble"] = ensemble.score(volume.maps)
        maps = variants(volume, predictors, settings)
        for variant, by_p in maps.items():
            for p, score in by_p.items():
                measures[variant][p].update(score, label, brain)
        if ensemble is not None and not fitting:
            for p, score in maps["raw"].items():
                same_volumes[p].update(score, label, brain)
        if ev["write_nifti"]:
            write_nifti(volume, os.path.join(out_dir, "maps"),
                        {p: v for p, v in maps["raw"].items() if p != "intensity"}
                        | {f"{p}_postprocessed": v for p, v in maps.get("postprocessed", {}).items()})
        figures.update(volume)

    for volume in fit_volumes:
        measure(volume, fitting=True)
    del fit_volumes
    rest = test.filter(lambda ex: tf.logical_not(in_fit(ex))) if fit_ids else test
    for volume in volumes(rest):
        measure(score(volume), fitting=False)

    results = {p: measures["raw"][p].result() for p in predictors}
    for p, m in measures.get("postprocessed", {}).items():
        results[p]["postprocessed"] = m.result()
    for p, m in same_volumes.items():
        results[p]["ensemble_volumes"] = {k: v for k, v in m.result().items() if k in SAME_VOLUME_METRICS}
    if ensemble is not None:
        results["ensemble"].update(coefficients=ensemble.coefficients(), scored_volumes=len(scored_ids))
    if "recommended" in results:
        results["recommended"]["settings"] = dict(scorer.recommended)
        if "recommended" in reference:
            results["recommended"]["selection"] = reference["recommended"]
    if "combi" in results and "kl_grad_range" in reference:
        results["combi"]["kl_grad_range"] = reference["kl_grad_range"]
    return results, figures


def evaluate_run(run_dir: str, config: dict, out_dir: str, *, checkpoint: str = "final",
                 verbose: bool = True) -> tuple[dict, str]:
    """Evaluate a run's saved model (``checkpoint``: a key of ``training.MODEL_FILES``) on its test
    data (``data.test_data_config``) with ``config``; write results, figures and the config used to
    ``out_dir`` and the figures to TensorBoard (``run_dir/logs/eval``). Returns (results, title)."""
    keras.utils.set_random_seed(config["seed"])
    model = load(os.path.join(run_dir, MODEL_FILES[checkpoint]))
    d = config["data"]
    test_data = data.test_data_config(d)  # e.g. trained on hcp_t2, tested on brats
    test = data.load_split(test_data, d["test_split"])
    validation = data.load_split(d, d["validation_split"])
    results, figures = evaluate(model, config, test, validation, out_dir, verbose=verbose)
    title = (f"{config['name']}: {test_data['name']}/{test_data['config']} {d['test_split']}, "
             f"beta {config['model']['beta']:g}, latent {config['model']['latent_dim']}, {checkpoint} model")
    reporting.write_results(results, out_dir, header=f"# {title}")
    images = reporting.save_figures(figures, list(results), os.path.join(out_dir, "figures"))
    with tf.summary.create_file_writer(os.path.join(run_dir, "logs", "eval")).as_default(step=0):
        for name, image in images.items():
            tf.summary.image(name, image[None])
    config_lib.save(config, os.path.join(out_dir, "config.json"))  # last: what these results were made with
    return results, title
