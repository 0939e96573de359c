"""Tests of the raw phantom heads (datasets/brain_phantom/raw_heads.py) on small coarse heads (4 mm)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tfvae_datasets.brain_phantom import phantom, raw_heads  # noqa: E402

COARSE = dict(brain_voxel_mm=4.0, voxel_mm=(4.0, 4.0, 4.8))


@pytest.fixture(scope="module")
def head():
    return raw_heads.synthesize_raw_head(3, tumours=True, **COARSE)


def test_deterministic_by_seed(head):
    again = raw_heads.synthesize_raw_head(3, tumours=True, **COARSE)
    for name in ("image", "affine", "brain_mask", "label", "world_to_phantom"):
        assert np.array_equal(getattr(head, name), getattr(again, name)), name
    other = raw_heads.synthesize_raw_head(4, tumours=True, **COARSE)
    assert not np.array_equal(head.brain_mask, other.brain_mask)


def test_grid_header_orientation_and_pose(head):
    assert nib.aff2axcodes(head.affine) == ("L", "P", "S")
    np.testing.assert_allclose(np.sort(nib.affines.voxel_sizes(head.affine)), [4.0, 4.0, 4.8])
    img = head.nifti()
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    assert all(abs(a) <= 15.0 for a in head.pose["rotation_deg"])
    assert all(abs(t) <= 20.0 for t in head.pose["translation_mm"])
    assert 0.2 <= head.pose["bias_amplitude"] <= 0.3
    # another stored orientation holds the same head: canonical arrays equal
    ras = raw_heads.synthesize_raw_head(3, tumours=True, orientation="RAS", **COARSE)
    canonical = nib.as_closest_canonical(head.nifti("brain_mask"))
    assert np.array_equal(np.asarray(canonical.dataobj), ras.brain_mask.astype(np.uint8))
    np.testing.assert_allclose(canonical.affine, ras.affine, atol=1e-9)


def test_truth_is_the_phantom_brain_moved_by_the_pose(head):
    subject = phantom.synthesize_subject(3, tumours=True, voxel_mm=4.0)
    voxel_ml = abs(np.linalg.det(head.affine[:3, :3])) / 1000.0
    raw_ml = head.brain_mask.sum() * voxel_ml
    phantom_ml = subject.brain_mask.sum() * 4.0**3 / 1000.0
    assert abs(raw_ml / phantom_ml - 1.0) < 0.05
    # the true transform carries the raw brain voxels into the phantom's brain mask
    index = np.argwhere(head.brain_mask)
    world = head.affine @ np.c_[index, np.ones(len(index))].T
    into = np.rint((np.linalg.inv(subject.affine) @ head.world_to_phantom @ world)[:3]).astype(int)
    inside = subject.brain_mask[tuple(np.clip(into.T, 0, np.array(subject.brain_mask.shape) - 1).T)]
    assert inside.mean() > 0.95
    # tumour labels: present, inside the brain, BraTS codes
    assert (head.label > 0).any() and not (head.label[~head.brain_mask] > 0).any()
    assert set(np.unique(head.label)) <= {0, 1, 2, 4}


def test_a_head_around_the_brain(head):
    """Not skull-stripped: bright tissue (CSF, scalp fat) and dark skull outside the brain mask,
    air with noise only beyond."""
    outside = ~head.brain_mask
    brain_median = float(np.median(head.image[head.brain_mask]))
    bright_outside = (head.image > brain_median) & outside
    assert bright_outside.sum() > 0.3 * head.brain_mask.sum()  # extra-cerebral CSF and scalp
    from scipy import ndimage

    shell = ndimage.binary_dilation(head.brain_mask, iterations=3) & outside
    assert np.median(head.image[shell]) > 0.2 * brain_median  # tissue, not air, around the brain
    corner = head.image[:4, :4, :4]
    assert corner.mean() < 0.15 * brain_median  # air: noise only
