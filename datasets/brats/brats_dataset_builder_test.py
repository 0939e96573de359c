"""brats: TFDS's own builder test on the checked-in dummy_data/ (per config); every release layout
built through TFDS from fabricated trees, orientation, labels, modalities, and the one-line errors
on bad input (shared with the other real-data builders).

``dummy_data/`` is the manual folder of the ``Brats*Test`` classes: two cases under release
folders, ``BraTS2021_00000`` (2021 names) and ``BraTS-GLI-00001-000`` (2023+ names, label 3
enhancing), each with all four modalities and a segmentation, 24x28x20 voxels of 6 mm, 16 kept
slices each; written once by ``testing_trees.DUMMY_DATA["brats"]``:

    python -m tfvae_datasets.testing_trees brats
"""

import gzip
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from etils import epath  # noqa: E402

from tfvae_datasets import real_data  # noqa: E402
from tfvae_datasets import testing_trees as tt  # noqa: E402
from tfvae_datasets.brats import brats_dataset_builder as brats  # noqa: E402

Builder = brats.Builder


class BratsTest(tfds.testing.DatasetBuilderTestCase):
    """TFDS's standard checks of the ``default`` (T2) config, built from dummy_data/ (the manual
    folder): one ``test`` split, 2 cases of 16 slices."""

    DATASET_CLASS = brats.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["default"]
    SPLITS = {"test": 32}


class BratsFlairTest(BratsTest):
    BUILDER_CONFIG_NAMES_TO_TEST = ["flair"]


class BratsT1Test(BratsTest):
    BUILDER_CONFIG_NAMES_TO_TEST = ["t1"]


class BratsT1ceTest(BratsTest):
    BUILDER_CONFIG_NAMES_TO_TEST = ["t1ce"]


def test_dummy_data_is_what_testing_trees_writes(tmp_path):
    tt.assert_same_niftis(tt.dummy_data_dir("brats"), tt.write_dummy_data("brats", tmp_path))


def _labels(builder):
    return set(np.unique(np.concatenate([ex["label"].ravel() for ex in tt.examples(builder, "test")])).tolist())


@pytest.mark.parametrize("make, expected, releases", [
    (tt.brats2018_tree, ["Brats18_CBICA_AAB_1", "Brats18_TCIA01_131_1", "Brats18_TCIA09_141_1"], {"2018"}),
    (lambda root: tt.brats2018_tree(root, "BraTS19"),
     ["BraTS19_CBICA_AAB_1", "BraTS19_TCIA01_131_1", "BraTS19_TCIA09_141_1"], {"2019"}),
    (tt.brats2020_tree, ["BraTS20_Training_001", "BraTS20_Training_002", "BraTS20_Training_355"], {"2020"}),
    (tt.brats2021_tree, ["BraTS2021_00000", "BraTS2021_00002"], {"2021"}),
    (tt.brats2023_tree, ["BraTS-GLI-00000-000", "BraTS-GLI-00002-000"], {"2023+"}),
])
def test_each_release_layout_builds_with_labels_in_the_2018_convention(tmp_path, make, expected, releases):
    src = tmp_path / "MICCAI_BraTS_Training"  # an extra level above the cases, as the releases unpack
    make(str(src))
    before = tt.file_bytes(src)
    builder = tt.build(Builder, src, tmp_path / "tfds")
    assert list(builder.info.splits) == ["test"]
    assert tt.volume_ids(builder, "test") == expected
    assert {brats.layout_of(v) for v in expected} == releases
    reread = Builder(config=builder.builder_config, data_dir=str(tmp_path / "tfds"))  # from disk, as a run reads it
    assert reread.info.metadata["releases"] == sorted(releases)  # what decides the comparison with the paper
    assert _labels(builder) == {0, 1, 2, 4}  # 2023's 3 (enhancing) is stored as 4
    assert builder.info.splits["test"].num_examples == sum(
        len(set(int(ex["slice_index"]) for ex in tt.examples(builder, "test") if ex["volume_id"].decode() == v))
        for v in expected)
    assert tt.file_bytes(src) == before  # the user's files are never changed


