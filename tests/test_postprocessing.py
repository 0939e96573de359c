"""3D post-processing of anomaly maps."""

import numpy as np
import pytest
from scipy import ndimage

from tfvae import metrics
from tfvae.maps import postprocessing

OFF = {"erode_brain": 0, "median_size": 0, "min_component_voxels": 0, "positive_only": False}


def test_small_components_are_removed_and_large_ones_kept():
    mask = np.zeros((10, 10, 10), bool)
    mask[1:4, 1:4, 1:4] = True          # 27 voxels
    mask[7, 7, 7] = True                # 1 voxel
    mask[8, 8, 8] = True                # touches (7,7,7) diagonally: one 2-voxel component
    cleaned = postprocessing.remove_small_components(mask, 3)
    assert cleaned.sum() == 27 and cleaned[2, 2, 2] and not cleaned[7, 7, 7]
    assert postprocessing.components(mask) == (2, 27)
    assert postprocessing.components(np.zeros((3, 3, 3))) == (0, 0)
    np.testing.assert_array_equal(postprocessing.remove_small_components(mask, 0), mask)


def test_erosion_drops_the_brain_rim_and_median_removes_speckles():
    brain = np.zeros((9, 20, 20), bool)
    brain[:, 4:16, 4:16] = True
    score = np.ones(brain.shape, np.float32)
    eroded = postprocessing.scores(score, brain, {**OFF, "erode_brain": 2})
    assert eroded[4, 4, 10] == 0 and eroded[4, 5, 10] == 0 and eroded[4, 6, 10] == 1
    speckled = np.zeros(brain.shape, np.float32)
    speckled[4, 10, 10] = 100.0
    assert postprocessing.scores(speckled, brain, {**OFF, "median_size": 3}).max() == 0
    np.testing.assert_array_equal(postprocessing.scores(speckled, brain, OFF), speckled)


def _volumes():
    rng = np.random.default_rng(3)
    normal = rng.normal(size=(9, 12, 14)).astype(np.float32)
    residual = np.maximum(normal, 0.0)  # 0 in half the voxels: most windows take the shortcut
    residual[:, :, :4] = 0.0
    ties = np.round(normal).astype(np.float32)  # few distinct values: ties at the median
    return {"normal": normal, "residual": residual, "ties": ties, "constant": np.full((4, 5, 6), 2.5, np.float32),
            "shifted minimum": residual - 7.0}


@pytest.mark.parametrize("name", ["normal", "residual", "ties", "constant", "shifted minimum"])
@pytest.mark.parametrize("size", [3, 5, 7, 4, (3, 5, 5), (1, 3, 3), (2, 3, 1)])
def test_median_filter_equals_scipy(name, size):
    volume = _volumes()[name]
    expected = ndimage.median_filter(volume, size=size, mode="nearest")
    got = postprocessing.median_filter(volume, size)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


def test_median_filter_equals_scipy_in_chunks_past_the_edges_and_with_nan(monkeypatch):
    residual = _volumes()["residual"]
    monkeypatch.setattr(postprocessing, "MEDIAN_CHUNK", 50)  # several gathered chunks
    np.testing.assert_array_equal(postprocessing.median_filter(residual, 5),
                                  ndimage.median_filter(residual, size=5, mode="nearest"))
    thin = residual[:2]  # a window longer than the volume along the slices
    np.testing.assert_array_equal(postprocessing.median_filter(thin, 7),
                                  ndimage.median_filter(thin, size=7, mode="nearest"))
    flat = residual[0]  # 2D
    np.testing.assert_array_equal(postprocessing.median_filter(flat, 3),
                                  ndimage.median_filter(flat, size=3, mode="nearest"))
    with_nan = residual.copy()
    with_nan[4, 6, 7] = np.nan
    np.testing.assert_array_equal(postprocessing.median_filter(with_nan, 3),
                                  ndimage.median_filter(with_nan, size=3, mode="nearest"))


def test_positive_residual_keeps_only_hyperintense_errors():
    images = np.array([[1.0, -1.0]], np.float32)
    maps = {"rec_error": np.array([[4.0, 4.0]], np.float32), "reconstruction": np.array([[-1.0, 1.0]], np.float32),
            "kl_grad": np.array([[2.0, 2.0]], np.float32)}
    out = postprocessing.positive_residual(maps, images)
    np.testing.assert_array_equal(out["rec_error"], [[4.0, 0.0]])
    np.testing.assert_array_equal(out["kl_grad"], maps["kl_grad"])
    assert postprocessing.enabled({**OFF, "positive_only": True}) and not postprocessing.enabled(OFF)


def test_volume_dice_cleans_predictions_before_comparing():
    label = np.zeros((6, 6, 6), np.uint8)
    label[1:4, 1:4, 1:4] = 2
    score = label.astype(np.float32)
    score[5, 5, 5] = 1.0  # a false-positive speck
    plain = metrics.VolumeDice({"t": 0.5})
    cleaned = metrics.VolumeDice({"t": 0.5}, clean=lambda p: postprocessing.remove_small_components(p, 2))
    plain.update(score, label)
    cleaned.update(score, label)
    assert plain.values["t"][0] == 2 * 27 / (28 + 27)
    assert cleaned.values["t"][0] == 1.0
