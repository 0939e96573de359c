"""``recommended``: the one anomaly map we recommend per scan, made without any test label.

For the stacked slices of one volume (z, S, S) with input x0 and brain mask B::

    recommended = B * G_sigma( M_k( max(x0 - g(mu(x_T)), 0) ) )

1. **Restoration** (``recommended.restore``, on by default): x_T is the input projected onto the
   normal manifold (``tfvae.maps.projection``, with ``predictors.projection_steps`` /
   ``projection_lambda`` / ``projection_lr``); off, x_T = x0 and g(mu(x0)) is the plain
   reconstruction.
2. **Positive residual**: only where the input is brighter than its (restored) reconstruction
   counts -- tumours and edema are hyperintense on T2 (and FLAIR), while darker-than-expected
   pixels are mostly healthy anatomy the model placed slightly wrong (e.g. ventricles shifted by
   mass effect).
3. **3D median filter** ``M_k`` over a window of k millimetres on every axis of the stacked slices
   (Baur et al.'s post-processing): removes isolated residuals (noise, edges).
4. **3D Gaussian** ``G_sigma`` (sigma in millimetres, the same on every axis): lesions are blobs
   spanning several slices, so spreading each residual over its neighbourhood ranks whole lesions
   above scattered errors.
5. Zero outside the brain mask.

**Sizes in millimetres, per axis.** k (``median_mm``) and sigma (``gaussian_sigma_mm``) are
millimetres, the same on every axis, converted for each scan's own grid (``filter_sizes``, with the
scan's (slice spacing, row, column) voxel size): the median's window on an axis is the odd number of
voxels nearest to k / voxel size on that axis (a tie goes up: 4 -> 5; at least 1), the Gaussian's
sigma on an axis is sigma / voxel size voxels. So a 7 mm median is 3 x 3 x 3 voxels on the phantom's
2 x 3 x 3 mm grid, 7 x 3 x 3 on BraTS's 1 mm slices and 11 x 3 x 3 on HCP's 0.7 mm slices -- about
the same anatomy everywhere, where a size counted in voxels (3 x 3 x 3) would span 2.1 x 9 x 9 mm
on HCP's grid. In plane every scan is resampled to the same pixel size (``fov_mm / image_size``,
3 mm at 64 px), so the candidates below give the in-plane windows the earlier voxel candidates
did (3, 5, 7 pixels; sigma 1, 2, 3 pixels) and only the through-plane sizes follow the slice spacing.

**Choosing k and sigma without labels** (when ``recommended.median_mm`` /
``recommended.gaussian_sigma_mm`` are null, the default): on the healthy validation volumes, each
copied ``recommended.synthetic_copies`` times with one synthetic lesion added (``synthetic_lesion``:
an ellipsoid of radii 6-18 mm per axis, brightened by 1-3 z-score units with a soft edge, inside
the brain), every candidate pair (``MEDIAN_CANDIDATES_MM`` x ``SIGMA_CANDIDATES_MM``) is scored and
the pair with the highest AUPRC over the brain pixels of the lesioned copies wins. The lesions are
a generic prior (hyperintense blobs of tumour size), not the test set's tumours; no test label is
read. The selection table is kept with the results, with the validation grid (``voxel_mm``: the
median voxel size of the volumes it was chosen on) and the chosen sizes in that grid's voxels.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage

from tfvae import metrics
from tfvae.maps import postprocessing

# millimetres, the same on every axis (0: off). The median's 6k + 1 mm are 3, 5 and 7 pixels of 3 mm in plane
# (the earlier candidates, counted in voxels), each 1 mm clear of a rounding tie (6 mm / 3 mm = 2: 1 or 3)
MEDIAN_CANDIDATES_MM = (0.0, 7.0, 13.0, 19.0)
SIGMA_CANDIDATES_MM = (0.0, 3.0, 6.0, 9.0)  # 1, 2 and 3 pixels of 3 mm in plane
LESION_RADIUS_MM = (6.0, 18.0)
LESION_AMPLITUDE = (1.0, 3.0)  # z-score units
LESION_EDGE = 0.3  # the brightening ramps up over the outer 30 % of the radius
MAX_SELECTION_VOLUMES = 16


def positive_residual(images: np.ndarray, reconstruction: np.ndarray) -> np.ndarray:
    """max(x - g, 0)."""
    return np.maximum(np.asarray(images, np.float32) - np.asarray(reconstruction, np.float32), 0.0)


def median_footprint(median_mm: float, voxel_mm) -> tuple[int, ...] | int:
    """The window of a ``median_mm`` millimetre median on a grid of ``voxel_mm`` (one size per axis,
    e.g. (slice spacing, row, column)): per axis the odd number of voxels nearest to median_mm /
    voxel size (a tie goes to the larger: 4 -> 5), at least 1; 0 (off) when ``median_mm`` is 0."""
    if not median_mm:
        return 0
    ratio = float(median_mm) / np.asarray(voxel_mm, np.float64)
    # 1e-6: a tie stays a tie under a voxel size's float noise (6 mm over 3.0000001 mm is 3 voxels, as over 3 mm)
    return tuple(int(2 * np.floor(r / 2.0 + 1e-6) + 1) for r in ratio)


def sigma_voxels(gaussian_sigma_mm: float, voxel_mm) -> tuple[float, ...] | float:
    """A Gaussian's sigma of ``gaussian_sigma_mm`` millimetres in voxels of each axis of ``voxel_mm``
    (0.0, off, when it is 0)."""
    if not gaussian_sigma_mm:
        return 0.0
    return tuple(float(gaussian_sigma_mm) / float(v) for v in voxel_mm)


def filter_sizes(median_mm: float, gaussian_sigma_mm: float, voxel_mm):
    """``(median window, Gaussian sigma)`` per axis, in voxels of a scan whose voxels measure
    ``voxel_mm`` (slice spacing, row, column), for sizes in millimetres (``median_footprint``,
    ``sigma_voxels``)."""
    if voxel_mm is None:
        raise ValueError("the recommended map's filter sizes are millimetres: the scan's voxel size is needed")
    return median_footprint(median_mm, voxel_mm), sigma_voxels(gaussian_sigma_mm, voxel_mm)


def postprocess(residual: np.ndarray, brain: np.ndarray, median_mm: float, gaussian_sigma_mm: float,
                voxel_mm) -> np.ndarray:
    """Steps 3-5 on a (z, S, S) residual volume whose voxels measure ``voxel_mm`` (slice spacing, row,
    column): 3D median, 3D Gaussian (sizes in millimetres: ``filter_sizes``), zero outside ``brain``."""
    window, sigma = filter_sizes(median_mm, gaussian_sigma_mm, voxel_mm)
    return smooth_in_brain(median(residual, window), brain, sigma)


def median(volume: np.ndarray, size) -> np.ndarray:
    """Step 3: the 3D median over ``size`` voxels (an int, or one per axis; 0 or 1: none), float32."""
    out = np.asarray(volume, np.float32)
    return postprocessing.median_filter(out, size) if np.any(np.asarray(size) > 1) else out


def reach(size) -> int:
    """How many slices away a median over ``size`` voxels (an int, or one per axis) reads."""
    return int(np.broadcast_to(size, (3,))[0]) // 2 if np.any(np.asarray(size) > 1) else 0


def median_rows(volume: np.ndarray, size, rows: slice) -> np.ndarray:
    """``median(volume, size)[rows]``, computed only on the slices those rows' windows reach
    (exact: a window reaching past the volume's first or last slice is padded the same way)."""
    half = reach(size)
    lo, hi = max(rows.start - half, 0), min(rows.stop + half, len(volume))
    return median(volume[lo:hi], size)[rows.start - lo:rows.stop - lo]


def median_changed(clean_median: np.ndarray, volume: np.ndarray, size, changed: np.ndarray) -> np.ndarray:
    """``median(volume, size)``, given ``clean_median`` = the median of a volume that differs from
    ``volume`` only on the slices ``changed`` (sorted indices): only the slices within reach of
    those are filtered again."""
    filtered = clean_median.copy()
    if len(changed):
        rows = slice(max(changed[0] - reach(size), 0), min(changed[-1] + reach(size) + 1, len(volume)))
        filtered[rows] = median_rows(volume, size, rows)
    return filtered


def smooth_in_brain(volume: np.ndarray, brain: np.ndarray, sigma) -> np.ndarray:
    """Steps 4-5: the 3D Gaussian (``sigma`` voxels, or one per axis; 0: none), 0 outside ``brain``."""
    if np.any(np.asarray(sigma) > 0):
        volume = ndimage.gaussian_filter(volume, sigma=sigma, mode="nearest")
    return np.where(brain, volume, 0.0).astype(np.float32)


def grid_mm(voxel_sizes) -> list[float]:
    """The median (slice spacing, row, column) voxel size of several scans (recorded with the sizes
    chosen on them, and the grid of a scan whose own is not given)."""
    return [float(v) for v in np.median(np.asarray(list(voxel_sizes), np.float64), axis=0)]


def synthetic_lesion(image: np.ndarray, brain: np.ndarray, voxel_mm, rng: np.random.Generator):
    """``(image with a lesion, lesion mask)`` for a (z, S, S) volume whose voxels measure
    ``voxel_mm`` = (slice spacing, row, column) millimetres: an ellipsoid centred on a random
    brain voxel, radii uniform in ``LESION_RADIUS_MM``, brightened by an amplitude uniform in
    ``LESION_AMPLITUDE`` (full inside, ramping to 0 at the edge), within the brain only."""
    inside = ndimage.binary_erosion(brain, iterations=2)
    candidates = np.argwhere(inside if inside.any() else brain)
    centre = candidates[rng.integers(len(candidates))]
    radii = rng.uniform(*LESION_RADIUS_MM, size=3) / np.asarray(voxel_mm, np.float64)
    grid = np.ogrid[tuple(slice(0, n) for n in image.shape)]
    distance = np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)))
    profile = np.clip((1.0 - distance) / LESION_EDGE, 0.0, 1.0) * brain
    lesion = (distance < 1.0) & brain
    return (image + rng.uniform(*LESION_AMPLITUDE) * profile).astype(np.float32), lesion


