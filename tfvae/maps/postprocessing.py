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

``median_filter`` is the one 3D median of the project (these settings and the ``recommended`` map):
scipy's numbers, computed faster on maps where one value fills most windows.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

RESIDUAL_MAPS = ("rec_error", "proj_rec_error")
# window values gathered at once by median_filter: 16 MB of float32, ~64 MB with their indices
MEDIAN_CHUNK = 1 << 22


def enabled(settings: dict) -> bool:
    return bool(settings["erode_brain"] or settings["median_size"] or settings["min_component_voxels"]
                or settings["positive_only"])


def scores(volume: np.ndarray, brain: np.ndarray, settings: dict) -> np.ndarray:
    """Erosion and median filter of a (z, row, col) score volume."""
    out = np.asarray(volume, np.float32)
    if settings["median_size"]:
        out = median_filter(out, settings["median_size"])
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


def median_filter(volume: np.ndarray, size) -> np.ndarray:
    """The median over a window of ``size`` voxels (an int, or one per axis) around each voxel of
    ``volume`` (cast to float32), edges padded with the nearest voxel, float32: the values of
    ``scipy.ndimage.median_filter(volume, size, mode="nearest")`` (rank n // 2 of the n window
    values; tested equal; where a window holds both -0.0 and +0.0 either may come out).

    Faster where the volume's minimum fills more than half of a window -- a positive residual is 0
    over most of the background and half the brain -- since the median there is that minimum: those
    voxels are found by counting the minima in each window (a box filter), and only the others are
    ranked (``np.partition`` on their gathered windows, ``MEDIAN_CHUNK`` values at a time). A volume
    with a NaN goes to scipy whole."""
    volume = np.asarray(volume, np.float32)
    size = tuple(int(s) for s in np.broadcast_to(np.asarray(size), (volume.ndim,)))
    n, rank = int(np.prod(size)), int(np.prod(size)) // 2
    if volume.size == 0 or n == 1:
        return volume.copy()
    if np.isnan(volume).any():
        return ndimage.median_filter(volume, size=size, mode="nearest")
    lowest = volume.min()
    minima = np.rint(ndimage.uniform_filter((volume == lowest).astype(np.float64), size, mode="nearest") * n)
    out = np.full(volume.shape, lowest, np.float32)
    ranked = np.flatnonzero(minima <= rank)  # fewer than rank + 1 minima: the median is above the minimum
    if ranked.size:
        # voxel i's window is padded[i : i + size] (the same placement as scipy's, even sizes included)
        padded = np.pad(volume, [(s // 2, s - 1 - s // 2) for s in size], mode="edge")
        window = np.ravel_multi_index(np.indices(size).reshape(volume.ndim, -1), padded.shape)
        flat, step, values = padded.ravel(), max(MEDIAN_CHUNK // n, 1), np.empty(ranked.size, np.float32)
        for start in range(0, ranked.size, step):
            corner = np.ravel_multi_index(np.unravel_index(ranked[start:start + step], volume.shape), padded.shape)
            values[start:start + step] = np.partition(flat[corner[:, None] + window], rank, axis=1)[:, rank]
        out.ravel()[ranked] = values
    return out
