"""The recommended map: its steps against brute-force numpy, the synthetic lesions, and the
label-free choice of its smoothing."""

import itertools

import numpy as np
import pytest

from tfvae import recommended as R


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
    out = R.postprocess(residual, brain, median_size=3, gaussian_sigma=1.0)
    expected = np.where(brain, brute_gaussian(brute_median(residual, 3), 1.0), 0.0)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(R.postprocess(residual, brain, 0, 0.0), np.where(brain, residual, 0.0))


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
    assert chosen["lesions"] == 3 and len(chosen["table"]) == len(R.MEDIAN_CANDIDATES) * len(R.SIGMA_CANDIDATES)
    best = max(chosen["table"], key=lambda row: row["auprc"])
    assert (chosen["median_size"], chosen["gaussian_sigma"]) == (best["median_size"], best["gaussian_sigma"])
    smoothed = chosen["median_size"] > 0 or chosen["gaussian_sigma"] > 0
    assert smoothed == expect_smoothing, chosen
    fixed = R.select(residual_fn, [(healthy, brain, (3.0, 3.0, 3.0))], copies=1, seed=0, median_size=3)
    assert fixed["median_size"] == 3 and {row["median_size"] for row in fixed["table"]} == {3}


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
    reference_mm = R.grid_mm(v for _, _, v in volumes)
    hists = {(k, s): R.metrics.PixelHistogram() for k in R.MEDIAN_CANDIDATES for s in R.SIGMA_CANDIDATES}
    for image, brain, voxel_mm in volumes:
        for _ in range(3):
            lesioned, label = R.synthetic_lesion(image, brain, voxel_mm, expected_rng)
            residual = np.maximum(lesioned - lesioned.mean(axis=(1, 2), keepdims=True), 0.0) ** 1.5
            for (k, s), hist in hists.items():
                hist.update(R.postprocess(residual, brain, k, s, voxel_mm, reference_mm), label, mask=brain)
    expected = [(k, s, h.auprc(), h.auroc()) for (k, s), h in hists.items()]
    got = [(row["median_size"], row["gaussian_sigma"], row["auprc"], row["auroc"]) for row in chosen["table"]]
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


def test_filter_sizes_keep_their_millimetres_on_another_slice_spacing():
    from scipy import ndimage

    # chosen on a 2 mm x 3 mm x 3 mm validation grid: median 3 (6 mm through-plane), sigma 2 (4 mm)
    assert R.filter_sizes(3, 2.0, (1.5, 3.0, 3.0), (2.0, 3.0, 3.0)) == ((5, 3, 3), (pytest.approx(8 / 3), 2.0, 2.0))
    assert R.filter_sizes(3, 2.0, (2.0, 3.0, 3.0), (2.0, 3.0, 3.0)) == ((3, 3, 3), (2.0, 2.0, 2.0))
    assert R.filter_sizes(5, 1.0, (4.0, 3.0, 3.0), (2.0, 3.0, 3.0))[0] == (3, 5, 5)  # 10 mm over 4 mm slices
    assert R.filter_sizes(3, 2.0, (1.5, 3.0, 3.0), None) == (3, 2.0)  # no grid recorded: the old behaviour
    rng = np.random.default_rng(5)
    residual, brain = rng.random((12, 10, 10)).astype(np.float32), np.ones((12, 10, 10), bool)
    out = R.postprocess(residual, brain, 3, 1.0, voxel_mm=(1.0, 3.0, 3.0), reference_mm=(2.0, 3.0, 3.0))
    expected = ndimage.gaussian_filter(ndimage.median_filter(residual, size=(7, 3, 3), mode="nearest"),
                                       sigma=(2.0, 1.0, 1.0), mode="nearest")
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    same = R.postprocess(residual, brain, 3, 1.0, voxel_mm=(2.0, 3.0, 3.0), reference_mm=(2.0, 3.0, 3.0))
    np.testing.assert_array_equal(same, R.postprocess(residual, brain, 3, 1.0))
