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


# --- issue 31: label maps are never scans; they are paired with their scans, or refused in one line -----
def _scan_and_label(seed, tumour=True):
    image, mask, label = tt.brain(seed=seed, tumour=tumour)
    return image, mask, label


def test_the_nnunet_layout_pairs_labels_tr_with_images_tr_and_never_takes_a_label_as_a_scan(tmp_path):
    """Field case 30: imagesTr/<case>_0000 + labelsTr/<case> (nnU-Net / the Decathlon): before, the
    label maps were trained on as healthy scans and the cases were healthy too."""
    src = tmp_path / "data"
    for i in range(3):
        image, _, _ = _scan_and_label(i, tumour=False)
        tt.save(src / "healthy" / f"IXI{i:03d}-T2.nii.gz", image)
    for n in (1, 2):
        image, _, label = _scan_and_label(10 + n)
        tt.save(src / "Dataset001_BraTS" / "imagesTr" / f"BRATS_{n:03d}_0000.nii.gz", image)
        tt.save(src / "Dataset001_BraTS" / "labelsTr" / f"BRATS_{n:03d}.nii.gz", label)
    builder = tt.build(nf.Builder, src, tmp_path / "tfds")
    assert tt.volume_ids(builder, "test") == ["Dataset001_BraTS/imagesTr/BRATS_001_0000",
                                              "Dataset001_BraTS/imagesTr/BRATS_002_0000"]
    healthy = tt.volume_ids(builder, "train") + tt.volume_ids(builder, "validation")
    assert sorted(healthy) == ["healthy/IXI000-T2", "healthy/IXI001-T2", "healthy/IXI002-T2"]
    labels = np.concatenate([ex["label"].ravel() for ex in tt.examples(builder, "test")])
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 4}


def test_tissue_label_maps_beside_healthy_scans_are_refused_in_one_line(tmp_path):
    """Healthy scans shipped with their tissue segmentations (1 CSF, 2 GM, 3 WM) in labelsTr/: neither
    trained on as scans nor taken as lesions."""
    src = tmp_path / "Dataset002_IXI"
    for i in range(3):
        image, mask, _ = _scan_and_label(i, tumour=False)
        tissue = (np.digitize(image, [0.5, 90, 130]) * mask).astype(np.uint8)
        tt.save(src / "imagesTr" / f"IXI{i:03d}_0000.nii.gz", image)
        tt.save(src / "labelsTr" / f"IXI{i:03d}.nii.gz", tissue)
    with pytest.raises(real_data.BadInputError) as e:
        tt.build(nf.Builder, src, tmp_path / "tfds")
    message = str(e.value)
    assert message.startswith(f"{src / 'labelsTr' / 'IXI000.nii.gz'}: labels 100% of the brain of "
                              f"{src / 'imagesTr' / 'IXI000_0000.nii.gz'}: a tissue or anatomy segmentation, not "
                              "lesions") and "\n" not in message
    assert message.endswith("to train on the scan as healthy, move labelsTr/ out of the data folder")
    import shutil

    shutil.move(str(src / "labelsTr"), str(tmp_path / "labelsTr"))  # as the message says: then they train
    builder = tt.build(nf.Builder, src, tmp_path / "tfds2")
    assert sorted(tt.volume_ids(builder, "train") + tt.volume_ids(builder, "validation")) == [
        f"imagesTr/IXI{i:03d}_0000" for i in range(3)]


def _mslub(root, patients=2):
    for n in range(1, patients + 1):
        image, _, label = _scan_and_label(20 + n)
        folder = root / f"patient{n:02d}"
        tt.save(folder / "T2W.nii.gz", image)
        tt.save(folder / "FLAIR.nii.gz", image * 0.6)
        tt.save(folder / "T1W.nii.gz", image * 0.4)
        tt.save(folder / "consensus_gt.nii.gz", (label > 0).astype(np.uint8))
    return root


