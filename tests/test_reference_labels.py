"""evaluate.pixel_set=reference: its labels are the original segmentation resampled once into the paper's
crop (every canonical axial slice but the first and last few, whole, nearest neighbour), slices our
preprocessing drops included with their true labels; against computations written out here."""

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from tfvae.data import preprocessing, reference_labels
from tfvae.evaluation.evaluate import ReferencePixels
from tfvae.maps.scoring import Volume

SIZE, SKIP = 32, 2
AFFINE = np.array([[-2.0, 0, 0, 90], [0, -2.0, 0, 100], [0, 0, 2.0, -40], [0, 0, 0, 1]])  # stored LPS, 2 mm


def nearest_crop(label, affine, size, skip):
    """Written out: canonical axes by nibabel, the first and last ``skip`` slices off, then each output
    pixel the source voxel whose centre is nearest to the pixel centre's position in voxels."""
    canonical = np.asarray(nib.as_closest_canonical(nib.Nifti1Image(label.astype(np.uint8), affine)).dataobj) > 0
    kept = canonical[:, :, skip:canonical.shape[2] - skip]
    out = np.zeros((size, size, kept.shape[2]), bool)
    for i in range(size):
        for j in range(size):
            x = (i + 0.5) * kept.shape[0] / size - 0.5  # the pixel centre in voxels
            y = (j + 0.5) * kept.shape[1] / size - 0.5
            out[i, j] = kept[int(np.argmin(np.abs(np.arange(kept.shape[0]) - x))),
                             int(np.argmin(np.abs(np.arange(kept.shape[1]) - y)))]
    return out


def scan(lesion):
    """A skull-stripped scan (stored LPS, 2 mm) of an ellipsoid brain, its mask and ``lesion(grid)`` as label."""
    shape = (70, 86, 44)
    grid = np.indices(shape).astype(float)
    centre, semi = np.array([35, 43, 22]), np.array([30, 36, 20])
    brain = sum(((g - c) / s) ** 2 for g, c, s in zip(grid, centre, semi)) <= 1
    rng = np.random.default_rng(0)
    label = lesion(grid) & brain
    image = np.where(brain, 1.0 + 0.1 * rng.normal(size=shape) + 2.0 * label, 0.0).astype(np.float32)
    return image, brain, label.astype(np.uint8)


def volume_of(image, brain, label, fov_mm=192.0):
    sliced = preprocessing.volume_to_slices(image, AFFINE, mask=brain, label=label, image_size=SIZE, fov_mm=fov_mm,
                                            min_brain_fraction=0.2)
    volume = Volume("case", sliced.image, sliced.label, sliced.brain_mask, sliced.slice_index, sliced.geometry)
    volume.variants = {"raw": {"intensity": sliced.image}}
    return volume


def written_back(volume, planes, order):
    """What the reference set did with labels before, and does with scores: back into the scan's grid, resized."""
    data = preprocessing.to_canonical(preprocessing.slices_to_volume(planes, volume.slice_index, volume.geometry,
                                                                     order=order), volume.geometry.source_affine)
    kept = data[:, :, SKIP:data.shape[2] - SKIP]
    return ndimage.zoom(kept, (SIZE / kept.shape[0], SIZE / kept.shape[1], 1), order=order, grid_mode=True,
                        mode="grid-constant")


def reference_auroc(volume, label):
    pixels = ReferencePixels(["intensity"], SIZE, SKIP, lambda vid: (label, AFFINE))
    pixels.update(volume)
    return pixels.results()["intensity"]["auroc_reference"], pixels.all["intensity"]


def test_the_paper_crop_is_the_segmentation_resampled_once_by_nearest_neighbour():
    label = (np.random.default_rng(1).random((70, 86, 44)) < 0.3).astype(np.uint8)
    crop = reference_labels.paper_crop(label, AFFINE, SIZE, SKIP)
    np.testing.assert_array_equal(crop, nearest_crop(label, AFFINE, SIZE, SKIP))
    assert crop.shape == (SIZE, SIZE, 44 - 2 * SKIP)
    assert reference_labels.paper_crop(label[:, :, :4], AFFINE, SIZE, SKIP).shape == (SIZE, SIZE, 0)


