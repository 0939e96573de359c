"""Scans as researchers' tools write them (issue 31's field cases 19-25, each a kind of input, rebuilt
here as small generated files): read right through the one reader (``tfvae.data.nifti.load_volume``,
then ``preprocessing.volume_to_slices``), or refused in one line that names the file, what is
wrong and what to do. What the reader says goes to ``notes`` (localize's warnings) or, for the
dataset builders, to the ``tfvae`` logger."""

import gzip
import logging
import shutil
import struct

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from tfvae.data import nifti, preprocessing
from tfvae.data.nifti import BadInputError, UnknownOrientationError, load_volume
from tfvae_datasets.brain_phantom import phantom


@pytest.fixture(scope="module")
def subject():
    """A skull-stripped phantom T2 (4 mm, background exactly 0) with a tumour."""
    return phantom.synthesize_subject(101, tumours=True, voxel_mm=4.0)


def save(path, data, affine, codes=(1, 1)):
    img = nib.Nifti1Image(np.asarray(data, np.float32), affine)
    img.set_qform(affine, code=codes[0])
    img.set_sform(affine, code=codes[1])
    nib.save(img, str(path))
    return str(path)


def one_line(text, path, *parts):
    """``text`` is one line that starts with ``path`` and holds every one of ``parts``."""
    assert "\n" not in text and text.startswith(str(path)), text
    for part in parts:
        assert part in text, (part, text)


def slices(data, affine):
    return preprocessing.volume_to_slices(data, affine, image_size=32, fov_mm=128.0)


# --- case 19: what a file is comes from its content, not its name -----------------------------------------------

def test_a_gzip_file_named_nii_is_read_and_the_name_is_said(tmp_path, subject, caplog):
    gz = save(tmp_path / "scan_t2.nii.gz", subject.image, subject.affine)
    named = tmp_path / "scan_t2.nii"
    shutil.copy(gz, named)
    assert named.read_bytes()[:2] == b"\x1f\x8b"
    notes = []
    data, affine = load_volume(str(named), notes=notes)
    np.testing.assert_array_equal(data, subject.image.astype(np.float32))
    np.testing.assert_allclose(affine, subject.affine)
    assert len(notes) == 1
    one_line(notes[0], named, "is gzip-compressed but named .nii", "rename it to .nii.gz")
    with caplog.at_level(logging.WARNING, logger="tfvae"):  # a builder passes no notes: logged
        load_volume(str(named))
    assert "is gzip-compressed but named .nii" in caplog.text
    # and the reverse: plain content named .nii.gz
    plain = tmp_path / "plain.nii"
    nib.save(nib.Nifti1Image(subject.image.astype(np.float32), subject.affine), str(plain))
    shutil.copy(plain, tmp_path / "plain_t2.nii.gz")
    notes = []
    data, _ = load_volume(str(tmp_path / "plain_t2.nii.gz"), notes=notes)
    np.testing.assert_array_equal(data, subject.image.astype(np.float32))
    one_line(notes[0], tmp_path / "plain_t2.nii.gz", "is not gzip-compressed but named .nii.gz", "rename it to .nii")


def test_gzip_content_that_is_not_nifti_is_one_line(tmp_path):
    path = tmp_path / "notes.nii"
    with gzip.open(path, "wb") as f:
        f.write(b"hello, this is no NIfTI header" * 20)
    with pytest.raises(BadInputError) as e:
        load_volume(str(path))
    one_line(str(e.value), path, "cannot read NIfTI")


# --- case 20: NaN outside the brain is background; NaN inside it is refused -------------------------------------

def test_nan_background_outside_the_brain_is_read_as_zero_and_said(tmp_path, subject, caplog):
    masked = np.where(subject.brain_mask, subject.image, np.nan)
    path = save(tmp_path / "sub-320_desc-masked_T2.nii.gz", masked, subject.affine)
    notes = []
    data, affine = load_volume(path, notes=notes)
    np.testing.assert_array_equal(data, np.where(subject.brain_mask, subject.image, 0).astype(np.float32))
    count = int((~subject.brain_mask).sum())
    assert len(notes) == 1
    one_line(notes[0], path, f"{count} NaN voxels", "all outside the brain", "read as background (0)")
    sliced = slices(data, affine)  # scored as the same scan with a zero background is
    reference = slices(np.where(subject.brain_mask, subject.image, 0), subject.affine)
    np.testing.assert_array_equal(sliced.image, reference.image)
    with caplog.at_level(logging.WARNING, logger="tfvae"):
        load_volume(path)
    assert "all outside the brain" in caplog.text


