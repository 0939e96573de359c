"""The recommended map: its steps against brute-force numpy, the synthetic lesions, and the
label-free choice of its smoothing."""

import itertools

import numpy as np
import pytest

from tfvae.maps import recommended as R


def brute_median(volume, k):
    """k x k x k median with edge replication ('nearest'), voxel by voxel."""
    h = k // 2
    padded = np.pad(volume, h, mode="edge")
    out = np.empty_like(volume)
    for idx in itertools.product(*(range(n) for n in volume.shape)):
        out[idx] = np.median(padded[idx[0]:idx[0] + k, idx[1]:idx[1] + k, idx[2]:idx[2] + k])
    return out


def brute_gaussian(volume, sigma, truncate=4.0):
    """Separable Gaussian with edge replication, written out with np.convolve per axis."""
    radius = int(truncate * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-offsets ** 2 / (2 * sigma ** 2))
    kernel /= kernel.sum()
    out = volume.astype(np.float64)
    for axis in range(3):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in range(3)], mode="edge")
        out = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="valid"), axis, padded)
    return out


def test_postprocess_is_positive_residual_median_gaussian_then_brain():
    rng = np.random.default_rng(0)
    image, recon = rng.normal(size=(6, 9, 8)), rng.normal(size=(6, 9, 8))
    brain = np.zeros((6, 9, 8), bool)
    brain[1:5, 2:8, 1:7] = True
    residual = R.positive_residual(image, recon)
    np.testing.assert_allclose(residual, np.where(image > recon, image - recon, 0.0), rtol=1e-6, atol=1e-6)
    # on 3 mm voxels: a 9 mm median is 3 voxels, a 3 mm sigma 1 voxel
    out = R.postprocess(residual, brain, median_mm=9.0, gaussian_sigma_mm=3.0, voxel_mm=(3.0, 3.0, 3.0))
    expected = np.where(brain, brute_gaussian(brute_median(residual, 3), 1.0), 0.0)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(R.postprocess(residual, brain, 0, 0.0, (3.0, 3.0, 3.0)), np.where(brain, residual, 0.0))


def test_synthetic_lesion_is_an_ellipsoid_of_the_stated_size_in_millimetres():
    rng = np.random.default_rng(1)
    image = np.zeros((40, 48, 48), np.float32)
    brain = np.ones_like(image, bool)
    voxel_mm = (2.0, 3.0, 3.0)
    volumes = []
    for _ in range(20):
        lesioned, label = R.synthetic_lesion(image, brain, voxel_mm, rng)
        assert label.any() and (lesioned[label] > 0).all() and (lesioned[~label] >= 0).all()
        brightened = lesioned[label].max()
        assert R.LESION_AMPLITUDE[0] <= brightened <= R.LESION_AMPLITUDE[1]
        volumes.append(label.sum() * np.prod(voxel_mm))
    low, high = (4 / 3 * np.pi * r ** 3 for r in R.LESION_RADIUS_MM)
    assert low * 0.8 <= min(volumes) and max(volumes) <= high * 1.2  # mm^3 of an ellipsoid of those radii


def test_synthetic_lesions_stay_in_the_brain():
    rng = np.random.default_rng(2)
    image = np.zeros((20, 32, 32), np.float32)
    brain = np.zeros_like(image, bool)
    brain[5:15, 8:24, 8:24] = True
    for _ in range(5):
        lesioned, label = R.synthetic_lesion(image, brain, (3.0, 3.0, 3.0), rng)
        assert not label[~brain].any() and not lesioned[~brain].any()


