"""The shared volume -> slices path: orientation from the affine, z-score, scale, inverse, errors."""

import numpy as np
import pytest

from tfvae.data import preprocessing as prep
from tfvae.data.preprocessing import PreprocessingError

SHAPE = (60, 70, 50)


def ellipsoid_scan(seed=0, noise=5.0):
    """A brain-like ellipsoid with an x-gradient, and a small 'tumour' label; RAS affine."""
    rng = np.random.default_rng(seed)
    g = np.indices(SHAPE).astype(float)
    brain = ((g[0] - 30) / 25) ** 2 + ((g[1] - 35) / 30) ** 2 + ((g[2] - 25) / 22) ** 2 < 1
    image = np.where(brain, 100 + rng.normal(0, noise, SHAPE) + g[0], 0).astype(np.float32)
    label = np.where(((g[0] - 35) / 6) ** 2 + ((g[1] - 30) / 8) ** 2 + ((g[2] - 25) / 5) ** 2 < 1, 2, 0)
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    affine[:3, 3] = [-40.0, -50.0, -30.0]
    return image, label.astype(np.uint8), affine


def reorder(image, label, affine, perm, flips):
    """The same scan stored with axes permuted by ``perm`` and flipped along ``flips``."""
    image, label = image.transpose(perm), label.transpose(perm)
    affine = affine[:, list(perm) + [3]].copy()
    for axis in flips:
        n = image.shape[axis]
        image, label = np.flip(image, axis), np.flip(label, axis)
        affine[:3, 3] += affine[:3, axis] * (n - 1)
        affine[:3, axis] *= -1
    return image, label, affine


@pytest.mark.parametrize("perm, flips", [((0, 1, 2), (0, 1)),     # LPS
                                         ((2, 0, 1), ()),         # slices first
                                         ((1, 0, 2), (0, 2))])    # swapped and flipped
def test_every_storage_orientation_of_one_scan_gives_the_same_slices(perm, flips):
    image, label, affine = ellipsoid_scan()
    ref = prep.volume_to_slices(image, affine, label=label, image_size=32, fov_mm=120)
    other = prep.volume_to_slices(*reorder(image, label, affine, perm, flips)[:1],
                                  reorder(image, label, affine, perm, flips)[2],
                                  label=reorder(image, label, affine, perm, flips)[1], image_size=32, fov_mm=120)
    np.testing.assert_array_equal(ref.slice_index, other.slice_index)
    np.testing.assert_allclose(ref.image, other.image, atol=1e-5)
    np.testing.assert_array_equal(ref.label, other.label)


def test_z_score_over_brain_and_background_zero_at_native_scale():
    image, label, affine = ellipsoid_scan()
    # 1.5 mm voxels and 1.5 mm pixels: pixels fall on voxel centres, nothing is interpolated
    out = prep.volume_to_slices(image, affine, label=label, image_size=96, fov_mm=144, min_brain_fraction=0)
    brain = out.brain_mask[..., 0] > 0
    assert brain.sum() == (image > 0).sum()
    values = out.image[..., 0][brain]
    expected = (image[image > 0] - image[image > 0].mean()) / image[image > 0].std()
    np.testing.assert_allclose(np.sort(values), np.sort(expected), atol=1e-4)
    assert np.all(out.image[..., 0][~brain] == 0)
    assert out.image.dtype == np.float32 and out.image.shape[1:] == (96, 96, 1)


def test_pixels_have_the_same_physical_size_whatever_the_voxel_size():
    """A 1.5 mm scan and its 3 mm copy show the brain at the same scale in the slices."""
    image, _, affine = ellipsoid_scan()
    coarse_affine = affine.copy()
    coarse_affine[:2, :2] *= 2
    coarse = image[::2, ::2]
    fine_slices = prep.volume_to_slices(image, affine, image_size=64, fov_mm=150)
    coarse_slices = prep.volume_to_slices(coarse, coarse_affine, image_size=64, fov_mm=150)
    fine_area = int(fine_slices.brain_mask.sum(axis=(1, 2, 3)).max())
    coarse_area = int(coarse_slices.brain_mask.sum(axis=(1, 2, 3)).max())
    assert abs(fine_area - coarse_area) / fine_area < 0.05