def test_nan_inside_the_brain_is_refused_with_the_count_and_the_fix(tmp_path, subject):
    image = np.where(subject.brain_mask, subject.image, np.nan)
    centre = tuple(int(c) for c in np.argwhere(subject.brain_mask).mean(axis=0))
    image[centre[0]:centre[0] + 2, centre[1]:centre[1] + 2, centre[2]] = np.nan  # 4 voxels deep in the brain
    path = save(tmp_path / "holes_T2.nii.gz", image, subject.affine)
    with pytest.raises(BadInputError) as e:
        load_volume(path)
    total = int(np.isnan(image).sum())
    one_line(str(e.value), path, f"contains {total} NaN or infinite voxels, 4 of them inside the brain",
             "rerun the step that wrote them", "fslmaths IN -nan OUT")
    # in a scan whose background is 0: one NaN in the brain is refused, one in the background is background
    lone = np.asarray(subject.image, np.float32).copy()
    lone[centre] = np.nan
    with pytest.raises(BadInputError, match="contains 1 NaN or infinite voxels, 1 of them inside the brain"):
        load_volume(save(tmp_path / "lone.nii.gz", lone, subject.affine))
    lone[centre], lone[0, 0, 0] = subject.image[centre], np.nan
    notes = []
    read, _ = load_volume(save(tmp_path / "corner.nii.gz", lone, subject.affine), notes=notes)
    assert read[0, 0, 0] == 0 and "1 NaN voxels (0%), all outside the brain" in notes[0]
    # a slab: NaN in a hole of its slices (open to the cut faces in 3D) is inside the brain
    zc = centre[2]
    slab = np.where(subject.brain_mask, subject.image, np.nan)[:, :, zc - 1:zc + 2]
    slab[centre[0], centre[1], :] = np.nan
    with pytest.raises(BadInputError, match="contains .* NaN or infinite voxels, 3 of them inside the brain"):
        load_volume(save(tmp_path / "slab.nii.gz", slab, subject.affine))
    infinite = np.where(subject.brain_mask, subject.image, np.nan)
    infinite[centre] = np.inf
    with pytest.raises(BadInputError) as e:
        load_volume(save(tmp_path / "inf.nii.gz", infinite, subject.affine))
    one_line(str(e.value), tmp_path / "inf.nii.gz", "(1 infinite)", "replace them")
    with pytest.raises(BadInputError, match="no other non-zero voxel"):
        load_volume(save(tmp_path / "empty.nii.gz", np.full((4, 5, 6), np.nan), np.eye(4)))


# --- case 22: a slab of a few slices, cropped to the brain, is skull-stripped --------------------------------------