@pytest.mark.parametrize("noise, expect_smoothing", [(0.0, False), (0.8, True)])
def test_selection_smooths_noisy_residuals_and_leaves_exact_ones(noise, expect_smoothing):
    """A 'model' that reconstructs the healthy volume exactly: the residual is the lesion itself
    (plus noise). Exact residuals are best unsmoothed; noisy ones need smoothing."""
    rng = np.random.default_rng(3)
    healthy = rng.normal(size=(24, 32, 32)).astype(np.float32)
    brain = np.zeros_like(healthy, bool)
    brain[2:22, 4:28, 4:28] = True
    healthy *= brain

    def residual_fn(images):  # slice by slice, as a 2D model: each slice against its nearest healthy slice
        nearest = np.argmin([[np.sum((x[..., 0] - h) ** 2) for h in healthy] for x in images], axis=1)
        return np.maximum(images - healthy[nearest][..., None] + noise * rng.normal(size=images.shape), 0.0)

    chosen = R.select(residual_fn, [(healthy, brain, (3.0, 3.0, 3.0))], copies=3, seed=0)
    assert chosen["lesions"] == 3
    assert len(chosen["table"]) == len(R.MEDIAN_CANDIDATES_MM) * len(R.SIGMA_CANDIDATES_MM)
    best = max(chosen["table"], key=lambda row: row["auprc"])
    assert (chosen["median_mm"], chosen["gaussian_sigma_mm"]) == (best["median_mm"], best["gaussian_sigma_mm"])
    smoothed = chosen["median_mm"] > 0 or chosen["gaussian_sigma_mm"] > 0
    assert smoothed == expect_smoothing, chosen
    window, sigma = R.filter_sizes(chosen["median_mm"], chosen["gaussian_sigma_mm"], (3.0, 3.0, 3.0))
    assert chosen["voxel_mm"] == [3.0, 3.0, 3.0]
    assert chosen["median_voxels"] == (list(window) if window else 0)
    assert chosen["sigma_voxels"] == (pytest.approx(list(sigma)) if sigma else 0.0)
    fixed = R.select(residual_fn, [(healthy, brain, (3.0, 3.0, 3.0))], copies=1, seed=0, median_mm=7)
    assert fixed["median_mm"] == 7.0 and {row["median_mm"] for row in fixed["table"]} == {7.0}


def test_selection_filters_only_what_a_lesion_changes_and_gets_the_same_numbers():
    """Against the selection written out: every lesioned copy's residual made whole and every
    candidate post-processed whole (``postprocess``), on an anisotropic grid (per-axis sizes)."""
    rng = np.random.default_rng(4)
    volumes = []
    for z, voxel_mm in ((30, (2.0, 3.0, 3.0)), (22, (4.0, 3.0, 3.0))):
        image = rng.normal(size=(z, 32, 32)).astype(np.float32)
        brain = np.zeros_like(image, bool)
        brain[2:z - 2, 4:28, 4:28] = True
        volumes.append((image * brain, brain, voxel_mm))
    seen = []

    def residual_fn(images):  # slice-wise and nonlinear: the positive part above each slice's own mean
        seen.append(len(images))
        return np.maximum(images - images.mean(axis=(1, 2, 3), keepdims=True), 0.0) ** 1.5

    chosen = R.select(residual_fn, volumes, copies=3, seed=7)
    expected_rng = np.random.default_rng(7)
    hists = {(k, s): R.metrics.PixelHistogram() for k in R.MEDIAN_CANDIDATES_MM for s in R.SIGMA_CANDIDATES_MM}
    for image, brain, voxel_mm in volumes:
        for _ in range(3):
            lesioned, label = R.synthetic_lesion(image, brain, voxel_mm, expected_rng)
            residual = np.maximum(lesioned - lesioned.mean(axis=(1, 2), keepdims=True), 0.0) ** 1.5
            for (k, s), hist in hists.items():
                hist.update(R.postprocess(residual, brain, k, s, voxel_mm), label, mask=brain)
    expected = [(k, s, h.auprc(), h.auroc()) for (k, s), h in hists.items()]
    got = [(row["median_mm"], row["gaussian_sigma_mm"], row["auprc"], row["auroc"]) for row in chosen["table"]]
    assert chosen["voxel_mm"] == [3.0, 3.0, 3.0]  # the median grid of the two volumes (2 and 4 mm slices)
    np.testing.assert_allclose([g[2:] for g in got], [e[2:] for e in expected], rtol=1e-6)
    assert [g[:2] for g in got] == [e[:2] for e in expected]
    assert sum(seen) < 3 * (30 + 22)  # each volume once, then only the lesioned slices: fewer than 3 whole copies
    assert len(seen) == 2 * len(volumes)  # per volume: once whole, once for all its copies' changed slices
    with pytest.raises(ValueError, match="synthetic_copies must be at least 1, got 0"):
        R.select(residual_fn, volumes, copies=0, seed=7)
    # the progress starts at 0 before the first network pass (a bar's clock then counts the whole
    # stage) and counts every lesioned copy
    events = []
    R.select(lambda images: events.append("pass") or residual_fn(images), volumes, copies=2, seed=7,
             progress=lambda done, total: events.append((done, total)))
    assert events[0] == (0, 4) and events[1] == "pass" and events[-1] == (4, 4)
    assert [e for e in events if e != "pass"] == [(i, 4) for i in range(5)]


