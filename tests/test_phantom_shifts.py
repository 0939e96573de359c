"""The phantom's domain shifts (datasets/brain_phantom/shifts.py): each changes what it says, on the
same subject, and nothing else; checked against closed forms and direct computations."""

import numpy as np
import pytest
from scipy import ndimage

from tfvae_datasets.brain_phantom import brain_phantom_dataset_builder as builder_lib
from tfvae_datasets.brain_phantom import phantom, shifts

MM = 3.0


def _subject(shift=None, seed=3, tumours=True):
    return phantom.synthesize_subject(seed, tumours=tumours, voxel_mm=MM, shift=shift)


@pytest.mark.parametrize("shift", [builder_lib.THICK_SLICES, builder_lib.CONTRAST, builder_lib.BIAS, builder_lib.NOISE],
                         ids=["thick_slices", "contrast", "bias", "noise"])
def test_an_acquisition_shift_keeps_the_subject_and_its_exact_labels(shift):
    base, shifted = _subject(), _subject(shift)
    assert np.array_equal(base.label, shifted.label) and np.array_equal(base.brain_mask, shifted.brain_mask)
    assert not np.array_equal(base.image, shifted.image)
    again = _subject(shift)
    assert again.image.tobytes() == shifted.image.tobytes()  # deterministic
    assert np.array_equal(shifted.image != 0, shifted.brain_mask)


def test_contrast_factors_follow_the_spin_echo_equation():
    te0, tr0 = shifts.NOMINAL_TE_TR_MS
    assert all(f == pytest.approx(1.0) for f in shifts.contrast_factors(te0, tr0).values())

    def signal(tissue, te, tr):
        t1, t2 = shifts.RELAXATION_MS[tissue]
        return (1 - np.exp(-tr / t1)) * np.exp(-te / t2)

    for te, tr in ((80.0, 2500.0), (120.0, 6000.0)):
        factors = shifts.contrast_factors(te, tr)
        for tissue in ("csf", "gm", "wm", "edema"):
            assert factors[tissue] == pytest.approx(signal(tissue, te, tr) / signal(tissue, te0, tr0))
    # a shorter TE and TR flatten CSF against white matter, a longer TE and TR steepen it
    ratio = lambda f: phantom.TISSUE_T2["csf"] * f["csf"] / (phantom.TISSUE_T2["wm"] * f["wm"])  # noqa: E731
    assert ratio(shifts.contrast_factors(80.0, 2500.0)) < 2.5 < 3.57 < 5.0 < ratio(shifts.contrast_factors(120.0, 6000.0))


def test_thick_slices_equal_an_independent_resampling_along_the_slice_axis():
    rng = np.random.default_rng(0)
    image = rng.random((6, 7, 40)).astype(np.float32)
    out = shifts.thick_slices(image, axis=2, thickness_mm=5.0, offset_mm=1.0, voxel_mm=1.0)
    sigma = 5.0 / (2 * np.sqrt(2 * np.log(2)))
    blurred = ndimage.gaussian_filter1d(image.astype(np.float64), sigma, axis=2, mode="nearest")
    centres = np.arange(1.0, 39.0 + 1e-9, 5.0)
    for i in range(6):
        for j in range(7):
            acquired = np.interp(centres, np.arange(40), blurred[i, j])
            expected = np.interp(np.arange(40), centres, acquired)  # linear between slices, flat beyond
            np.testing.assert_allclose(out[i, j], expected, atol=1e-5)
    # a constant image is acquired unchanged (along any axis)
    np.testing.assert_allclose(shifts.thick_slices(np.full((5, 5, 9), 3.0), 0, 4.0, 0.0, 1.0), 3.0, rtol=1e-6)


def test_atrophy_widens_csf_and_keeps_the_brain():
    anatomy = phantom.load_anatomy(MM)
    tissue = np.stack([anatomy.csf, anatomy.gm, anatomy.wm])
    older = shifts.atrophy(tissue, 0.6, MM)
    np.testing.assert_allclose(older.sum(axis=0), tissue.sum(axis=0), atol=1e-5)
    assert older.min() >= -1e-6
    assert older[0].sum() > 1.3 * tissue[0].sum()  # more CSF ...
    assert older[1].sum() < tissue[1].sum() and older[2].sum() < tissue[2].sum()  # ... from GM and WM
    depth = ndimage.distance_transform_edt(tissue.sum(axis=0) >= 0.5, sampling=MM)
    deep = depth >= shifts.DEEP_MM + 6
    assert older[0][deep].sum() > 1.2 * tissue[0][deep].sum()  # the ventricles grew


def test_hypointense_parts_are_darker_than_white_matter_and_labelled_core():
    shift = builder_lib.HYPOINTENSE
    dark = 0
    for seed in range(6):
        base, shifted = _subject(seed=seed), _subject(shift, seed=seed)
        changed = base.image != shifted.image
        assert set(np.unique(shifted.label[changed])) <= {0, 1, 2, 4}
        newly_core = (shifted.label == phantom.LABEL_NECROSIS) & (base.label != phantom.LABEL_NECROSIS)
        assert not (newly_core & (base.label == 0)).any()  # painted inside the lesions only
        wm = np.median(base.image[base.brain_mask & (base.label == 0)])  # below the healthy median
        dark += int((shifted.image[shifted.label == phantom.LABEL_NECROSIS] < 0.8 * wm).sum() > 0)
    assert dark >= 2  # haemorrhages (probability 0.6 per lesion) show in several subjects


def test_shifted_configs_are_test_sets_paired_with_the_default():
    configs = {c.name: c for c in builder_lib.Builder.BUILDER_CONFIGS}
    default = configs["default"]
    for name in builder_lib.SHIFTED_CONFIGS:
        cfg = configs[name]
        assert cfg.num_train == 0 and cfg.num_test == default.num_test and cfg.num_validation > 0
        assert cfg.split_seed("test") == default.split_seed("test")  # the default's test subjects
        assert cfg.split_seed("validation") != default.split_seed("validation")  # other healthy people
    assert configs["combined"].voxel_mm == configs["resolution"].voxel_mm != default.voxel_mm


def test_a_shifted_config_builds_without_a_train_split(tmp_path):
    builder = builder_lib.Builder(config="tiny_combined", data_dir=str(tmp_path))
    builder.download_and_prepare()
    assert set(builder.info.splits) == {"validation", "test"}
    test = list(builder.as_dataset(split="test").as_numpy_iterator())
    assert any(ex["label"].any() for ex in test)
    assert not any(ex["label"].any() for ex in builder.as_dataset(split="validation").as_numpy_iterator())
