"""Anomaly maps for scans that are in no dataset: what ``scripts/localize.py`` runs.

A scan goes through exactly the preprocessing of the run's training data
(``preprocessing.volume_to_slices`` with the run's image size, field of view and slice selection;
orientation from the affine, brain mask from the given mask or the non-zero voxels, brain z-score),
every kept slice is scored in batches, the maps are post-processed as the config says
(``tfvae.postprocessing``) and thresholded at a false-positive rate calibrated on the run's healthy
validation slices, and score and mask are written back into the scan's own grid. Slices the
preprocessing skips (little brain) get score 0.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import nibabel as nib
import numpy as np

from tfvae import evaluation, postprocessing, preprocessing
from tfvae.data import clip as clip_lib

MODALITY_ALIASES = {"t2": "t2", "t2w": "t2", "flair": "flair", "t2f": "flair", "t1": "t1", "t1w": "t1",
                    "t1n": "t1", "t1ce": "t1ce", "t1c": "t1ce", "t1gd": "t1ce", "pd": "pd", "pdw": "pd"}


def modality_from_name(path: str) -> str | None:
    """The MRI modality a file name suggests (``..._t1ce.nii.gz`` -> "t1ce"), or None."""
    name = re.sub(r"\.nii(\.gz)?$", "", os.path.basename(path).lower())
    found = [MODALITY_ALIASES[t] for t in re.split(r"[_.\-\s]+", name) if t in MODALITY_ALIASES]
    return found[-1] if found else None


def scan_warnings(path: str, data: np.ndarray, affine: np.ndarray, reference: dict) -> list[str]:
    """Differences from what the run was trained on (modality by file name, shape, voxel size)."""
    warnings = []
    modality = modality_from_name(path)
    if modality and modality != reference["modality"]:
        warnings.append(f"{path}: looks like {modality}, the run was trained on {reference['modality']}; "
                        "scoring it anyway")
    voxel = [round(float(v), 2) for v in nib.affines.voxel_sizes(affine)]
    if reference.get("voxel_mm") is not None:
        ref_voxel = [round(float(v), 2) for v in reference["voxel_mm"]]
        if sorted(voxel) != sorted(ref_voxel) or sorted(data.shape) != sorted(reference["shape"]):
            warnings.append(f"{path}: shape {tuple(data.shape)} at {tuple(voxel)} mm differs from the training "
                            f"scans ({tuple(reference['shape'])} at {tuple(ref_voxel)} mm); resampled to the "
                            "run's field of view")
    return warnings


@dataclasses.dataclass
class Localized:
    score: np.ndarray       # float32, the scan's grid
    mask: np.ndarray        # uint8 0/1, the scan's grid
    voxel_ml: float
    components: int
    largest_voxels: int

    @property
    def volume_ml(self) -> float:
        return float(self.mask.sum()) * self.voxel_ml


def localize(scorer: evaluation.Scorer, data: np.ndarray, affine: np.ndarray, *, predictor: str, threshold: float,
             settings: dict, image_size: int, fov_mm: float, min_brain_fraction: float,
             mask: np.ndarray | None = None, clip: float | None = None) -> Localized:
    sliced = preprocessing.volume_to_slices(data, affine, mask=mask, image_size=image_size, fov_mm=fov_mm,
                                            min_brain_fraction=min_brain_fraction)
    sliced = dataclasses.replace(sliced, image=clip_lib(sliced.image, clip))
    volume = evaluation.Volume("scan", sliced.image, sliced.label, sliced.brain_mask, sliced.slice_index,
                               sliced.geometry, maps=scorer(sliced.image, sliced.brain_mask))
    maps = evaluation.variants(volume, [predictor], settings)
    score = maps.get("postprocessed", maps["raw"])[predictor][..., 0]
    brain = sliced.brain_mask[..., 0] > 0
    binary = postprocessing.remove_small_components((score >= threshold) & brain, settings["min_component_voxels"])
    score_volume = preprocessing.slices_to_volume(score, sliced.slice_index, sliced.geometry, order=1)
    mask_volume = preprocessing.slices_to_volume(binary.astype(np.float32), sliced.slice_index, sliced.geometry,
                                                 order=0).astype(np.uint8)
    n, largest = postprocessing.components(mask_volume)
    return Localized(score_volume, mask_volume, float(np.prod(nib.affines.voxel_sizes(affine))) / 1000.0, n, largest)


MAP_SECTIONS = ("predictors", "postprocess", "recommended")  # config sections a map depends on


def _stored_evaluation(run_dir: str, config: dict) -> dict | None:
    """``RUN/eval/results.json`` when ``evaluate.py`` made it with the same map settings, else None."""
    results_path = os.path.join(run_dir, "eval", "results.json")
    config_path = os.path.join(run_dir, "eval", "config.json")
    if not (os.path.isfile(results_path) and os.path.isfile(config_path)):
        return None
    with open(config_path) as f:
        used = json.load(f)
    if any(used.get(s) != config[s] for s in MAP_SECTIONS) or used["data"].get("clip") != config["data"].get("clip"):
        return None
    with open(results_path) as f:
        return json.load(f)


def stored_reference(run_dir: str, config: dict) -> dict:
    """What ``evaluate.py`` took from the healthy validation slices for these map settings (the
    recommended map's chosen settings, the Combi's KL-grad range), for ``Scorer.fit``; {} if none."""
    results = _stored_evaluation(run_dir, config) or {}
    out = {}
    if "settings" in results.get("recommended", {}):
        out["recommended"] = results["recommended"]["settings"]
    if "kl_grad_range" in results.get("combi", {}):
        out["kl_grad_range"] = results["combi"]["kl_grad_range"]
    return out


def stored_thresholds(run_dir: str, config: dict, predictor: str, fpr: float) -> float | None:
    """The threshold ``evaluate.py`` calibrated for ``predictor`` at ``fpr`` (one of
    ``evaluation.FPRS``: 1 % or 5 %), if its evaluation used the same map settings; else None."""
    key = {rate: name for name, rate in evaluation.FPRS.items()}.get(fpr)
    results = _stored_evaluation(run_dir, config)
    if key is None or results is None or predictor not in results:
        return None
    result = results[predictor]
    if postprocessing.enabled(config["postprocess"]):
        result = result.get("postprocessed", {})
    return result.get(f"{key}_threshold")