def test_median_rows_is_the_median_of_those_rows():
    volume = np.random.default_rng(5).normal(size=(12, 9, 9)).astype(np.float32)
    for size in (3, (5, 3, 3)):
        for rows in (slice(0, 2), slice(4, 7), slice(10, 12)):
            np.testing.assert_array_equal(R.median_rows(volume, size, rows), R.median(volume, size)[rows])
    changed = volume.copy()
    changed[[5, 6]] += 3.0
    np.testing.assert_array_equal(R.median_changed(R.median(volume, 5), changed, 5, np.array([5, 6])),
                                  R.median(changed, 5))


def nearest_odd(x: float) -> int:
    """The odd integer nearest to x > 0 (a tie to the larger), written out: the candidates 1, 3, 5, ..."""
    candidates = np.arange(1, 2 * int(x) + 4, 2)
    distance = np.abs(candidates - x)
    return int(candidates[np.flatnonzero(distance == distance.min())[-1]])


def test_median_window_per_axis_is_the_odd_number_of_voxels_nearest_to_its_millimetres():
    """On HCP's grid (0.7 mm slices, 3 mm pixels) a 7 mm median is 11 x 3 x 3 voxels (7.7 x 9 x 9 mm), not
    the 3 x 3 x 3 (2.1 x 9 x 9 mm) a size counted in voxels was; sigma in mm per axis."""
    hcp, phantom, brats = (0.7, 3.0, 3.0), (2.0, 3.0, 3.0), (1.0, 3.0, 3.0)
    assert R.median_footprint(7.0, hcp) == (11, 3, 3)
    assert R.median_footprint(7.0, phantom) == (3, 3, 3)  # the phantom's chosen "3 voxels", unchanged
    assert R.median_footprint(7.0, brats) == (7, 3, 3)
    assert R.median_footprint(13.0, phantom) == (7, 5, 5) and R.median_footprint(19.0, phantom) == (9, 7, 7)
    assert R.median_footprint(0.0, hcp) == 0 and R.median_footprint(0.5, hcp) == (1, 1, 1)  # at least 1
    assert R.median_footprint(6.0, (3.0, 2.0, 3.0000001)) == (3, 3, 3)  # ties go up, float noise or not
    assert R.sigma_voxels(6.0, hcp) == pytest.approx((6 / 0.7, 2.0, 2.0)) and R.sigma_voxels(0.0, hcp) == 0.0
    for mm in np.linspace(0.3, 25.0, 84):
        for voxel in (0.7, 1.0, 1.2, 2.0, 3.0, 4.0):
            assert R.median_footprint(mm, (voxel,) * 3) == (nearest_odd(mm / voxel),) * 3, (mm, voxel)


def test_filters_on_an_anisotropic_grid_are_scipy_with_those_windows_and_isotropic_ones_as_before():
    from scipy import ndimage

    rng = np.random.default_rng(5)
    residual = rng.random((24, 12, 12)).astype(np.float32)
    brain = np.ones(residual.shape, bool)
    brain[:, :2] = False
    # 0.7 x 3 x 3 mm: a 7 mm median is 11 x 3 x 3 voxels, a 3 mm sigma (3 / 0.7, 1, 1) voxels
    out = R.postprocess(residual, brain, 7.0, 3.0, voxel_mm=(0.7, 3.0, 3.0))
    expected = ndimage.gaussian_filter(ndimage.median_filter(residual, size=(11, 3, 3), mode="nearest"),
                                       sigma=(3 / 0.7, 1.0, 1.0), mode="nearest")
    np.testing.assert_allclose(out, np.where(brain, expected, 0.0), rtol=1e-5, atol=1e-6)
    # an isotropic 3 mm grid: 9 mm and 3 mm are the 3-voxel median and the 1-voxel sigma of sizes counted in voxels
    same = R.postprocess(residual, brain, 9.0, 3.0, voxel_mm=(3.0, 3.0, 3.0))
    voxels = R.smooth_in_brain(R.median(residual, 3), brain, 1.0)
    np.testing.assert_array_equal(same, voxels)
    np.testing.assert_allclose(same, np.where(brain, ndimage.gaussian_filter(
        ndimage.median_filter(residual, size=3, mode="nearest"), sigma=1.0, mode="nearest"), 0.0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="voxel size is needed"):
        R.filter_sizes(7.0, 3.0, None)
