"""Anomaly maps of whole volumes: the stream every job (evaluation, calibration, localization,
tuning) scores with.

- ``volumes(examples)`` groups a split's slices (stored volume by volume) into ``Volume`` objects;
- ``Scorer`` makes every requested map of a volume's slices (``tfvae.maps.predictors``,
  ``tfvae.maps.projection``, ``tfvae.maps.recommended``), after ``Scorer.fit`` took from the healthy
  validation volumes what the maps need (the reference Combi's KL-grad range, the recommended map's
  settings); it always computes in float32, whatever precision the model was trained in;
- ``variants`` gives the maps as scored ("raw") and post-processed in 3D (``tfvae.maps.postprocessing``).
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import tensorflow as tf
from scipy import ndimage

from tfvae.maps import postprocessing
from tfvae.data import preprocessing
from tfvae.utils.console import Stage
from tfvae.maps import recommended as recommended_lib
from tfvae.model.vae import in_float32
from tfvae.maps.predictors import PixelPredictors, smooth
from tfvae.maps.projection import CompiledProjection

MAX_CALIBRATION_SLICES = 4096  # healthy validation slices used for statistics and thresholds
FLAG_FPR = 0.01  # the second restoration frees the region the first map flags at this healthy false-positive rate
FLAG_DILATION = 1  # voxels the flagged region grows by (3D, face neighbours) before it is freed
FLAG_KEY = "recommended_flag_threshold"  # the threshold in Scorer.reference (stored with the run's calibration)
MAX_KEPT_BYTES = 2 ** 30  # network outputs of healthy volumes a Scorer keeps between fit and calibration
GRADIENT_ONLY = ("elbo_grad", "kl_grad", "rec_grad", "combi")  # the maps that need the backward pass


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
    variants: dict = dataclasses.field(default_factory=dict)  # see ``variants``
    thresholds: dict = dataclasses.field(default_factory=dict)  # each variant's own (evaluation.ScanThresholds)
    ensemble_fit: bool = False  # the ensemble was fitted on this volume (evaluation)
    far: np.ndarray | None = None  # (z, S, S) bool: more than evaluation.FAR_MM from any lesion (evaluation)


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


FILTERED = ("recommended", "intensity_filtered")  # the maps made with the recommended recipe (3D filters)


def intensity_positive(images: np.ndarray) -> np.ndarray:
    """max(x, 0): the positive part of the z-scored input, what ``intensity_filtered`` filters -- the
    recommended map's recipe with no model (the reconstruction taken as the brain's mean, 0)."""
    return np.maximum(np.asarray(images, np.float32), 0.0)


def as_volumes(healthy, limit: int | None = None):
    """The ``Volume`` s of ``healthy``: a split (``tf.data.Dataset``, grouped by ``volumes``) or
    already a list of them (e.g. a user's own healthy scans, ``tfvae.thresholds.healthy_scans``); at most
    ``limit`` when given."""
    stream = volumes(healthy) if isinstance(healthy, tf.data.Dataset) else iter(healthy)
    return stream if limit is None else (v for _, v in zip(range(limit), stream))


class Scorer:
    """All requested maps of a volume's slices.

    ``fit(validation)`` must run before scoring when the maps need statistics of healthy
    validation volumes: the fixed KL-grad range of the reference Combi, and the recommended map's
    settings (``tfvae.maps.recommended``); ``reference`` holds what it found."""

    def __init__(self, model, config: dict, predictors):
        p, r = config["predictors"], config["recommended"]
        model = in_float32(model)  # a mixed-precision model's float16 input gradients underflow
        self.model = model
        self.predictors = list(predictors)
        self.seed = config["seed"]
        self.pixel = PixelPredictors(model, n_samples=p["n_samples"], combi=p["combi"],
                                     smooth_gradients=p["smooth_gradients"], smooth_sigma=p["smooth_sigma"],
                                     elbo_grad=p["elbo_grad"])
        self.restore = "recommended" in self.predictors and r["restore"]
        self.projection = (CompiledProjection(model, p["projection_steps"], p["projection_lambda"], p["projection_lr"])
                           if "proj_rec_error" in self.predictors or self.restore else None)
        self.smooth_sigma = p["smooth_sigma"]
        self.batch_size = config["evaluate"]["batch_size"]
        # the filtered maps (tfvae.maps.recommended): their 3D filter sizes in mm (None: chosen by fit), and the
        # healthy validation grid (mm per slice, row, column) they were fitted on: a scan's grid when none is given
        self.sizes = {name: {"median_mm": r["median_mm"], "gaussian_sigma_mm": r["gaussian_sigma_mm"]}
                      for name in FILTERED if name in self.predictors}
        self.grids: dict = {name: None for name in self.sizes}  # set by fit
        self.synthetic_copies = r["synthetic_copies"]
        # the second restoration (recommended.second_restoration): the first map's healthy threshold
        # at FLAG_FPR marks the region restored again without a data term; set by fit
        if r["second_restoration"] and not self.restore and "recommended" in self.predictors:
            raise ValueError("recommended.second_restoration needs recommended.restore (a second restoration "
                             "of a map that restores nothing)")
        self.second_restoration = self.restore and r["second_restoration"]
        self.flag_threshold: float | None = None
        self.reference: dict = {}
        self._kept: dict = {}  # network outputs of healthy volumes, made once (``_network``)
        self._kept_bytes = 0
        self._healthy_keys: set = set()
        # compute only what is asked: no gradient pass for e.g. ["intensity"] or ["recommended"]
        self.needs_gradients = any(q in self.predictors for q in GRADIENT_ONLY)
        self.needs_reconstruction = "rec_error" in self.predictors or ("recommended" in self.predictors
                                                                       and not self.restore)

    def _needs_kl_range(self) -> bool:
        return "combi" in self.predictors and self.pixel.combi == "zimmerer" and self.pixel.kl_range is None

    def _needs_selection(self, name: str) -> bool:
        return name in self.sizes and None in self.sizes[name].values()

    @property
    def recommended(self) -> dict:
        """The recommended map's filter sizes (millimetres)."""
        return self.sizes["recommended"]

    def fit(self, validation, stored: dict | None = None, verbose: bool = False) -> dict:
        """Take what the maps need from the healthy ``validation`` split (or a list of healthy
        ``Volume`` s, ``as_volumes``) -- or from ``stored``, the
        ``reference`` of an earlier fit of the same model and settings -- and return ``reference``.
        ``verbose``: announce each stage and show its progress."""
        stored = stored or {}
        if self._needs_kl_range():
            if "kl_grad_range" in stored:
                lo, hi = stored["kl_grad_range"]
            else:
                stage = Stage("the reference Combi's KL-grad range, on healthy validation slices", "slice", verbose)
                lo, hi, taken = np.inf, -np.inf, 0
                for volume in self._healthy(validation):
                    if taken >= MAX_CALIBRATION_SLICES:
                        break
                    for outputs in self._network(volume.image, "network"):
                        kl = outputs["kl_grad_raw"]
                        lo, hi = min(lo, float(kl.min())), max(hi, float(kl.max()))
                    taken += len(volume.image)
                    stage.update(taken)
                stage.done()
            self.pixel.kl_range = (lo, hi)
            self.reference["kl_grad_range"] = [lo, hi]
        for name in [n for n, grid in self.grids.items() if grid is None]:
            if set(self.sizes[name]) | {"voxel_mm"} <= set(stored.get(name, {})):  # sizes in mm, and their grid
                chosen = stored[name]
            elif self._needs_selection(name):
                fixed = {k: v for k, v in self.sizes[name].items() if v is not None}
                healthy = ((v.image[..., 0], v.brain_mask[..., 0] > 0, v.geometry.voxel_mm())
                           for v in self._healthy(validation))
                residual = self._positive_residual if name == "recommended" else intensity_positive
                stage = Stage(f"choosing the {name} map's filter sizes on healthy validation volumes with "
                              f"{self.synthetic_copies} synthetic lesion(s) each (no label)", "lesion", verbose)
                chosen = recommended_lib.select(residual, healthy, self.synthetic_copies, self.seed, **fixed,
                                                progress=stage.update)
            else:  # both sizes given: the validation grid recorded beside them
                grid = recommended_lib.grid_mm(v.geometry.voxel_mm() for v in
                                               as_volumes(validation, recommended_lib.MAX_SELECTION_VOLUMES))
                chosen = recommended_lib.described(self.sizes[name]["median_mm"],
                                                   self.sizes[name]["gaussian_sigma_mm"], grid)
            self.sizes[name] = {k: float(chosen[k]) for k in self.sizes[name]}
            self.grids[name] = [float(v) for v in chosen["voxel_mm"]]
            self.reference[name] = chosen
        if self.second_restoration and self.flag_threshold is None:
            if FLAG_KEY in stored:
                self.flag_threshold = float(stored[FLAG_KEY])
            else:
                if validation is None:
                    raise ValueError("recommended.second_restoration: no stored threshold for the first restoration "
                                     "and no healthy validation data to set it on")
                stage = Stage("the first restoration's healthy threshold, on healthy validation slices", "slice",
                              verbose)
                scores, taken = [], 0
                for volume in self._healthy(validation):  # as many slices as the calibration reads, at most
                    if taken >= MAX_CALIBRATION_SLICES:
                        break
                    first = self._maps(volume.image, volume.brain_mask, volume.geometry.voxel_mm(),
                                       second=False)["recommended"]
                    scores.append(first[volume.brain_mask > 0])
                    taken += len(volume.image)
                    stage.update(taken)
                stage.done()
                if not scores:
                    raise ValueError("no healthy validation volume to set the second restoration's threshold on")
                self.flag_threshold = float(np.quantile(np.concatenate(scores), 1.0 - FLAG_FPR))
            self.reference[FLAG_KEY] = self.flag_threshold
        return self.reference

    def _positive_residual(self, images: np.ndarray) -> np.ndarray:
        """max(x - g, 0) with g the reconstruction of the restored image (or of x itself)."""
        if self.restore:
            parts = [projected[2] for projected in self._network(images, "projection")]
        else:
            parts = [self.model(images[start:start + self.batch_size], training=False).numpy()
                     for start in range(0, len(images), self.batch_size)]
        return recommended_lib.positive_residual(images, np.concatenate(parts))

    @staticmethod
    def _key(images: np.ndarray) -> tuple:
        return images.shape, hashlib.blake2b(np.ascontiguousarray(images).tobytes(), digest_size=16).digest()

    def _healthy(self, validation, limit: int | None = None):
        """``as_volumes(validation, limit)``, each volume's images remembered as healthy: their
        network outputs are kept (``_network``) for the later stages of the fit and the calibration."""
        for volume in as_volumes(validation, limit):
            self._healthy_keys.add(self._key(volume.image))
            yield volume

    def _network(self, images: np.ndarray, part: str) -> list:
        """One network output per batch of ``images``: ``"network"`` (``PixelPredictors.network``) or
        ``"projection"`` (``CompiledProjection``). The outputs of a healthy volume of the fit
        (``_healthy``: the KL range, the selection and the calibration each score them) are kept, up to
        ``MAX_KEPT_BYTES``, and returned as they are when asked again: their network passes are made once."""
        key = self._key(images) if self._healthy_keys else None  # nothing remembered: no volume to hash
        found = self._kept.get(key, {}).get(part)
        if found is not None:
            return found
        run = self.pixel.network if part == "network" else self.projection
        outputs = [run(images[start:start + self.batch_size]) for start in range(0, len(images), self.batch_size)]
        size = sum(a.nbytes for batch in outputs for a in (batch.values() if isinstance(batch, dict) else batch))
        if key in self._healthy_keys and self._kept_bytes + size <= MAX_KEPT_BYTES:
            self._kept.setdefault(key, {})[part] = outputs
            self._kept_bytes += size
        return outputs

    def release(self) -> None:
        """Forget the kept network outputs of healthy volumes (``_network``)."""
        self._kept, self._kept_bytes, self._healthy_keys = {}, 0, set()

    def __call__(self, images: np.ndarray, brain_mask: np.ndarray | None = None, voxel_mm=None) -> dict:
        """The maps of one volume's slices (z, S, S, 1); ``brain_mask`` (default: non-zero pixels)
        bounds the recommended map; ``voxel_mm`` (slice spacing, row, column) is the grid its filter
        sizes (millimetres) are converted for (``recommended.filter_sizes``; default: the validation grid)."""
        if self.second_restoration and self.flag_threshold is None:
            raise RuntimeError("Scorer.fit(validation) must set the second restoration's threshold first")
        return self._maps(images, brain_mask, voxel_mm, second=self.second_restoration)

    def _maps(self, images: np.ndarray, brain_mask, voxel_mm, *, second: bool) -> dict:
        """``__call__``'s maps; ``second``: the recommended map from the second restoration."""
        out: dict[str, list] = {}
        network = self._network(images, "network") if self.needs_gradients else None
        projections = self._network(images, "projection") if self.projection is not None else None
        for i, start in enumerate(range(0, len(images), self.batch_size)):
            x = images[start:start + self.batch_size]
            if self.needs_gradients:  # one forward and backward pass gives every gradient map
                maps = self.pixel.maps(x, network[i])
            else:  # only what is asked: the input, and a forward pass when a reconstruction is needed
                maps = {"intensity": np.asarray(x, np.float32)}
                if self.needs_reconstruction:
                    reconstruction = self.model(x, training=False).numpy()
                    maps["reconstruction"] = reconstruction
                    maps["rec_error"] = smooth((np.asarray(x, np.float32) - reconstruction) ** 2, self.smooth_sigma)
            if self.projection is not None:
                projected, score, reconstruction = projections[i]
                maps["proj_rec_error"] = smooth(score, self.smooth_sigma)
                maps["projected"] = projected
                maps["projected_reconstruction"] = reconstruction
            for k, v in maps.items():
                out.setdefault(k, []).append(v)
        maps = {k: np.concatenate(v) for k, v in out.items()}
        brain = (images != 0) if brain_mask is None else (np.asarray(brain_mask) > 0)
        for name in self.sizes:
            if self._needs_selection(name):
                raise RuntimeError(f"Scorer.fit(validation) must choose the {name} map's settings first")
            if name == "recommended":
                reconstruction = maps["projected_reconstruction" if self.restore else "reconstruction"]
                residual = recommended_lib.positive_residual(images, reconstruction)
            else:
                residual = intensity_positive(images)
            grid = self.grids[name] if voxel_mm is None else voxel_mm
            maps[name] = recommended_lib.postprocess(residual[..., 0], brain[..., 0], **self.sizes[name],
                                                     voxel_mm=grid)[..., None]
            if name == "recommended" and second:
                maps["recommended_first_restoration"] = maps[name]
                maps[name] = self._second_restoration(images, maps, brain, grid)
        return maps

    def _second_restoration(self, images: np.ndarray, maps: dict, brain: np.ndarray, grid) -> np.ndarray:
        """The recommended map made again from a second restoration: the region the first map flags
        at ``flag_threshold`` (dilated by one voxel in 3D, inside the brain) starts from the first
        restoration's reconstruction and has no data term (``CompiledProjection.masked``); the other
        pixels are restored as before. Measured in docs/results_phantom.md (issue 33)."""
        flagged = ndimage.binary_dilation(maps["recommended"][..., 0] >= self.flag_threshold,
                                          iterations=FLAG_DILATION)[..., None] & brain
        x0 = np.asarray(images, np.float32)
        x_init = np.where(flagged, maps["projected_reconstruction"], x0).astype(np.float32)
        weights = (~flagged).astype(np.float32)
        b = self.batch_size
        reconstruction = np.concatenate([self.projection.masked(x0[a:a + b], x_init[a:a + b], weights[a:a + b])
                                         for a in range(0, len(x0), b)])
        residual = recommended_lib.positive_residual(x0, reconstruction)
        return recommended_lib.postprocess(residual[..., 0], brain[..., 0], **self.sizes["recommended"],
                                           voxel_mm=grid)[..., None]


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