def test_slices_are_stored_volume_by_volume_in_order(tmp_path):
    tt.brats2021_tree(str(tmp_path / "src"))
    builder = tt.build(Builder, tmp_path / "src", tmp_path / "tfds")
    keys = [(ex["volume_id"].decode(), int(ex["slice_index"])) for ex in tt.examples(builder, "test")]
    assert keys == sorted(keys) and len({v for v, _ in keys}) == 2


def test_lps_and_ras_copies_of_one_scan_give_the_same_slices(tmp_path):
    for case, orientation in (("BraTS2021_00001", "RAS"), ("BraTS2021_00002", "LPS")):
        tt.brats_case(str(tmp_path / "src"), case, seed=5, orientation=orientation)
    ras, lps = nib.load(str(tmp_path / "src/BraTS2021_00001/BraTS2021_00001_t2.nii.gz")), \
        nib.load(str(tmp_path / "src/BraTS2021_00002/BraTS2021_00002_t2.nii.gz"))
    assert nib.aff2axcodes(ras.affine) == ("R", "A", "S") and nib.aff2axcodes(lps.affine) == ("L", "P", "S")
    assert not np.array_equal(ras.get_fdata(), lps.get_fdata())  # stored differently
    builder = tt.build(Builder, tmp_path / "src", tmp_path / "tfds")
    by_volume = {}
    for ex in tt.examples(builder, "test"):
        by_volume.setdefault(ex["volume_id"].decode(), []).append(ex)
    a, b = by_volume["BraTS2021_00001"], by_volume["BraTS2021_00002"]
    assert [int(e["slice_index"]) for e in a] == [int(e["slice_index"]) for e in b]
    for ea, eb in zip(a, b):
        np.testing.assert_allclose(ea["image"], eb["image"], atol=1e-5)
        np.testing.assert_array_equal(ea["label"], eb["label"])
        np.testing.assert_array_equal(ea["brain_mask"], eb["brain_mask"])
    assert any(e["label"].any() for e in a)


def test_the_modality_is_selectable_and_2023_names_map(tmp_path):
    tt.brats2023_tree(str(tmp_path / "src"))
    images = {}
    for config in ("default", "flair", "t1", "t1ce"):
        builder = tt.build(Builder, tmp_path / "src", tmp_path / "tfds", config)
        images[config] = np.stack([ex["image"] for ex in tt.examples(builder, "test")])
    configs = list(images)
    for i, first in enumerate(configs):
        for second in configs[i + 1:]:
            assert not np.allclose(images[first], images[second]), (first, second)
    # t2w (written first, exponent 1 in testing_trees) is what the default config reads
    image, _, label = tt.brain(seed=0, tumour=True, enhancing=3)
    sliced = real_data.slices_of("x", image ** (1 + 0.2 * 2), tt.affine(), label=label,
                                 cfg=brats.BratsConfig(name="x", image_size=32))
    np.testing.assert_allclose(images["default"][: len(sliced.image)], sliced.image, atol=1e-5)


# ---- bad input: one line naming the file, for every builder (they share real_data.py) ----

def _case(tmp_path, **kwargs):
    return tt.brats_case(str(tmp_path / "src"), "BraTS2021_00007", seed=7, **kwargs)


def _write(path, data, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(data), tt.affine() if affine is None else affine), str(path))


def _corrupt(case):
    path = os.path.join(case, f"{os.path.basename(case)}_t2.nii.gz")
    with open(path, "wb") as f:
        f.write(b"this is not a NIfTI file at all")
    return path


def _truncated(case):
    path = os.path.join(case, f"{os.path.basename(case)}_t2.nii.gz")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    return path


def _missing_modality(case):
    os.remove(os.path.join(case, f"{os.path.basename(case)}_t2.nii.gz"))
    return case


def _missing_seg(case):
    os.remove(os.path.join(case, f"{os.path.basename(case)}_seg.nii.gz"))
    return case