def test_a_few_slice_slab_cropped_to_the_brain_is_not_called_unstripped(subject):
    image, brain = subject.image, subject.brain_mask
    zc = int(np.argwhere(brain)[:, 2].mean())
    for n in (1, 2, 4, 8):
        for margin in (0, 2):
            slab = brain[:, :, zc - n // 2: zc - n // 2 + n]
            x, y = np.flatnonzero(slab.any(axis=(1, 2))), np.flatnonzero(slab.any(axis=(0, 2)))
            x0, y0 = max(x[0] - margin, 0), max(y[0] - margin, 0)
            crop = (slice(x0, x[-1] + 1 + margin), slice(y0, y[-1] + 1 + margin), slice(zc - n // 2, zc - n // 2 + n))
            affine = subject.affine.copy()
            affine[:3, 3] += affine[:3, :3] @ np.array([x0, y0, zc - n // 2], float)
            sliced = slices(image[crop], affine)
            assert len(sliced.slice_index) >= 1
            # stored sagittally, the same slab is a thin x axis: its faces are cuts too
            preprocessing.check_skull_stripped(np.transpose(image[crop] != 0, (2, 0, 1)))


def test_a_head_that_was_not_skull_stripped_is_still_refused_slab_or_not():
    from test_nifti_inputs import ixi_like_head

    head, brain, affine = ixi_like_head()
    zc = int(np.argwhere(brain)[:, 2].mean())
    for cut in (head, head[:, :, zc - 2:zc + 2]):
        with pytest.raises(preprocessing.PreprocessingError) as e:
            slices(cut, affine)
        assert "does not look skull-stripped" in str(e.value) and "brain mask" in str(e.value)
        assert "\n" not in str(e.value)
    notes = []  # its noise floor is no near-zero background: left for the skull-strip check to refuse
    assert np.array_equal(nifti.read_background(head, "head")[0], head) and not nifti.read_background(head)[1]
    del notes


# --- case 24: FLAIR by its name (any of them) or by its intensities ---------------------------------------------------

@pytest.fixture(scope="module")
def flair(subject):
    """The same phantom with FLAIR contrast (CSF dark, GM brighter than WM); lesions stay bright."""
    saved = dict(phantom.TISSUE_T2)
    phantom.TISSUE_T2.update({"csf": 30.0, "gm": 110.0, "wm": 80.0})
    try:
        return phantom.synthesize_subject(101, tumours=True, voxel_mm=4.0)
    finally:
        phantom.TISSUE_T2.update(saved)


@pytest.mark.parametrize("name, modality", [
    ("t2_tirm_tra_dark-fluid_4", "flair"), ("AX_FLAIR_T2", "flair"), ("T2_FLAIR", "flair"), ("sub-01_FLAIR", "flair"),
    ("t2flair_ax", "flair"), ("t2_spc_da-fl_sag", "flair"), ("Sag_T2_darkfluid", "flair"),
    ("BraTS-GLI-00000-000-t2f", "flair"), ("sub-01_T2w", "t2"), ("BraTS2021_00000_t1ce", "t1ce"),
    ("sub-01_acq-mprage_T1w", "t1"), ("scan", None), ("firm_tissue", None), ("sub-01_T2w_mask", None),
    ("BraTS2021_00000_seg", None)])
def test_modality_names(name, modality):
    for suffix in (".nii.gz", ".nii"):
        assert nifti.modality_from_name(f"/data/flair_study/{name}{suffix}") == modality


def test_a_flair_under_any_name_is_warned_about_by_name_and_by_intensity(tmp_path, subject, flair):
    for name in ("t2_tirm_tra_dark-fluid_4", "AX_FLAIR_T2", "T2_FLAIR", "sub-01_FLAIR", "sub-01_T2w", "scan"):
        path = save(tmp_path / f"{name}.nii.gz", flair.image, flair.affine)
        notes = []
        load_volume(path, notes=notes, expect_modality="t2")
        assert len(notes) == 1, (name, notes)
        one_line(notes[0], path, "not t2", "give a t2 scan, or use a run trained on this contrast",
                 "CSF is brighter than white matter in T2-weighted scans")
        if name in ("sub-01_T2w", "scan"):  # only the intensities tell
            assert "looks like FLAIR or T1" in notes[0] and "its CSF looks dark" in notes[0]
        else:
            assert "looks like flair" in notes[0] and "its name says flair" in notes[0]
    # the T2 itself: nothing to say, under a T2 name or none; given to a FLAIR run, it is said
    for name in ("sub-01_T2w", "scan"):
        path = save(tmp_path / f"{name}_real.nii.gz", subject.image, subject.affine)
        notes = []
        load_volume(path, notes=notes, expect_modality="t2")
        assert notes == []
        load_volume(path, notes=notes, expect_modality="flair")
        assert len(notes) == 1 and "its CSF looks bright" in notes[0] and "not flair" in notes[0]
    # without an expectation (the builders), a name its intensities contradict is said
    path = save(tmp_path / "sub-02_T2w.nii.gz", flair.image, flair.affine)
    notes = []
    load_volume(path, notes=notes)
    assert len(notes) == 1
    one_line(notes[0], path, "named t2, but its CSF looks dark", "check which contrast it is and rename it")
    for name in ("AX_FLAIR_T2", "scan"):  # agreeing or saying nothing: nothing said
        notes = []
        load_volume(save(tmp_path / f"{name}_b.nii.gz", flair.image, flair.affine), notes=notes)
        assert notes == []


def test_the_fluid_check_on_other_phantom_subjects_and_contrasts():
    saved = dict(phantom.TISSUE_T2)
    try:
        for tissue, expected in (({}, "bright"), ({"csf": 30.0, "gm": 110.0, "wm": 80.0}, "dark"),
                                 ({"csf": 30.0, "gm": 70.0, "wm": 100.0}, None)):  # T1: dark or unclear
            phantom.TISSUE_T2.update(saved)
            phantom.TISSUE_T2.update(tissue)
            for seed, tumours in ((300, False), (301, True)):
                s = phantom.synthesize_subject(seed, tumours=tumours, voxel_mm=4.0)
                seen, evidence = nifti.fluid_contrast(s.image)
                assert seen == expected or (expected is None and seen in (None, "dark")), (tissue, seed, evidence)
    finally:
        phantom.TISSUE_T2.clear()
        phantom.TISSUE_T2.update(saved)


# --- case 25: intensity conventions: near-zero background and negative ringing are background --------------------

def bspline_shifted(subject):
    """The scan resampled half a voxel in-plane with cubic B-splines, as registration tools do."""
    shift = np.array([0.5, 0.5, 0.0])
    image = ndimage.shift(subject.image.astype(np.float64), -shift, order=3, mode="constant", cval=0.0)
    affine = subject.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ shift
    return image.astype(np.float32), affine


def test_a_b_spline_resampled_scan_is_read_with_its_ringing_as_background(tmp_path, subject):
    image, affine = bspline_shifted(subject)
    assert (image < 0).sum() > 1000 and (image != 0).mean() > 0.9  # the case: ringing, almost nothing exactly 0
    with pytest.raises(preprocessing.PreprocessingError, match="does not look skull-stripped"):
        slices(image, affine)  # read as it is, the ringing is taken for a head's background
    path = save(tmp_path / "bspline_t2.nii.gz", image, affine)
    notes = []
    data, affine = load_volume(path, notes=notes)
    assert len(notes) == 1
    one_line(notes[0], path, "its background is near 0 but not 0", "negative", "read as background",
             "give its brain mask")
    assert data.min() == 0
    brain = data != 0
    shifted_mask = ndimage.shift(subject.brain_mask.astype(float), -np.array([0.5, 0.5, 0.0]), order=1) > 0.5
    assert (brain & shifted_mask).sum() / shifted_mask.sum() > 0.97  # the brain is kept ...
    assert (brain & ~ndimage.binary_dilation(shifted_mask, iterations=2)).sum() < 0.01 * brain.sum()  # ... alone
    assert len(slices(data, affine).slice_index) > 20


def test_other_intensity_conventions_are_read_unchanged(tmp_path, subject):
    image = subject.image.astype(np.float32)
    brain = subject.brain_mask
    zscored = np.where(brain, (image - image[brain].mean()) / image[brain].std(), 0).astype(np.float32)
    for name, data in (("minmax01", image / image.max()), ("uint12", np.round(image / image.max() * 4095)),
                       ("zscored", zscored)):  # a z-scored scan's negatives are tissue
        notes = []
        read, _ = load_volume(save(tmp_path / f"{name}_t2.nii.gz", data, subject.affine), notes=notes)
        np.testing.assert_array_equal(read, data.astype(np.float32))
        assert notes == [], (name, notes)
    # a zero background with a few negative voxels at the brain's edge (sinc undershoot): background
    ring = image.copy()
    edge = ndimage.binary_dilation(brain, iterations=1) & ~brain
    ring[edge] = -3.0
    path = save(tmp_path / "ring_t2.nii.gz", ring, subject.affine)
    notes = []
    read, _ = load_volume(path, notes=notes)
    np.testing.assert_array_equal(read, image)
    one_line(notes[0], path, f"{int(edge.sum())} negative voxels", "read as background (0)")


# --- orientation: every format says where it comes from, or is refused unless forced -------------------------------

def test_every_format_says_where_its_orientation_comes_from(tmp_path, subject):
    image, affine = subject.image.astype(np.float32), subject.affine
    nifti_path = save(tmp_path / "s.nii.gz", image, affine, codes=(1, 0))
    assert nifti.orientation_source(nib.load(nifti_path)) == "the NIfTI qform (qform_code 1: scanner)"
    aligned = save(tmp_path / "a.nii.gz", image, affine, codes=(1, 2))
    assert nifti.orientation_source(nib.load(aligned)).startswith("the NIfTI sform (sform_code 2")
    pair = nib.Nifti1Pair(image, affine)
    nib.save(pair, str(tmp_path / "pair.hdr"))
    assert "NIfTI" in nifti.orientation_source(nib.load(str(tmp_path / "pair.hdr")))
    mgz = str(tmp_path / "s.mgz")
    nib.save(nib.MGHImage(image, affine), mgz)
    assert nifti.orientation_source(nib.load(mgz), mgz) == "the MGH vox2ras matrix (goodRASFlag 1)"
    data, read_affine = load_volume(mgz)
    np.testing.assert_allclose(read_affine, affine, atol=1e-4)
    np.testing.assert_array_equal(data, image)


def test_formats_without_orientation_are_refused_unless_forced(tmp_path, subject):
    image, affine = subject.image.astype(np.float32), subject.affine
    analyze = str(tmp_path / "old.hdr")
    nib.save(nib.AnalyzeImage(image, affine), analyze)
    mgz = str(tmp_path / "noras.mgz")
    nib.save(nib.MGHImage(image, affine), mgz)
    with gzip.open(mgz, "rb") as f:
        raw = bytearray(f.read())
    raw[28:30] = struct.pack(">h", 0)  # goodRASFlag 0: Mdc and Pxyz_c are not valid
    with gzip.open(mgz, "wb") as f:
        f.write(bytes(raw))
    codes0 = save(tmp_path / "codes0.nii.gz", image, affine, codes=(0, 0))
    for path, lacks in ((analyze, "an Analyze 7.5 header carries no orientation"),
                        (mgz, "the MGH header's goodRASFlag is 0"),
                        (codes0, "qform_code and sform_code are both 0")):
        with pytest.raises(UnknownOrientationError) as e:
            load_volume(path)
        one_line(str(e.value), path, lacks, "tfvae never assumes it", "force=True")  # from Python: the argument (the command line: --force)
        notes = []
        load_volume(path, allow_unknown_orientation=True, notes=notes)
        assert len(notes) == 1
        one_line(notes[0], path, "orientation unknown", lacks, "(forced)")


# --- the builders read through the same reader ------------------------------------------------------------------

def test_a_folder_of_such_scans_builds_and_each_is_said(tmp_path, subject, caplog):
    """nifti_folder (as case 20 trains on it): a NaN-background scan, a gzip file named .nii and a
    B-spline-resampled scan build like clean ones, each said once in the log, naming its file."""
    from tfvae_datasets import testing_trees as tt
    from tfvae_datasets.nifti_folder import nifti_folder_dataset_builder as nf

    src = tmp_path / "scans"
    src.mkdir()
    others = [phantom.synthesize_subject(400 + i, tumours=False, voxel_mm=4.0) for i in range(3)]
    save(src / "sub-400_desc-masked_T2.nii.gz", np.where(others[0].brain_mask, others[0].image, np.nan),
         others[0].affine)
    save(tmp_path / "gz.nii.gz", others[1].image, others[1].affine)
    shutil.copy(tmp_path / "gz.nii.gz", src / "sub-401_T2.nii")
    save(src / "sub-402_T2.nii.gz", *bspline_shifted(others[2]))
    with caplog.at_level(logging.WARNING, logger="tfvae"):
        builder = tt.build(nf.Builder, str(src), tmp_path / "tfds", validation_fraction=0.0)
    assert sorted(tt.volume_ids(builder, "train")) == ["sub-400_desc-masked_T2", "sub-401_T2", "sub-402_T2"]
    said = [r.getMessage() for r in caplog.records if r.name == "tfvae"]
    for name, what in (("sub-400_desc-masked_T2.nii.gz", "all outside the brain"),
                       ("sub-401_T2.nii", "is gzip-compressed but named .nii"),
                       ("sub-402_T2.nii.gz", "its background is near 0 but not 0")):
        assert sum(str(src / name) in line and what in line for line in said) == 1, (name, said)


def test_dark_tissue_inside_the_brain_is_never_read_as_background():
    """Review of issue 31: with a ringing background, every voxel below 5 % of the 99th percentile
    was set to 0 -- dark ventricles inside the brain too, which then fell out of the brain mask.
    Only what lies outside the brain they enclose is background; negative undershoot inside the
    brain stays (non-zero: in the mask)."""
    rng = np.random.default_rng(0)
    shape = (40, 40, 30)
    grid = np.indices(shape).astype(float)
    r = np.sqrt(sum(((g - (s - 1) / 2) / (s / 2)) ** 2 for g, s in zip(grid, shape)))
    brain, ventricle = r < 0.8, r < 0.25
    image = np.where(brain, 100.0 + rng.normal(0, 5, shape), 0.0)
    image[ventricle] = 3.0  # 3 % of the tissue: a FLAIR's suppressed CSF, a necrotic core
    ringing = np.where(brain, image, rng.normal(0, 1e-4, shape)).astype(np.float32)
    read, notes = nifti.read_background(ringing, "flair_like")
    assert len(notes) == 1 and "near 0 but not 0" in notes[0]
    assert np.all(read[ventricle] == 3.0) and np.all(read[~brain] == 0)
    undershoot = np.where(brain, image, 0.0).astype(np.float32)
    undershoot[ventricle] = -2.0  # inside the brain
    undershoot[~brain & (r < 0.85)] = -1.0  # at its edge, outside
    read, notes = nifti.read_background(undershoot, "undershoot")
    assert np.all(read[ventricle] == -2.0) and np.all(read[~brain] == 0) and len(notes) == 1
