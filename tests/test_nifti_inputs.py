"""Reading users' NIfTI files (tfvae.data.nifti): the situations researchers meet with real data, each a
small generated file, each refused (or accepted) with one line naming the file and what to do."""

import gzip
import struct

import nibabel as nib
import numpy as np
import pytest

from tfvae.data import nifti
from tfvae.data.nifti import BadInputError, UnknownOrientationError, load_volume


def save(tmp_path, name, data, affine=None, codes=(1, 1)):
    affine = np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine
    img = nib.Nifti1Image(np.asarray(data, np.float32), affine)
    img.set_qform(affine, code=codes[0])
    img.set_sform(affine, code=codes[1])
    path = str(tmp_path / name)
    nib.save(img, path)
    return path


def dicom_bytes():
    """A DICOM Part 10 file's start: the 128-byte preamble, "DICM", one meta element."""
    return b"\0" * 128 + b"DICM" + struct.pack("<HH2sH", 2, 1, b"OB", 0) + bytes(8)


def test_trailing_singleton_axes_are_dropped(tmp_path):
    volume = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    for shape in ((4, 5, 6, 1), (4, 5, 6, 1, 1)):
        data, _ = load_volume(save(tmp_path, f"s{len(shape)}.nii.gz", volume.reshape(shape)))
        np.testing.assert_array_equal(data, volume)
    with pytest.raises(BadInputError, match=r"is 4D \(shape \(4, 5, 6, 2\)\)"):
        load_volume(save(tmp_path, "series.nii.gz", np.zeros((4, 5, 6, 2))))


def test_a_dicom_file_is_named_as_such_with_how_to_convert(tmp_path):
    for name in ("IM0001.dcm", "scan.nii.gz"):  # whatever the name says
        path = tmp_path / name
        path.write_bytes(dicom_bytes())
        with pytest.raises(BadInputError) as e:
            load_volume(str(path))
        message = str(e.value)
        assert message.startswith(str(path)) and "is a DICOM file" in message and "dcm2niix" in message
        assert "corrupt" not in message and "\n" not in message


def test_unknown_orientation_is_refused_unless_forced_and_then_said(tmp_path):
    path = save(tmp_path, "sagittal.nii.gz", np.ones((3, 4, 5)), codes=(0, 0))
    with pytest.raises(UnknownOrientationError) as e:
        load_volume(path)
    assert str(e.value).startswith(path) and "qform_code and sform_code are both 0" in str(e.value)
    # from Python the argument is named (the command line names --force: tests/test_localize.py)
    assert "force=True" in str(e.value) and "--force" not in str(e.value) and "\n" not in str(e.value)
    notes = []
    data, affine = load_volume(path, allow_unknown_orientation=True, notes=notes)
    assert data.shape == (3, 4, 5) and nib.aff2axcodes(affine) == ("L", "A", "S")
    assert len(notes) == 1 and "orientation unknown" in notes[0] and "forced" in notes[0]
    # one code is enough: the orientation is known
    for codes in ((1, 0), (0, 2)):
        load_volume(save(tmp_path, f"ok{codes}.nii.gz", np.ones((3, 4, 5)), codes=codes))


def test_permission_denied_is_said_as_such(tmp_path, monkeypatch):
    path = save(tmp_path, "locked.nii.gz", np.ones((3, 4, 5)))

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(nifti, "open", denied, raising=False)
    with pytest.raises(BadInputError, match=r"cannot be read \(permission denied\)$"):
        load_volume(path)


def test_header_dimensions_beyond_memory_are_refused_before_reading(tmp_path):
    header = nib.Nifti1Header()
    header.set_data_shape((4000, 4000, 4000))
    header.set_data_dtype(np.float32)
    path = tmp_path / "huge.nii.gz"
    with gzip.open(path, "wb") as f:
        f.write(header.binaryblock + b"\0" * 4 + bytes(64))  # a header and almost no data
    with pytest.raises(BadInputError) as e:
        load_volume(str(path))
    assert "header dimensions (4000, 4000, 4000) need 238.4 GiB" in str(e.value)


def test_a_folder_is_not_a_file(tmp_path):
    with pytest.raises(BadInputError, match="is a folder, not a NIfTI file"):
        load_volume(str(tmp_path))


def test_labels_stored_with_a_scaling_are_rounded_or_named(tmp_path, caplog):
    from tfvae_datasets import real_data

    label = np.zeros((4, 4, 4))
    label[1, 1, 1], label[2, 2, 2], label[3, 3, 3] = 1, 2, 4
    img = nib.Nifti1Image(label, np.eye(4))
    path = str(tmp_path / "seg.nii.gz")
    nib.save(img, path, dtype=np.uint16)  # float labels on integer storage: a scl_slope
    read, _ = load_volume(path)
    two = read[2, 2, 2]
    assert two != 2.0 and abs(two - 2.0) < 1e-3  # as nibabel reads it back: 2.0000305
    with caplog.at_level("WARNING"):
        out = real_data.check_labels(path, read, (0, 1, 2, 4))
    assert set(np.unique(out)) == {0, 1, 2, 4} and "rounded" in caplog.text
    with pytest.raises(BadInputError) as e:
        real_data.check_labels(path, label + 0.3 * (label > 0), (0, 1, 2, 4))
    assert "non-integer values (1.3, 2.3, 4.3;" in str(e.value) and "scl_slope" in str(e.value)