def test_labels_resized_twice_differ_and_the_reference_set_takes_them_resized_once():
    """A lesion of thin, one-voxel walls: the dataset's 6 mm pixels sample it on a coarser grid than the paper's
    crop (70 voxels to 32 pixels); written back and resized again it is another set of pixels."""
    image, brain, label = scan(lambda g: ((g[0] % 5 == 0) | (g[1] % 7 == 0)) & (np.abs(g[2] - 22) < 8))
    volume = volume_of(image, brain, label)
    twice = written_back(volume, volume.label.astype(np.float32), order=0) > 0
    once = nearest_crop(label, AFFINE, SIZE, SKIP)
    assert np.sum(twice != once) > 100  # the old labels were another population
    auroc, hist = reference_auroc(volume, label)
    scores = written_back(volume, volume.image, order=1)
    assert hist.n_pos == once.sum() and hist.n_neg == (~once).sum()
    assert auroc == pytest.approx(roc_auc_score(once.ravel(), scores.ravel()), abs=1e-6)


def test_a_lesion_in_a_slice_the_preprocessing_dropped_counts_with_its_true_label_and_a_zero_score():
    image, brain, label = scan(lambda g: (np.abs(g[0] - 35) < 4) & (np.abs(g[1] - 43) < 4) & (g[2] <= 6))
    volume = volume_of(image, brain, label)
    # stored z is canonical z (inferior to superior) in this affine: slice numbers are the same in both
    assert preprocessing.to_canonical(np.arange(44)[None, None, :] * np.ones((70, 86, 1)), AFFINE)[0, 0, 5] == 5
    dropped = sorted(set(range(SKIP, 44 - SKIP)) - set(volume.slice_index.tolist()))
    in_dropped = [z for z in dropped if label[:, :, z].sum() >= 9]  # a lesion of 7 x 7 voxels (a lone voxel can
    assert in_dropped == [3, 4], dropped  # fall between samples): slices min_brain_fraction dropped, not SKIP
    once = nearest_crop(label, AFFINE, SIZE, SKIP)
    assert all(once[:, :, z - SKIP].any() for z in in_dropped)
    old = written_back(volume, volume.label.astype(np.float32), order=0) > 0
    assert not any(old[:, :, z - SKIP].any() for z in in_dropped)  # before: label 0 there
    auroc, hist = reference_auroc(volume, label)
    scores = written_back(volume, volume.image, order=1)
    assert all((scores[:, :, z - SKIP] == 0).all() for z in in_dropped)  # not scored: 0
    assert hist.n_pos == once.sum()
    assert auroc == pytest.approx(roc_auc_score(once.ravel(), scores.ravel()), abs=1e-6)


def test_a_segmentation_that_is_not_the_one_the_dataset_was_built_from_is_refused():
    image, brain, label = scan(lambda g: (np.abs(g[0] - 35) < 6) & (np.abs(g[1] - 43) < 6) & (np.abs(g[2] - 22) < 6))
    volume = volume_of(image, brain, label)
    assert reference_labels.checked(label, AFFINE, volume) is label
    moved = np.roll(label, 3, axis=0)
    with pytest.raises(reference_labels.ReferenceLabelError, match="case: its segmentation sampled as the dataset "
                                                                   "was gives other labels at [0-9]+ pixel"):
        reference_labels.checked(moved, AFFINE, volume)
    with pytest.raises(reference_labels.ReferenceLabelError, match="another grid"):
        reference_labels.checked(label[:, :, 1:], AFFINE, volume)
    with pytest.raises(reference_labels.ReferenceLabelError, match="another grid"):
        reference_labels.checked(label, AFFINE * np.array([[1], [1], [1.5], [1]]), volume)


def test_datasets_without_segmentations_or_registered_to_a_template_have_no_reader():
    config = {"name": "hcp_t2", "config": "default", "data_dir": None, "image_size": 64, "manual_dir": None}
    with pytest.raises(reference_labels.ReferenceLabelError, match="hcp_t2 has no lesion segmentations"):
        reference_labels.reader(config)
    with pytest.raises(reference_labels.ReferenceLabelError, match="registers raw heads"):
        reference_labels.reader({**config, "name": "brats", "preprocess": True})


def test_brats_volumes_read_their_segmentation_in_the_builders_label_convention(tmp_path):
    """A BraTS 2021 case of the builder's dummy data: the segmentation as nibabel reads it, labels > 0."""
    import os

    root = os.path.join(os.path.dirname(__file__), os.pardir, "datasets", "brats", "dummy_data")
    read = reference_labels.reader({"name": "brats", "config": "default", "data_dir": str(tmp_path),
                                    "image_size": 64, "manual_dir": root})
    seg_file = os.path.join(root, "BraTS2021_Training_Data", "BraTS2021_00000", "BraTS2021_00000_seg.nii.gz")
    label, affine = read("BraTS2021_00000")
    expected = nib.load(seg_file)
    np.testing.assert_array_equal(label > 0, np.asarray(expected.dataobj) > 0)
    np.testing.assert_allclose(affine, expected.affine)
    with pytest.raises(reference_labels.ReferenceLabelError, match="Brats18_X: not found in"):
        read("Brats18_X")