def test_a_label_map_beside_several_modalities_needs_the_modality_config(tmp_path):
    """MSLUB as distributed: patientNN/ with FLAIR, T1W, T2W and consensus_gt (field case 30; before:
    consensus_gt read as a scan, "brain voxels all have the same intensity")."""
    src = _mslub(tmp_path / "MSLUB")
    gt = src / "patient01" / "consensus_gt.nii.gz"
    with pytest.raises(real_data.BadInputError) as e:
        tt.build(nf.Builder, src, tmp_path / "tfds")
    assert str(e.value) == (f"{gt}: a label map (by its name) beside 3 scans (FLAIR.nii.gz, T1W.nii.gz, T2W.nii.gz): "
                            "which one it labels cannot be told; choose the modality with the config t2, flair, t1 "
                            "or t1ce (data.config, or data.test_config for test data), or name it <scan>_seg.nii.gz "
                            "after its scan and move the others out")
    builder = tt.build(nf.Builder, src, tmp_path / "tfds_t2", config="t2")
    assert set(builder.info.splits) == {"test"}  # the other modalities of the cases are not healthy scans
    assert tt.volume_ids(builder, "test") == ["patient01/T2W", "patient02/T2W"]
    assert any(ex["label"].any() for ex in tt.examples(builder, "test"))
    flair = tt.build(nf.Builder, src, tmp_path / "tfds_flair", config="flair")
    assert tt.volume_ids(flair, "test") == ["patient01/FLAIR", "patient02/FLAIR"]


def test_a_label_map_named_for_no_scan_labels_the_one_scan_beside_it(tmp_path):
    src = tt.nifti_folder_tree(str(tmp_path / "scans"), healthy=3, with_seg=0)
    image, _, label = _scan_and_label(30)
    tt.save(os.path.join(src, "sub-01", "sub-01_T2w.nii.gz"), image)
    tt.save(os.path.join(src, "sub-01", "lesion_gt.nii.gz"), label)
    builder = tt.build(nf.Builder, src, tmp_path / "tfds")
    assert tt.volume_ids(builder, "test") == ["sub-01/sub-01_T2w"]
    assert "sub-01/lesion_gt" not in tt.volume_ids(builder, "train") + tt.volume_ids(builder, "validation")


def test_a_label_map_found_by_its_content_or_paired_with_nothing_is_refused(tmp_path):
    src = tt.nifti_folder_tree(str(tmp_path / "scans"), healthy=3, with_seg=0)
    _, _, label = _scan_and_label(40)
    hidden = os.path.join(src, "IXI009-T2.nii.gz")  # a label map under a scan's name
    tt.save(hidden, label)
    with pytest.raises(real_data.BadInputError) as e:
        tt.build(nf.Builder, src, tmp_path / "tfds")
    assert str(e.value) == (f"{hidden}: holds only the integer values 0, 1, 2, 4: a label map or mask, not a scan; "
                            "name it <scan>_seg.nii.gz after its scan (or put it in a labels/ folder), or move it out "
                            "of the folder")
    os.remove(hidden)
    orphan = os.path.join(src, "labels", "IXI001-T2.nii.gz")  # a labels/ folder with no images/ beside it
    tt.save(orphan, label)
    with pytest.raises(real_data.BadInputError, match=r"IXI001-T2.nii.gz: a label map \(in the label folder labels/\) "
                                                      r"that no scan is paired with"):
        nf.find_cases(__import__("etils").epath.Path(src))


def test_a_case_of_several_nnunet_channels_is_read_from_the_channel_of_the_config_modality(tmp_path):
    import json

    src = tmp_path / "Dataset003"
    image, _, label = _scan_and_label(50)
    for channel, scale in (("0000", 0.6), ("0001", 1.0)):
        tt.save(src / "imagesTr" / f"case_{channel}.nii.gz", image * scale)
    tt.save(src / "labelsTr" / "case.nii.gz", label)
    (src / "dataset.json").write_text(json.dumps({"channel_names": {"0": "FLAIR", "1": "T2"}, "labels": {}}))
    with pytest.raises(real_data.BadInputError, match=r"labels a case of 2 channels \(case_0000 \(FLAIR\), case_0001 "
                                                      r"\(T2\)\) and nifti_folder reads one scan per case"):
        nf.find_cases(__import__("etils").epath.Path(src))
    cases = nf.find_cases(__import__("etils").epath.Path(src), "t2")
    assert [(c.volume_id, c.seg.name) for c in cases] == [("imagesTr/case_0001", "case.nii.gz")]  # FLAIR: not healthy


def test_modality_names_read_flair_before_t2():
    assert [nf.modality_of(n) for n in ("T2W", "t2_tirm_tra_dark-fluid", "AX_FLAIR_T2", "T1W", "t1gd", "PD")] == \
        ["t2", "flair", "flair", "t1", "t1ce", None]