def ixi_like_head(seed=200, voxel_mm=4.0):
    """An IXI-style T2 head that was never skull-stripped: skull, scalp and a noisy, non-zero background."""
    from scipy import ndimage

    from tfvae_datasets.brain_phantom import phantom

    s = phantom.synthesize_subject(seed, tumours=False, voxel_mm=voxel_mm)
    pad = [((60 - n) // 2, 60 - n - (60 - n) // 2) for n in s.image.shape[:2]] + [(2, 2)]
    image, brain = np.pad(s.image, pad), np.pad(s.brain_mask, pad)
    skull = ndimage.binary_dilation(brain, iterations=2) & ~brain
    scalp = ndimage.binary_dilation(brain, iterations=4) & ~brain & ~skull
    rng = np.random.default_rng(seed)
    head = image + 40 * skull + 180 * scalp
    head = np.sqrt((head + rng.normal(0, 6, head.shape)) ** 2 + rng.normal(0, 6, head.shape) ** 2)
    return head.astype(np.float32), brain, s.affine


def test_a_head_that_was_not_skull_stripped_is_refused_with_the_remedy():
    from tfvae.data import preprocessing

    head, brain, affine = ixi_like_head()
    with pytest.raises(preprocessing.PreprocessingError) as e:
        preprocessing.volume_to_slices(head, affine)
    assert "does not look skull-stripped" in str(e.value) and "brain mask" in str(e.value)
    preprocessing.volume_to_slices(head, affine, mask=brain)  # with its brain mask it is scored
    # a skull-stripped brain cropped tight to its bounding box touches the borders but is accepted
    stripped = np.where(brain, head, 0)
    x, y, z = (np.flatnonzero(brain.any(axis=tuple(a for a in range(3) if a != k))) for k in range(3))
    preprocessing.volume_to_slices(stripped[x[0]:x[-1] + 1, y[0]:y[-1] + 1, z[0]:z[-1] + 1], affine)


def junk_beside(folder, scan_name):
    """What operating systems and tfvae leave beside a scan: none of it is a scan."""
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / ("._" + scan_name)).write_bytes(b"\0\5\26\7AppleDouble")  # macOS resource fork, .nii.gz name
    (folder / "Thumbs.db").write_bytes(b"\xd0\xcf")
    (folder / "scan_tfvae_score.nii.gz").write_bytes(b"not read")
    (folder / "__MACOSX").mkdir()
    (folder / "__MACOSX" / scan_name).write_bytes(b"\0\5\26\7")


def test_one_filter_serves_localize_and_every_builder(tmp_path):
    from etils import epath

    from tfvae.data.scans import scan_files
    from tfvae_datasets.brats import brats_dataset_builder
    from tfvae_datasets.nifti_folder import nifti_folder_dataset_builder

    scans = tmp_path / "scans"
    scans.mkdir()
    save(scans, "patient1_t2.nii.gz", np.ones((3, 4, 5)))
    junk_beside(scans, "patient1_t2.nii.gz")
    assert scan_files([str(scans)]) == [str(scans / "patient1_t2.nii.gz")]
    assert [i for i, _ in nifti_folder_dataset_builder.find_scans(epath.Path(scans))] == ["patient1_t2"]
    brats = tmp_path / "brats" / "BraTS2021_00001"
    brats.mkdir(parents=True)
    for kind in ("t2", "seg"):
        save(brats, f"BraTS2021_00001_{kind}.nii.gz", np.ones((3, 4, 5)))
    junk_beside(brats, "BraTS2021_00001_t2.nii.gz")
    (tmp_path / "brats" / "__MACOSX" / "BraTS2021_00001").mkdir(parents=True)
    (tmp_path / "brats" / "__MACOSX" / "BraTS2021_00001" / "._BraTS2021_00001_t2.nii.gz").write_bytes(b"\0")
    cases = brats_dataset_builder.find_cases(epath.Path(tmp_path / "brats"))
    assert [c.name for c in cases] == ["BraTS2021_00001"] and cases[0].parent.name == "brats"
    assert set(brats_dataset_builder._nifti_stems(epath.Path(brats))) == {"BraTS2021_00001_t2",
                                                                           "BraTS2021_00001_seg"}


def test_a_folder_of_dicom_files_is_named_with_how_to_convert(tmp_path):
    from tfvae.data.scans import scan_files

    series = tmp_path / "series"
    series.mkdir()
    for i in range(3):
        (series / f"IM_{i:04d}").write_bytes(dicom_bytes())
    with pytest.raises(ValueError) as e:
        scan_files([str(series)])
    assert "holds DICOM files (3, e.g. IM_0000) and no NIfTI scan" in str(e.value) and "dcm2niix" in str(e.value)
