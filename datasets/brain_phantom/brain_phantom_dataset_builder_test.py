"""TFDS's own builder test for brain_phantom (the phantom is generated: there is no dummy_data to
download, so the `tiny` config is built for real), plus determinism and label checks."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from tfvae_datasets.brain_phantom import brain_phantom_dataset_builder  # noqa: E402


class BrainPhantomTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = brain_phantom_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["tiny"]
    SKIP_CHECKSUMS = True
    EXAMPLE_DIR = os.path.join(os.path.dirname(__file__), "dummy_data")
    SPLITS = {"train": 95, "validation": 29, "test": 63}


def _build(tmp_path, name):
    builder = brain_phantom_dataset_builder.Builder(config="tiny", data_dir=str(tmp_path / name))
    builder.download_and_prepare()
    return builder


def _split_bytes(builder, split):
    return [(ex["volume_id"], int(ex["slice_index"]), ex["image"].tobytes(), ex["label"].tobytes())
            for ex in builder.as_dataset(split=split).as_numpy_iterator()]


def test_same_seed_same_bytes_and_labels_inside_the_brain(tmp_path):
    first, second = _build(tmp_path, "a"), _build(tmp_path, "b")
    for split in ("train", "validation", "test"):
        assert _split_bytes(first, split) == _split_bytes(second, split)
    tumour_slices = healthy_test_slices = 0
    for ex in first.as_dataset(split="test").as_numpy_iterator():
        label, mask = ex["label"], ex["brain_mask"]
        assert set(np.unique(label)) <= {0, 1, 2, 4}
        assert not np.any((label > 0) & (mask == 0))
        assert np.all(ex["image"][mask == 0] == 0)
        tumour_slices += bool(label.any())
        healthy_test_slices += not label.any()
    assert tumour_slices > 0 and healthy_test_slices > 0
    for split in ("train", "validation"):
        assert all(not ex["label"].any() for ex in first.as_dataset(split=split).as_numpy_iterator())
    train_ids = {ex["volume_id"] for ex in first.as_dataset(split="train").as_numpy_iterator()}
    assert len(train_ids) == first.builder_config.num_train


def test_slices_are_stored_volume_by_volume_in_order(tmp_path):
    builder = _build(tmp_path, "ordered")
    for split in ("train", "test"):
        keys = [(ex["volume_id"].decode(), int(ex["slice_index"]))
                for ex in builder.as_dataset(split=split).as_numpy_iterator()]
        assert keys == sorted(keys)
        assert len({v for v, _ in keys}) > 1


def test_subject_seeds_differ_between_splits_and_indices():
    seeds = {brain_phantom_dataset_builder.subject_seed(0, split, i)
             for split in ("train", "validation", "test") for i in range(50)}
    assert len(seeds) == 150