def test_slice_selection_drops_the_ends_of_the_brain():
    image, _, affine = ellipsoid_scan()
    out = prep.volume_to_slices(image, affine, image_size=32, fov_mm=120, min_brain_fraction=0.5)
    areas = out.brain_mask.sum(axis=(1, 2, 3))
    assert areas.min() >= 0.5 * areas.max()
    assert 0 < len(out.slice_index) < SHAPE[2] - 10


@pytest.mark.parametrize("perm, flips", [((0, 1, 2), ()), ((0, 1, 2), (0, 1)), ((2, 0, 1), (1,))])
def test_maps_go_back_into_the_source_volume(perm, flips):
    image, label, affine = reorder(*ellipsoid_scan(), perm, flips)
    exact = prep.volume_to_slices(image, affine, label=label, image_size=96, fov_mm=144, min_brain_fraction=0)
    back = prep.slices_to_volume(exact.label, exact.slice_index, exact.geometry, order=0)
    assert back.shape == image.shape
    np.testing.assert_array_equal(back, label)
    resampled = prep.volume_to_slices(image, affine, label=label, image_size=48, fov_mm=150)
    back = prep.slices_to_volume(resampled.label, resampled.slice_index, resampled.geometry, order=0) > 0
    dice = 2 * (back & (label > 0)).sum() / (back.sum() + (label > 0).sum())
    assert dice > 0.85


def test_geometry_survives_the_array_round_trip():
    image, _, affine = ellipsoid_scan()
    geometry = prep.volume_to_slices(image, affine, image_size=32).geometry
    again = prep.SliceGeometry.from_arrays(**geometry.as_arrays())
    assert again.source_shape == geometry.source_shape
    np.testing.assert_array_equal(again.source_affine, geometry.source_affine)
    np.testing.assert_allclose(again.center + again.step, geometry.center + geometry.step, rtol=1e-6)


@pytest.mark.parametrize("make, message", [
    (lambda im: im[..., None], "expected a 3D volume, got shape"),
    (lambda im: np.where(im > 120, np.nan, im), "NaN or infinite"),
    (lambda im: np.zeros_like(im), "empty brain"),
])
def test_bad_volumes_are_refused_with_a_reason(make, message):
    image, _, affine = ellipsoid_scan()
    with pytest.raises(PreprocessingError, match=message):
        prep.volume_to_slices(make(image), affine)


def test_a_label_of_another_shape_is_refused():
    image, label, affine = ellipsoid_scan()
    with pytest.raises(PreprocessingError, match=r"label shape \(60, 70, 49\) does not match image shape"):
        prep.volume_to_slices(image, affine, label=label[..., 1:])


def test_an_oblique_affine_samples_like_the_same_voxel_size_without_rounding_noise():
    """A 25-degree rotation makes the affine's column norms 1 +- ~1e-7: the slices are sampled as
    for exactly 1 mm voxels (voxel sizes are compared to 1e-5 mm)."""
    import nibabel as nib

    angle = np.deg2rad(25.0)
    oblique = np.eye(4)
    oblique[:2, :2] = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]],
                               dtype=np.float32)  # as stored in a NIfTI header
    assert not np.all(nib.affines.voxel_sizes(oblique) == 1.0)  # the float noise is there
    np.testing.assert_array_equal(prep.canonical_voxel_sizes(oblique), [1.0, 1.0, 1.0])
    image = np.zeros((40, 40, 12), np.float32)
    image[8:32, 6:34, 2:10] = np.random.default_rng(0).random((24, 28, 8)) + 1
    sliced = prep.volume_to_slices(image, oblique, image_size=32, fov_mm=48.0)
    assert sliced.geometry.step == (1.5, 1.5)


def test_the_fraction_of_the_brain_outside_the_field_of_view_is_measured():
    image = np.zeros((40, 48, 10), np.float32)
    image[4:36, 4:44, 2:8] = np.random.default_rng(0).random((32, 40, 6)) + 1
    fits = prep.volume_to_slices(image, np.diag([2.0, 2.0, 2.0, 1.0]), image_size=32, fov_mm=192.0)
    assert fits.outside_fov == 0.0  # 64 x 80 mm of brain in a 192 mm square
    # the same voxels claimed to be 10 mm: 320 x 400 mm of brain, a 192 mm square holds part of it
    huge = prep.volume_to_slices(image, np.diag([10.0, 10.0, 10.0, 1.0]), image_size=32, fov_mm=192.0)
    inside = min(1.0, 192 / 320) * min(1.0, 192 / 400)
    assert huge.outside_fov == pytest.approx(1 - inside, abs=0.05)