def _score_copy(hists: dict, k, sigmas: dict, clean_median, residual, size, changed, brain, label) -> None:
    """Add one lesioned copy's maps at the median ``k`` mm (window ``size``) and every sigma to ``hists[(k, sigma)]``."""
    filtered = median_changed(clean_median, residual, size, changed)
    for s, sigma in sigmas.items():
        hists[(k, s)].update(smooth_in_brain(filtered, brain, sigma), label, mask=brain)


def _table_row(item) -> dict:
    (k, s), hist = item
    return {"median_mm": k, "gaussian_sigma_mm": s, "auprc": hist.auprc(), "auroc": hist.auroc()}


def select(residual_fn, volumes, copies: int, seed: int, median_mm: float | None = None,
           gaussian_sigma_mm: float | None = None, progress=None) -> dict:
    """Pick (median_mm, gaussian_sigma_mm) on healthy volumes with synthetic lesions; a setting
    given (not None) is kept and only the other one is chosen.

    ``residual_fn(images (n, S, S, 1)) -> (n, S, S, 1)`` gives the positive residual maps, slice by
    slice (a slice's residual depends on that slice only, as with a 2D model): each healthy volume's
    residual and 3D medians are computed once, and for each lesioned copy only the slices the lesion
    changed (and the medians of the slices within reach of them) again -- the filtering gives the
    same numbers as filtering every copy whole; ``residual_fn`` is called twice per volume (the
    volume, then the changed slices of all its copies together), and a network's residual of a
    slice restored in another batch differs by float rounding (~1e-7 of its range);
    ``volumes`` yields ``(image (z, S, S), brain (z, S, S) bool, voxel_mm)`` of healthy volumes
    (at most ``MAX_SELECTION_VOLUMES`` are used; ``progress(done, total)``, when given, is called
    with 0 before the first volume, so that a progress bar's clock starts with the stage, and after
    each lesioned copy); each volume's filters are sized for its own ``voxel_mm`` (``filter_sizes``).
    Returns ``{"median_mm", "gaussian_sigma_mm", "voxel_mm" (the volumes' median grid, ``grid_mm``),
    "median_voxels", "sigma_voxels" (the chosen sizes on that grid), "table": [{"median_mm",
    "gaussian_sigma_mm", "auprc", "auroc"}, ...], "lesions"}``."""
    if copies < 1:
        raise ValueError(f"recommended.synthetic_copies must be at least 1, got {copies}")
    rng = np.random.default_rng(seed)
    medians = (float(median_mm),) if median_mm is not None else MEDIAN_CANDIDATES_MM
    sigmas = (float(gaussian_sigma_mm),) if gaussian_sigma_mm is not None else SIGMA_CANDIDATES_MM
    hists = {(k, s): metrics.PixelHistogram() for k in medians for s in sigmas}
    healthy = [v for _, v in zip(range(MAX_SELECTION_VOLUMES), volumes)]
    if not healthy:
        raise ValueError("no healthy validation volume to choose the recommended map's settings on")
    lesions, total = 0, len(healthy) * copies
    if progress is not None:
        progress(0, total)
    # filters and histograms run mostly without the GIL: the candidate sizes are scored side by side
    with ThreadPoolExecutor(max(min(os.cpu_count() or 1, len(medians)), 1)) as threads:
        for image, brain, voxel_mm in healthy:
            # a lesion changes a few slices: the residual and the median of the others are the healthy volume's
            clean = residual_fn(image[..., None])[..., 0]
            sizes = {k: median_footprint(k, voxel_mm) for k in medians}
            sigmas_here = {s: sigma_voxels(s, voxel_mm) for s in sigmas}
            clean_medians = dict(zip(sizes, threads.map(lambda size: median(clean, size), sizes.values())))
            copied = [synthetic_lesion(image, brain, voxel_mm, rng) for _ in range(copies)]
            changes = [np.flatnonzero(np.any(lesioned != image, axis=(1, 2))) for lesioned, _ in copied]
            # the changed slices of all the volume's copies are restored together (fuller batches)
            stacked = np.concatenate([lesioned[changed] for (lesioned, _), changed in zip(copied, changes)])
            restored = residual_fn(stacked[..., None])[..., 0] if len(stacked) else stacked
            ends = np.cumsum([len(changed) for changed in changes])
            for (_, label), changed, end in zip(copied, changes, ends):
                residual = clean.copy()
                residual[changed] = restored[end - len(changed):end]
                # one task per median size, each updating its own histograms
                list(threads.map(lambda k: _score_copy(hists, k, sigmas_here, clean_medians[k], residual, sizes[k],
                                                       changed, brain, label), sizes))
                lesions += 1
                if progress is not None:
                    progress(lesions, total)
        table = list(threads.map(_table_row, hists.items()))
    best = max(table, key=lambda row: row["auprc"])
    return {**described(best["median_mm"], best["gaussian_sigma_mm"], grid_mm(v for _, _, v in healthy)),
            "table": table, "lesions": lesions}


def described(median_mm: float, gaussian_sigma_mm: float, grid) -> dict:
    """The record of filter sizes in millimetres: the sizes, the grid ``grid`` (mm per (slice, row,
    column)) they are shown on, and their voxels there (what ``filter_sizes`` makes of them)."""
    window, sigma = filter_sizes(median_mm, gaussian_sigma_mm, grid)
    return {"median_mm": float(median_mm), "gaussian_sigma_mm": float(gaussian_sigma_mm),
            "voxel_mm": [float(v) for v in grid], "median_voxels": list(window) if window else 0,
            "sigma_voxels": [round(v, 6) for v in sigma] if sigma else 0.0}
