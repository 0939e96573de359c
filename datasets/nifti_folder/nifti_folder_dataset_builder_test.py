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


# --- issue 32: raw heads preprocessed before slicing (the config field preprocess, data.preprocess) -----
def _raw_folder(src):
    """Two healthy raw heads and one with tumours and its label map, coarse (4 mm voxels)."""
    tt.raw_head(src / "sub-01_T2w.nii.gz", 0)
    tt.raw_head(src / "sub-02_T2w.nii.gz", 1)
    return tt.raw_head(src / "lesions" / "case0.nii.gz", 2, tumours=True, seg_path=src / "lesions" / "case0_seg.nii.gz")


def test_raw_heads_are_preprocessed_and_their_label_map_follows_into_template_space(tmp_path):
    from tfvae_datasets import raw_scans

    src = tmp_path / "raw"
    truth = _raw_folder(src)
    before = tt.file_bytes(src)
    with pytest.raises(real_data.BadInputError, match="does not look skull-stripped"):  # without: refused
        tt.build(nf.Builder, src, tmp_path / "plain")
    cache = tmp_path / "cache"
    builder = tt.build(nf.Builder, src, tmp_path / "tfds", validation_fraction=0.5,
                       **tt.coarse_preprocessing(cache, preprocess=True))
    assert sorted(tt.volume_ids(builder, "train") + tt.volume_ids(builder, "validation")) == ["sub-01_T2w",
                                                                                             "sub-02_T2w"]
    assert tt.volume_ids(builder, "test") == ["lesions/case0"]
    test = tt.examples(builder, "test")
    labels = np.concatenate([ex["label"].ravel() for ex in test])
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 4} and (labels > 0).sum() > 20
    for ex in test:  # sliced in template space (the coarse template's 4 mm grid, RAS+)
        np.testing.assert_allclose(np.diag(ex["source_affine"])[:3], 4.0, atol=1e-4)
    assert tt.file_bytes(src) == before  # the cache is elsewhere
    digest = raw_scans.settings_digest(raw_scans.settings_of(builder.builder_config, "nifti_folder"))
    assert sorted(os.listdir(cache / digest / "nifti_folder")) == [
        "lesions", *sorted(f"sub-0{i}_T2w{s}" for i in (1, 2) for s in ("_tfvae_brainmask.nii.gz",
                                                                          "_tfvae_preprocessed.nii.gz",
                                                                          "_tfvae_preprocessing.json"))]
    # the label map in template space lies where the phantom's tumour lies in its own (MNI-like)
    # space, which the template's is up to the registration's error; and inside the brain mask
    pre = raw_scans.Preprocessor("nifti_folder", builder.builder_config, root=cache / digest)
    loaded = pre.load("lesions/case0", src / "lesions" / "case0.nii.gz")
    label = loaded.label(truth.label)
    assert set(np.unique(label).tolist()) == set(np.unique(truth.label).tolist())
    assert (label > 0).sum() * 4.0 ** 3 == pytest.approx((truth.label > 0).sum() * abs(np.linalg.det(truth.affine)),
                                                         rel=0.25)
    assert loaded.mask[label > 0].mean() > 0.9

    def centroid(volume, affine):
        return (affine @ np.append(np.argwhere(volume > 0).mean(axis=0), 1.0))[:3]
    in_phantom = (truth.world_to_phantom @ np.append(centroid(truth.label, truth.affine), 1.0))[:3]
    assert np.linalg.norm(centroid(label, loaded.affine) - in_phantom) < 8.0  # two 4 mm voxels


