"""nifti_folder built through TFDS: TFDS's own builder test on the checked-in dummy_data/, and
builds from fabricated folders: healthy scans split by file, segmented scans for test.

``dummy_data/`` is the manual folder of ``NiftiFolderTest``: ``IXI000-T2`` (with ``_mask``),
``IXI001-T2``, ``IXI002-T2`` and ``lesions/case0`` (with ``_seg``), 24x28x20 voxels of 6 mm, 16
kept slices each; written once by ``testing_trees.DUMMY_DATA["nifti_folder"]``:

    python -m tfvae_datasets.testing_trees nifti_folder
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from tfvae_datasets import real_data  # noqa: E402
from tfvae_datasets import testing_trees as tt  # noqa: E402
from tfvae_datasets.nifti_folder import nifti_folder_dataset_builder as nf  # noqa: E402


class NiftiFolderTest(tfds.testing.DatasetBuilderTestCase):
    """TFDS's standard checks of the ``default`` config, built from dummy_data/ (the manual folder):
    2 healthy scans train, 1 validates (10% of 3, at least one), the segmented one tests; 16 slices each."""

    DATASET_CLASS = nf.Builder
    SPLITS = {"train": 32, "validation": 16, "test": 16}


def test_dummy_data_is_what_testing_trees_writes(tmp_path):
    tt.assert_same_niftis(tt.dummy_data_dir("nifti_folder"), tt.write_dummy_data("nifti_folder", tmp_path))


def test_healthy_scans_train_and_segmented_scans_test(tmp_path):
    src = tt.nifti_folder_tree(str(tmp_path / "ixi"), healthy=4, with_seg=2)
    before = tt.file_bytes(src)
    builder = tt.build(nf.Builder, src, tmp_path / "tfds", validation_fraction=0.25)
    assert set(builder.info.splits) == {"train", "validation", "test"}
    train, validation = tt.volume_ids(builder, "train"), tt.volume_ids(builder, "validation")
    assert len(train) == 3 and len(validation) == 1
    assert sorted(train + validation) == [f"IXI{i:03d}-T2" for i in range(4)]
    assert tt.volume_ids(builder, "test") == ["lesions/case0", "lesions/case1"]
    labels = np.concatenate([ex["label"].ravel() for ex in tt.examples(builder, "test")])
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 4}
    assert all(not ex["label"].any() for ex in tt.examples(builder, "train"))
    keys = [(ex["volume_id"].decode(), int(ex["slice_index"])) for ex in tt.examples(builder, "test")]
    assert keys == sorted(keys)
    assert tt.file_bytes(src) == before


def test_healthy_only_folder_declares_no_test_split_and_folder_field(tmp_path):
    src = tt.nifti_folder_tree(str(tmp_path / "ixi"), healthy=3, with_seg=0)
    # the config's `folder` field wins over the manual folder (which does not even exist here)
    builder = tt.build(nf.Builder, tmp_path / "nowhere", tmp_path / "tfds", folder=src)
    assert set(builder.info.splits) == {"train", "validation"}


def test_unknown_label_and_empty_folder(tmp_path):
    src = tt.nifti_folder_tree(str(tmp_path / "ixi"), healthy=2, with_seg=1)
    seg = os.path.join(src, "lesions", "case0_seg.nii.gz")
    _, _, label = tt.brain(seed=20, tumour=True)
    label[label == 4] = 9
    tt.save(seg, label)
    with pytest.raises(real_data.BadInputError) as err:
        tt.build(nf.Builder, src, tmp_path / "tfds")
    assert str(err.value) == f"{seg}: unknown label value(s) [9] (expected [0, 1, 2, 3, 4])"
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("no scans")
    with pytest.raises(real_data.BadInputError, match="empty: no NIfTI scans"):
        tt.build(nf.Builder, tmp_path / "empty", tmp_path / "tfds")


def test_two_files_of_one_case_are_an_error_naming_both(tmp_path):
    import nibabel as nib
    from etils import epath

    from tfvae_datasets.nifti_folder.nifti_folder_dataset_builder import find_scans

    src = tt.nifti_folder_tree(str(tmp_path / "scans"), healthy=2, with_seg=1)
    gz = os.path.join(src, "IXI001-T2.nii.gz")
    nib.save(nib.load(gz), os.path.join(src, "IXI001-T2.nii"))  # the same case, uncompressed beside it
    with pytest.raises(real_data.BadInputError) as err:
        find_scans(epath.Path(src))
    message = str(err.value)
    assert message.startswith(os.path.join(src, "IXI001-T2.nii: ")) and gz in message and "\n" not in message


def test_an_unreadable_subfolder_is_one_line(tmp_path, monkeypatch):
    from etils import epath

    from tfvae_datasets.nifti_folder.nifti_folder_dataset_builder import find_scans

    src = tt.nifti_folder_tree(str(tmp_path / "scans"), healthy=2, with_seg=1)
    real = type(epath.Path(src)).iterdir

    def iterdir(self):
        if self.name == "lesions":
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(type(epath.Path(src)), "iterdir", iterdir)
    with pytest.raises(real_data.BadInputError, match=r"lesions: cannot be read \(permission denied\)"):
        find_scans(epath.Path(src))


def test_heads_that_were_not_skull_stripped_stop_the_build_naming_the_file(tmp_path):
    """IXI ships T2 heads without brain masks: a builder must not train a model on skull and background."""
    import nibabel as nib

    src = tmp_path / "ixi"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):  # a "brain" in a noisy, non-zero background, as raw IXI heads are
        head = np.sqrt((rng.normal(0, 6, (24, 28, 20)) + 100) ** 2 + rng.normal(0, 6, (24, 28, 20)) ** 2)
        nib.save(nib.Nifti1Image(head.astype(np.float32), np.diag([6.0, 6.0, 6.0, 1.0])), str(src / f"IXI00{i}-T2.nii.gz"))
    with pytest.raises(real_data.BadInputError) as e:
        tt.build(nf.Builder, str(src), tmp_path / "tfds")
    assert "IXI00" in str(e.value) and "does not look skull-stripped" in str(e.value) and "\n" not in str(e.value)
    assert not os.path.isdir(tmp_path / "tfds" / "nifti_folder" / "default")  # nothing built
