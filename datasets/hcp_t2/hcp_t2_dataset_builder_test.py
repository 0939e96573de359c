"""hcp_t2 built through TFDS: TFDS's own builder test on the checked-in dummy_data/ (per config),
and builds from fabricated HCP trees: subject split, masks, MNI space, order.

``dummy_data/`` is the manual folder of ``HcpT2Test``: 3 subjects (100307, 100408, 101107) with
``T1w/`` and ``MNINonLinear/`` images and brain masks, 24x28x20 voxels of 6 mm, 16 kept slices
each; written once by ``testing_trees.DUMMY_DATA["hcp_t2"]``:

    python -m tfvae_datasets.testing_trees hcp_t2
"""

import os
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from tfvae_datasets import real_data  # noqa: E402
from tfvae_datasets import testing_trees as tt  # noqa: E402
from tfvae_datasets.hcp_t2 import hcp_t2_dataset_builder as hcp  # noqa: E402

SUBJECTS = ("100307", "100408", "101107", "102311", "103414", "105115")


class HcpT2Test(tfds.testing.DatasetBuilderTestCase):
    """TFDS's standard checks of the ``default`` config, built from dummy_data/ (the manual folder):
    2 train subjects and 1 validation subject (10% of 3, at least one), 16 slices each."""

    DATASET_CLASS = hcp.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["default"]
    SPLITS = {"train": 32, "validation": 16}


class HcpT2MniTest(HcpT2Test):
    """The same checks of the ``mni`` config (the MNINonLinear/ copies)."""

    BUILDER_CONFIG_NAMES_TO_TEST = ["mni"]


def test_dummy_data_is_what_testing_trees_writes(tmp_path):
    tt.assert_same_niftis(tt.dummy_data_dir("hcp_t2"), tt.write_dummy_data("hcp_t2", tmp_path))


def test_builds_train_and_validation_by_subject_in_order(tmp_path):
    src = tt.hcp_tree(str(tmp_path / "HCP_1200"), SUBJECTS)
    before = tt.file_bytes(src)
    builder = tt.build(hcp.Builder, src, tmp_path / "tfds", validation_fraction=0.34)
    assert set(builder.info.splits) == {"train", "validation"}
    train, validation = tt.volume_ids(builder, "train"), tt.volume_ids(builder, "validation")
    assert len(validation) == 2 and len(train) == 4 and sorted(train + validation) == list(SUBJECTS)
    for split in ("train", "validation"):
        keys = [(ex["volume_id"].decode(), int(ex["slice_index"])) for ex in tt.examples(builder, split)]
        assert keys == sorted(keys)
        for ex in tt.examples(builder, split):
            assert not ex["label"].any() and np.all(ex["image"][ex["brain_mask"] == 0] == 0)
    assert tt.file_bytes(src) == before
    # the split is seeded: another seed picks other validation subjects, the same seed the same ones
    assert real_data.validation_subset(SUBJECTS, 0.34, 0) == set(validation)
    assert any(real_data.validation_subset(SUBJECTS, 0.34, s) != set(validation) for s in range(1, 5))


def test_the_brain_mask_is_used_where_present(tmp_path):
    src = tt.hcp_tree(str(tmp_path / "a"), SUBJECTS[:2])
    # a mask smaller than the non-zero voxels: the stored brain masks must shrink
    image, mask, _ = tt.brain(seed=0)
    small = mask.copy()
    small[:, :, 10:] = 0
    tt.save(os.path.join(src, SUBJECTS[0], "T1w", "brainmask_fs.nii.gz"), small)
    with_mask = tt.build(hcp.Builder, src, tmp_path / "t1", validation_fraction=0.5)
    os.remove(os.path.join(src, SUBJECTS[0], "T1w", "brainmask_fs.nii.gz"))
    without = tt.build(hcp.Builder, src, tmp_path / "t2", validation_fraction=0.5)
    split = "train" if SUBJECTS[0] in tt.volume_ids(with_mask, "train") else "validation"

    def slices(b):
        return {int(ex["slice_index"]) for ex in tt.examples(b, split) if ex["volume_id"].decode() == SUBJECTS[0]}
    assert max(slices(with_mask)) < 10 < max(slices(without))


def test_mni_config_reads_the_mninonlinear_copies(tmp_path):
    src = tt.hcp_tree(str(tmp_path / "src"), SUBJECTS[:3], mni=True)
    for subject in SUBJECTS[:3]:
        shutil.rmtree(os.path.join(src, subject, "T1w"))
    builder = tt.build(hcp.Builder, src, tmp_path / "tfds", "mni")
    assert sorted(tt.volume_ids(builder, "train") + tt.volume_ids(builder, "validation")) == list(SUBJECTS[:3])
    with pytest.raises(real_data.BadInputError, match=r"T1w/T2w_acpc_dc_restore_brain\.nii\.gz: missing T2 image"):
        tt.build(hcp.Builder, src, tmp_path / "tfds2")


def test_a_subfolder_named_after_the_dataset_is_used(tmp_path):
    tt.hcp_tree(str(tmp_path / "data" / "hcp_t2"), SUBJECTS[:2])
    tt.brats2021_tree(str(tmp_path / "data" / "brats"))
    builder = tt.build(hcp.Builder, tmp_path / "data", tmp_path / "tfds", validation_fraction=0.5)
    assert sorted(tt.volume_ids(builder, "train") + tt.volume_ids(builder, "validation")) == list(SUBJECTS[:2])


def test_a_mask_on_another_grid_and_an_empty_folder_are_errors(tmp_path):
    src = tt.hcp_tree(str(tmp_path / "src"), SUBJECTS[:2])
    bad_mask = os.path.join(src, SUBJECTS[1], "T1w", "brainmask_fs.nii.gz")
    tt.save(bad_mask, np.ones((24, 28, 19), np.uint8))
    with pytest.raises(real_data.BadInputError) as err:
        tt.build(hcp.Builder, src, tmp_path / "tfds")
    assert str(err.value).startswith(f"{bad_mask}: brain mask shape (24, 28, 19) does not match")
    (tmp_path / "empty" / "unrelated").mkdir(parents=True)
    with pytest.raises(real_data.BadInputError, match="empty: no HCP subject folders found"):
        tt.build(hcp.Builder, tmp_path / "empty", tmp_path / "tfds")