def test_data_preprocess_builds_a_config_of_its_own(tmp_path, monkeypatch):
    """``data.preprocess``: ``<config>_preprocessed`` (nifti_folder, brats), refused for builders of
    preprocessed scans, nothing for ixi (always preprocessed). A rebuild (a scan added: built in a
    staging folder) preprocesses only the new scan: the cache is in the data folder's downloads/."""
    import dataclasses

    from tfvae import config as config_lib
    from tfvae.data import pipelines as data
    from tfvae.data import head_preprocessing as hp

    base = {**config_lib.defaults()["data"], "data_dir": str(tmp_path / "tfds"), "image_size": 32}
    b = data.builder({**base, "name": "nifti_folder", "preprocess": True})
    assert b.builder_config.name == "default_32px_preprocessed" and b.builder_config.preprocess
    assert not data.builder({**base, "name": "nifti_folder"}).builder_config.preprocess
    assert data.builder({**base, "name": "brats", "config": "flair", "preprocess": True}).builder_config.name == \
        "flair_32px_preprocessed"
    assert data.builder({**base, "name": "ixi", "preprocess": True}).builder_config.name == "default_32px"
    with pytest.raises(data.DataError, match=r"^data\.preprocess: hcp_t2 reads scans that are preprocessed"):
        data.builder({**base, "name": "hcp_t2", "preprocess": True})

    coarse = dict(tt.COARSE_PREPROCESSING)

    @dataclasses.dataclass(frozen=True)
    class CoarseSettings(hp.Settings):  # the registered config's settings (none given): coarse here
        resolution_mm: float = coarse["resolution_mm"]
        template_resolution_mm: float = coarse["template_resolution_mm"]
        n4_shrink: int = coarse["n4_shrink"]
        n4_iterations: tuple = coarse["n4_iterations"]
        registration_shrink: tuple = coarse["registration_shrink"]
        registration_smoothing_mm: tuple = coarse["registration_smoothing_mm"]
        registration_iterations: int = coarse["registration_iterations"]
        threads: int = 1
    monkeypatch.setattr(hp, "Settings", CoarseSettings)
    made = []
    real = hp.preprocess_scan

    def counted(scan, *args, **kwargs):
        made.append(os.path.basename(os.fspath(scan)))
        return real(scan, *args, **kwargs)
    monkeypatch.setattr(hp, "preprocess_scan", counted)
    src = tmp_path / "raw"
    tt.raw_head(src / "sub-01_T2w.nii.gz", 0)
    tt.raw_head(src / "sub-02_T2w.nii.gz", 1)
    config = {**base, "name": "nifti_folder", "preprocess": True, "manual_dir": str(src)}
    # in this process (counted, and with the coarse settings: workers would not see the patch)
    monkeypatch.setattr(nf.Builder.builder_configs["default"], "preprocess_workers", 1)
    lines = []
    data.prepare(config, log=lines.append)
    assert sorted(made) == ["sub-01_T2w.nii.gz", "sub-02_T2w.nii.gz"]
    tt.raw_head(src / "sub-03_T2w.nii.gz", 2)
    data.prepare(config, log=lines.append)
    assert "rebuilding nifti_folder/default_32px_preprocessed" in lines[-1]
    assert sorted(made) == ["sub-01_T2w.nii.gz", "sub-02_T2w.nii.gz", "sub-03_T2w.nii.gz"]  # only the new one
    assert os.path.isdir(tmp_path / "tfds" / "downloads" / "tfvae_preprocessed")


def test_beam_local_runner_builds_the_same_splits(tmp_path):
    """TFDS's Apache Beam support (Beam's local DirectRunner): the same examples, in the same order,
    in each of train, validation and test, as the build in this process."""
    pytest.importorskip("apache_beam")
    import dataclasses

    src = tt.nifti_folder_tree(str(tmp_path / "src"), healthy=3, with_seg=2)
    cfg = dataclasses.replace(nf.Builder.builder_configs["default"], name="beam_test", image_size=32,
                              validation_fraction=0.34)
    built = {}
    for name, runner in (("plain", None), ("beam", "DirectRunner")):
        built[name] = nf.Builder(config=cfg, data_dir=str(tmp_path / name))
        built[name].download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=src,
                                                                                      beam_runner=runner))
    assert set(built["beam"].info.splits) == {"train", "validation", "test"}
    for split in ("train", "validation", "test"):
        ours, theirs = tt.examples(built["beam"], split), tt.examples(built["plain"], split)
        assert [(ex["volume_id"], int(ex["slice_index"])) for ex in ours] == \
            [(ex["volume_id"], int(ex["slice_index"])) for ex in theirs] and ours
        for a, b in zip(ours, theirs):
            for key in ("image", "brain_mask", "label"):
                np.testing.assert_array_equal(a[key], b[key])