def _seg_shape(case):
    path = os.path.join(case, f"{os.path.basename(case)}_seg.nii.gz")
    _write(path, np.zeros((24, 28, 18), np.uint8))
    return path


def _seg_affine(case):
    path = os.path.join(case, f"{os.path.basename(case)}_seg.nii.gz")
    seg = nib.load(path)
    _write(path, np.asarray(seg.dataobj), tt.affine(voxel_mm=5.0))
    return path


def _four_d(case):
    path = os.path.join(case, f"{os.path.basename(case)}_t2.nii.gz")
    _write(path, np.ones(tt.SHAPE + (2,), np.float32))
    return path


def _two_d(case):
    path = os.path.join(case, f"{os.path.basename(case)}_t2.nii.gz")
    _write(path, np.ones((24, 28), np.float32))
    return path


def _nan(case):
    path = os.path.join(case, f"{os.path.basename(case)}_t2.nii.gz")
    image = nib.load(path).get_fdata().astype(np.float32)
    image[10, 10, 10] = np.nan
    _write(path, image)
    return path


def _empty_brain(case):
    path = os.path.join(case, f"{os.path.basename(case)}_t2.nii.gz")
    _write(path, np.zeros(tt.SHAPE, np.float32))
    return path


def _unknown_label(case):
    path = os.path.join(case, f"{os.path.basename(case)}_seg.nii.gz")
    seg = np.asarray(nib.load(path).dataobj).copy()
    seg[12, 14, 10] = 7
    _write(path, seg)
    return path


def _bad_datatype(case):
    import struct

    path = os.path.join(case, f"{os.path.basename(case)}_t2.nii.gz")
    raw = bytearray(gzip.decompress(open(path, "rb").read()))
    raw[70:72] = struct.pack("<h", 999)  # the header's datatype: no such code
    with open(path, "wb") as f:
        f.write(gzip.compress(bytes(raw)))
    return path


