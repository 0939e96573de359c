"""Tests of the synthetic T2 brain phantom (tfvae_datasets.brain_phantom.phantom, i.e.
datasets/brain_phantom/phantom.py), mostly on coarse 3-4 mm grids."""

import socket

import numpy as np
import pytest
from scipy import ndimage

from tfvae_datasets.brain_phantom import phantom

COARSE_MM = 4.0


@pytest.fixture(scope="module")
def tumour_subjects():
    return [phantom.synthesize_subject(seed, tumours=True, voxel_mm=COARSE_MM) for seed in range(4)]


def _arrays(subject):
    return (subject.image, subject.brain_mask, subject.label, subject.affine)


def test_anatomy_maps_grid_and_read_only_cache():
    anatomy = phantom.load_anatomy(COARSE_MM)
    assert phantom.load_anatomy(COARSE_MM) is anatomy
    np.testing.assert_allclose(np.diag(anatomy.affine)[:3], COARSE_MM)
    np.testing.assert_allclose(anatomy.csf, np.clip(anatomy.csf, 0.0, 1.0))
    total = anatomy.gm + anatomy.wm + anatomy.csf
    assert np.array_equal(anatomy.brain_mask, total >= 0.5)
    # about 1.9 l of brain in the MNI152 template; CSF is the smallest class, GM the largest
    volume_l = anatomy.brain_mask.sum() * COARSE_MM**3 / 1e6
    assert 1.5 < volume_l < 2.3
    assert anatomy.csf.sum() < anatomy.wm.sum() < anatomy.gm.sum()
    with pytest.raises(ValueError):
        anatomy.gm[0, 0, 0] = 1.0


