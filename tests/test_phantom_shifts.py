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


def _lesion_ml(subject, mm=MM):
    return float((subject.label > 0).sum()) * mm**3 / 1000.0


def test_large_lesions_are_brats_sized_and_keep_the_subject():
    sizes = [_lesion_ml(_subject(builder_lib.LARGE_LESIONS, seed=s)) for s in range(6)]
    default = [_lesion_ml(_subject(seed=s)) for s in range(6)]
    assert 100 <= np.median(sizes) <= 400 and min(sizes) > 60 and np.median(sizes) > 2 * np.median(default)
    base, large = _subject(seed=4, tumours=False), _subject(builder_lib.LARGE_LESIONS, seed=4, tumours=False)
    assert np.array_equal(base.image, large.image)  # a healthy subject draws no tumour: the same scan


def test_lobulated_lesions_are_a_new_shape_with_the_same_centres():
    lobed_shift = shifts.Shift(**builder_lib.LOBULATED)
    for seed in range(3):
        blob, lobed = _subject(seed=seed), _subject(lobed_shift, seed=seed)
        assert (lobed.label > 0).sum() > (blob.label > 0).sum()  # the lobes add to the core's blob
        assert ((blob.label > 0) & (lobed.label == 0)).sum() <= 0.02 * (blob.label > 0).sum()  # ... around it
        labelled, n = ndimage.label(lobed.label > 0)
        assert n >= 1 and np.array_equal(blob.brain_mask, lobed.brain_mask)


@pytest.mark.parametrize("site", [None, builder_lib.BIAS])
def test_a_lesion_share_covers_that_share_of_the_brain_and_grows_nested(site):
    healthy = _subject(site, seed=5, tumours=False)
    previous = np.zeros_like(healthy.brain_mask)
    for share in (0.05, 0.2, 0.4):
        subject = phantom.synthesize_subject(5, tumours=False, voxel_mm=MM, shift=site, lesion_share=share)
        lesion = subject.label > 0
        assert lesion.sum() / subject.brain_mask.sum() == pytest.approx(share, abs=0.01)
        assert np.all(lesion[previous])  # nested: the same lesion, larger
        outside = ~lesion & subject.brain_mask
        # the rest of the scan is the healthy scan's (same anatomy, bias and noise) away from the lesion
        far = outside & ~ndimage.binary_dilation(lesion, iterations=2)
        assert np.array_equal(subject.image[far], healthy.image[far])
        assert subject.image[lesion].mean() > 1.3 * healthy.image[lesion].mean()  # bright, as tumours
        previous = lesion
    assert not phantom.synthesize_subject(5, tumours=False, voxel_mm=MM, lesion_share=0.0).label.any()
    with pytest.raises(ValueError, match="lesion_share"):
        phantom.synthesize_subject(5, tumours=True, voxel_mm=MM, lesion_share=0.1)


def test_held_out_sites_are_new_subjects_with_lobulated_tumours():
    configs = {c.name: c for c in builder_lib.Builder.BUILDER_CONFIGS}
    others = [c for n, c in configs.items() if n not in builder_lib.HELD_OUT_CONFIGS]
    used = {c.split_seed(s) for c in others for s in ("train", "validation", "test")}
    for name in builder_lib.HELD_OUT_CONFIGS:
        cfg = configs[name]
        assert cfg.split_seed("test") not in used and cfg.split_seed("validation") not in used
        assert cfg.shift.lobes == builder_lib.LOBULATED["lobes"] and cfg.num_train == 0
    assert all(c.shift is None or c.shift.lobes is None for c in others)