BAD = {
    "corrupt": (_corrupt, "cannot read NIfTI"),
    "bad datatype": (_bad_datatype, "invalid NIfTI header"),
    "truncated": (_truncated, "cannot read NIfTI"),
    "missing modality": (_missing_modality, "missing modality t2"),
    "missing segmentation": (_missing_seg, "missing segmentation"),
    "seg shape": (_seg_shape, "shape (24, 28, 18) does not match image shape (24, 28, 20)"),
    "seg affine": (_seg_affine, "affine differs"),
    "4D": (_four_d, "is 4D"),
    "2D": (_two_d, "is 2D"),
    "NaN": (_nan, "1 NaN or infinite voxels"),
    "empty brain": (_empty_brain, "empty brain"),
    "unknown label": (_unknown_label, "unknown label value(s) [7]"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_input_stops_the_build_with_one_line_naming_the_file(tmp_path, kind):
    spoil, problem = BAD[kind]
    path = spoil(_case(tmp_path))
    before = tt.file_bytes(tmp_path / "src")
    with pytest.raises(real_data.BadInputError) as err:
        tt.build(Builder, tmp_path / "src", tmp_path / "tfds")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ") and problem in message, message
    assert tt.file_bytes(tmp_path / "src") == before


def test_an_infinite_voxel_is_refused_too(tmp_path):
    path = str(tmp_path / "inf.nii.gz")
    image = np.ones(tt.SHAPE, np.float32)
    image[0, 0, 0] = np.inf
    _write(path, image)
    with pytest.raises(real_data.BadInputError, match=r"inf\.nii\.gz: contains 1 NaN or infinite voxels"):
        real_data.load_volume(path)


def test_a_truncated_file_is_a_read_error_not_a_crash(tmp_path):
    path = str(tmp_path / "t.nii.gz")
    _write(path, np.ones(tt.SHAPE, np.float32))
    with gzip.open(path, "rb") as f:
        raw = f.read()
    with gzip.open(path, "wb") as f:
        f.write(raw[:1000])  # a valid gzip of a header with too little data behind it
    with pytest.raises(real_data.BadInputError, match="t.nii.gz: cannot read NIfTI"):
        real_data.load_volume(path)


def test_an_empty_folder_is_an_error(tmp_path):
    (tmp_path / "src" / "notes").mkdir(parents=True)  # not empty for TFDS, but holds no case
    with pytest.raises(real_data.BadInputError, match=r"src: no BraTS case folders found"):
        tt.build(Builder, tmp_path / "src", tmp_path / "tfds")


def test_skip_bad_skips_and_reports_the_bad_cases(tmp_path, capsys):
    tt.brats2021_tree(str(tmp_path / "src"))
    _nan(_case(tmp_path))
    _missing_seg(tt.brats_case(str(tmp_path / "src"), "BraTS2021_00009", seed=9))
    builder = tt.build(Builder, tmp_path / "src", tmp_path / "tfds", skip_bad=True)
    assert tt.volume_ids(builder, "test") == ["BraTS2021_00000", "BraTS2021_00002"]
    err = capsys.readouterr().err
    assert "skipped 2 bad case(s) of split 'test'" in err
    assert "BraTS2021_00007: " in err and "NaN" in err and "BraTS2021_00009: " in err and "missing segmentation" in err
    assert [s["case"] for s in builder.info.metadata["skipped"]["test"]] == ["BraTS2021_00007", "BraTS2021_00009"]


def test_a_split_left_empty_by_skipping_is_an_error(tmp_path):
    _nan(_case(tmp_path))
    with pytest.raises(real_data.BadInputError, match=r"split 'test' of brats would be empty \(1 bad case"):
        tt.build(Builder, tmp_path / "src", tmp_path / "tfds", skip_bad=True)


def test_a_scan_stored_twice_in_a_case_is_an_error_naming_both(tmp_path):
    import shutil

    case = tmp_path / "Brats18_2013_2_1"
    case.mkdir()
    for name in ("t2", "seg"):
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(case / f"{case.name}_{name}.nii.gz"))
    assert brats.case_file(epath.Path(case), "t2").name == f"{case.name}_t2.nii.gz"
    shutil.copy(case / f"{case.name}_t2.nii.gz", case / f"{case.name}_t2.nii")
    with pytest.raises(real_data.BadInputError) as e:
        brats.case_file(epath.Path(case), "t2")
    message = str(e.value)
    assert f"{case.name}_t2.nii.gz: two files" in message and f"(also {case.name}_t2.nii)" in message
    assert "\n" not in message


def test_case_files_and_layouts():
    assert brats.layout_of("Brats18_2013_2_1") == "2018"
    assert brats.layout_of("BraTS-MEN-00004-000") == "2023+"
    assert brats.layout_of("subject1") == "unknown"


def _post_treatment_case(root, case, seed):
    """A BraTS 2024+ post-treatment case: 1 NETC, 2 SNFH, 3 ET and a resection cavity (4) beside the tumour."""
    import nibabel as nib

    case_dir = tt.brats_case(root, case, seed, modalities=tt.BRATS_2023_MODALITIES, sep="-", enhancing=3)
    seg_path = os.path.join(case_dir, f"{case}-seg.nii.gz")
    seg = nib.load(seg_path)
    label = np.asarray(seg.dataobj).copy()
    _, mask, _ = tt.brain(seed=seed, tumour=True)
    cavity = np.zeros_like(mask, bool)
    cavity[3:6, 12:16, 8:12] = True  # away from the tumour at the centre
    label[cavity & (mask > 0) & (label == 0)] = 4
    nib.save(nib.Nifti1Image(label, seg.affine), seg_path)
    return int((label == 4).sum())


def test_post_treatment_cavity_is_not_tumour_unless_configured_and_the_convention_is_said(tmp_path, capsys):
    src = str(tmp_path / "src")
    cavity_voxels = _post_treatment_case(src, "BraTS-GLI-02000-100", 0)
    tt.brats_case(src, "BraTS-GLI-00002-000", 1, modalities=tt.BRATS_2023_MODALITIES, sep="-", enhancing=3)
    assert cavity_voxels > 0
    builder = tt.build(brats.Builder, src, tmp_path / "tfds")
    assert _labels(builder) == {0, 1, 2, 4}  # enhancing (3) stored as 4, the cavity as background
    err = capsys.readouterr().err
    assert "2024+ post-treatment label convention" in err and "label 4 is the resection cavity, not tumour" in err
    assert "2023 label convention" in err
    counted = tt.build(brats.Builder, src, tmp_path / "tfds2", config="t2_cavity")
    assert _labels(counted) == {0, 1, 2, 4, brats.CAVITY_LABEL}
    assert brats.label_convention("BraTS2021_00000", [0, 1, 2, 4]) == "2018-2021"
    assert brats.label_convention("BraTS-GLI-00000-000", [0, 1, 2, 3]) == "2023"


def test_a_label_3_in_a_2018_to_2021_case_is_an_error_naming_it(tmp_path):
    src = str(tmp_path / "src")
    tt.brats_case(src, "BraTS2021_00000", 0, enhancing=3)  # the 2023 convention in a 2021 case
    with pytest.raises(real_data.BadInputError, match=r"BraTS2021_00000_seg\.nii\.gz: unknown label value\(s\) \[3\]"):
        tt.build(brats.Builder, src, tmp_path / "tfds")


def test_raw_cases_are_preprocessed_and_their_segmentation_follows_into_template_space(tmp_path):
    """``preprocess``: a case's scan preprocessed (coarse here), its segmentation pulled into template
    space by nearest neighbour through the recorded transform (issue 32)."""
    src = tmp_path / "src"
    case = "BraTS2021_00000"
    truth = tt.raw_head(src / case / f"{case}_t2.nii.gz", 2, tumours=True, seg_path=src / case / f"{case}_seg.nii.gz")
    with pytest.raises(real_data.BadInputError, match="does not look skull-stripped"):  # a raw head, as it is
        tt.build(brats.Builder, src, tmp_path / "plain")
    builder = tt.build(brats.Builder, src, tmp_path / "tfds", **tt.coarse_preprocessing(tmp_path / "cache",
                                                                                        preprocess=True))
    assert _labels(builder) == set(np.unique(truth.label).tolist())
    examples = tt.examples(builder, "test")
    for ex in examples:
        np.testing.assert_allclose(np.diag(ex["source_affine"])[:3], 4.0, atol=1e-4)  # template space, 4 mm
    # the tumour (bright in T2) is where the labels say: brighter than the rest of the brain
    image = np.concatenate([ex["image"].ravel() for ex in examples])
    label = np.concatenate([ex["label"].ravel() for ex in examples])
    brain = np.concatenate([ex["brain_mask"].ravel() for ex in examples]) > 0
    assert image[label > 0].mean() > image[brain & (label == 0)].mean() + 0.5


def test_beam_local_runner_builds_the_same_test_split(tmp_path):
    """TFDS's Apache Beam support (Beam's local DirectRunner): the same examples in the same order."""
    pytest.importorskip("apache_beam")
    import dataclasses

    src = tt.brats2021_tree(str(tmp_path / "src"))
    cfg = dataclasses.replace(brats.Builder.builder_configs["default"], name="beam_test", image_size=32)
    built = {}
    for name, runner in (("plain", None), ("beam", "DirectRunner")):
        built[name] = brats.Builder(config=cfg, data_dir=str(tmp_path / name))
        built[name].download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=src,
                                                                                      beam_runner=runner))
    ours, theirs = tt.examples(built["beam"], "test"), tt.examples(built["plain"], "test")
    assert [(ex["volume_id"], int(ex["slice_index"])) for ex in ours] == \
        [(ex["volume_id"], int(ex["slice_index"])) for ex in theirs] and ours
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a["label"], b["label"])
        np.testing.assert_array_equal(a["image"], b["image"])
    assert built["beam"].info.metadata["releases"] == ["2021"]