def test_loading_templates_needs_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("phantom tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    anatomy = phantom.load_anatomy(5.0)  # a grid no other test loads, so the templates are read here
    assert anatomy.brain_mask.any()


def test_voxel_size_below_template_resolution_is_rejected():
    with pytest.raises(ValueError, match="voxel_mm"):
        phantom.load_anatomy(0.5)


@pytest.mark.parametrize("tumours", [False, True])
def test_same_seed_gives_identical_bytes(tumours):
    first = phantom.synthesize_subject(7, tumours=tumours, voxel_mm=COARSE_MM)
    second = phantom.synthesize_subject(7, tumours=tumours, voxel_mm=COARSE_MM)
    for a, b in zip(_arrays(first), _arrays(second)):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_different_seeds_and_tumour_flag_give_different_brains():
    base = phantom.synthesize_subject(0, tumours=False, voxel_mm=COARSE_MM)
    other_seed = phantom.synthesize_subject(1, tumours=False, voxel_mm=COARSE_MM)
    with_tumour = phantom.synthesize_subject(0, tumours=True, voxel_mm=COARSE_MM)
    assert not np.array_equal(base.image, other_seed.image)
    assert not np.array_equal(base.brain_mask, other_seed.brain_mask)  # the deformation differs
    assert not np.array_equal(base.brain_mask, with_tumour.brain_mask)


def test_types_shapes_and_affine():
    subject = phantom.synthesize_subject(3, tumours=True, voxel_mm=3.0)
    anatomy = phantom.load_anatomy(3.0)
    assert subject.image.dtype == np.float32 and subject.brain_mask.dtype == bool
    assert subject.label.dtype == np.uint8 and subject.affine.dtype == np.float64
    assert subject.image.shape == subject.label.shape == subject.brain_mask.shape == anatomy.gm.shape
    np.testing.assert_array_equal(subject.affine, anatomy.affine)
    np.testing.assert_allclose(np.diag(subject.affine), [3.0, 3.0, 3.0, 1.0])


def test_background_is_exactly_zero_and_brain_is_nonzero(tumour_subjects):
    healthy = phantom.synthesize_subject(0, tumours=False, voxel_mm=COARSE_MM)
    for subject in [healthy, *tumour_subjects]:
        assert np.isfinite(subject.image).all()
        assert np.array_equal(subject.image != 0, subject.brain_mask)  # a "non-zero" mask works
        assert subject.image.min() >= 0.0


def test_healthy_subject_has_no_label():
    for seed in range(3):
        subject = phantom.synthesize_subject(seed, tumours=False, voxel_mm=COARSE_MM)
        assert not subject.label.any()
        assert subject.brain_mask.sum() > 10_000


def test_tumour_labels_are_brats_codes_inside_the_brain(tumour_subjects):
    for subject in tumour_subjects:
        codes = set(np.unique(subject.label).tolist())
        assert codes <= {0, 1, 2, 4}
        assert {2, 4} <= codes
        assert not subject.label[~subject.brain_mask].any()
        tumour_fraction = (subject.label > 0).sum() / subject.brain_mask.sum()
        assert 0.002 < tumour_fraction < 0.2
    assert any(1 in np.unique(s.label) for s in tumour_subjects)


def test_tumours_leave_many_axial_slices_tumour_free(tumour_subjects):
    for subject in tumour_subjects:
        brain_slices = subject.brain_mask.any(axis=(0, 1))
        tumour_slices = (subject.label > 0).any(axis=(0, 1))
        assert tumour_slices.any()
        assert (brain_slices & ~tumour_slices).sum() >= 0.3 * brain_slices.sum()


def test_tumour_compartments_are_nested(tumour_subjects):
    """Necrosis is enclosed by the enhancing rim: each necrotic voxel's neighbours are tumour."""
    for subject in tumour_subjects:
        necrosis = subject.label == phantom.LABEL_NECROSIS
        if necrosis.any():
            ring = ndimage.binary_dilation(necrosis) & ~necrosis
            assert (subject.label[ring] > 0).mean() > 0.95


def test_t2_contrast_orders_csf_above_gm_above_wm():
    anatomy = phantom.load_anatomy(3.0)
    for seed in range(3):
        image = phantom.synthesize_subject(seed, tumours=False, voxel_mm=3.0).image
        csf, gm, wm = (image[tissue > 0.8].mean() for tissue in (anatomy.csf, anatomy.gm, anatomy.wm))
        assert csf > gm > wm, (seed, csf, gm, wm)


def test_tumour_is_bright_but_not_separable_by_an_intensity_threshold():
    from sklearn.metrics import roc_auc_score

    scores, targets = [], []
    for seed in range(4):
        subject = phantom.synthesize_subject(seed, tumours=True, voxel_mm=3.0)
        scores.append(subject.image[subject.brain_mask])
        targets.append(subject.label[subject.brain_mask] > 0)
    auroc = roc_auc_score(np.concatenate(targets), np.concatenate(scores))
    assert 0.6 < auroc < 0.97, auroc


def test_mass_effect_pushes_tissue_outwards_and_decays():
    tumour = phantom._Tumour(
        centre=np.array([10.0, 10.0, 10.0]), core_mm=10.0, rim_mm=3.0, has_necrosis=True, edema_mm=10.0,
        mass_mm=10.0, shape_amplitude=0.1, t2_necrosis=230.0, t2_enhancing=130.0, t2_edema=180.0,
        edema_fade=0.5)
    displacement = phantom._mass_effect((21, 21, 21), [tumour], voxel_mm=2.0)
    along_x = displacement[0, 10:, 10, 10] * 2.0  # mm, on the +x ray from the centre
    assert np.allclose(displacement[1:, 10:, 10, 10], 0.0, atol=1e-5)
    radius = np.arange(11) * 2.0
    expected = radius - np.cbrt(np.maximum(radius**3 - 10.0**3, 0.0))
    np.testing.assert_allclose(along_x, expected, atol=0.1)  # float32 cancellation at r = R
    assert np.all(np.diff(along_x[5:]) < 0)  # beyond the inserted sphere the push decays
    assert np.allclose(displacement[0, :10, 10, 10], -displacement[0, 20:10:-1, 10, 10], atol=1e-5)


def test_mass_effect_displaces_nearby_healthy_tissue_only(monkeypatch):
    pushed = phantom.synthesize_subject(0, tumours=True, voxel_mm=3.0)
    monkeypatch.setattr(phantom, "_MASS_FRACTION", (0.0, 0.0))  # same draws, no push
    unpushed = phantom.synthesize_subject(0, tumours=True, voxel_mm=3.0)
    healthy = (pushed.label == 0) & (unpushed.label == 0) & pushed.brain_mask & unpushed.brain_mask
    change = np.abs(pushed.image - unpushed.image)
    distance_mm = ndimage.distance_transform_edt(pushed.label == 0, sampling=3.0)
    near = healthy & (distance_mm <= 10.0)
    far = healthy & (distance_mm >= 60.0)
    assert near.any() and far.any()
    assert change[near].mean() > 5.0 * change[far].mean()
    assert change[near].mean() > 3.0
