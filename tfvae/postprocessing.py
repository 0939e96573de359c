"""3D post-processing of anomaly maps (as in Baur et al.'s comparative study), all off by default.

They act on a volume of stacked axial slices (z, row, col) -- the slices of one scan as the
model saw them -- so evaluation and localization post-process the same way, before maps are
written back into the scan's own grid:

- ``erode_brain`` (voxels): scores outside the brain mask eroded by that many voxels are set to 0
  (drops the rim, where reconstructions are worst);
- ``median_size`` (voxels): a 3D median filter of that size on the scores;
- ``min_component_voxels``: after thresholding, connected components (26-connected) smaller than
  that are removed from the binary mask;
- ``positive_only`` (bool): reconstruction errors count only where the input is brighter than its
  reconstruction (tumours are hyperintense in T2); applied to ``rec_error`` and
  ``proj_rec_error`` when the maps are made, since it needs the reconstruction.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

RESIDUAL_MAPS = ("rec_error", "proj_rec_error")


def enabled(settings: dict) -> bool:
    return bool(settings["erode_brain"] or settings["median_size"] or settings["min_component_voxels"]
                or settings["positive_only"])


def scores(volume: np.ndarray, brain: np.ndarray, settings: dict) -> np.ndarray:
    """Erosion and median filter of a (z, row, col) score volume."""
    out = np.asarray(volume, np.float32)
    if settings["median_size"]:
        out = ndimage.median_filter(out, size=settings["median_size"], mode="nearest")
    if settings["erode_brain"]:
        eroded = ndimage.binary_erosion(brain, iterations=settings["erode_brain"])
        out = np.where(eroded, out, 0.0).astype(np.float32)
    return out


def remove_small_components(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    """The binary ``mask`` without its 26-connected components of fewer than ``min_voxels`` voxels."""
    mask = np.asarray(mask, bool)
    if not min_voxels or not mask.any():
        return mask
    labels, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels]


def components(mask: np.ndarray) -> tuple[int, int]:
    """(number of 26-connected components, voxels in the largest) of a binary mask."""
    labels, n = ndimage.label(np.asarray(mask, bool), structure=np.ones((3,) * np.ndim(mask)))
    largest = int(np.bincount(labels.ravel())[1:].max()) if n else 0
    return int(n), largest


def positive_residual(maps: dict, images: np.ndarray) -> dict:
    """``rec_error`` / ``proj_rec_error`` set to 0 where the input is darker than its reconstruction."""
    out = dict(maps)
    for name, recon in (("rec_error", "reconstruction"), ("proj_rec_error", "projected_reconstruction")):
        if name in out and recon in out:
            out[name] = np.where(images > out[recon], out[name], 0.0).astype(np.float32)
    return out
