"""3D post-processing of anomaly maps."""

import numpy as np

from tfvae import metrics, postprocessing

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
