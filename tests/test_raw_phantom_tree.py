"""The raw phantom set (datasets/testing_trees.py ``raw_phantom_tree``): raw tumour heads in BraTS's
layout with their true brain masks, from held-out seeds -- checked on two coarse heads (4 mm)."""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from etils import epath  # noqa: E402

from tfvae_datasets import testing_trees as tt  # noqa: E402
from tfvae_datasets.brain_phantom import brain_phantom_dataset_builder as phantom_builder  # noqa: E402
from tfvae_datasets.brain_phantom import phantom  # noqa: E402
from tfvae_datasets.brats import brats_dataset_builder as brats  # noqa: E402


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw_phantom")
    tt.main(["raw_phantom", str(root), "--cases", "2", "--coarse"])
    return root


def test_brats_layout_labels_inside_the_true_brain(tree):
    cases = ["RawPhantom_09000", "RawPhantom_09001"]
    assert sorted(os.listdir(tree)) == sorted(cases + ["truth"])
    assert [c.name for c in brats.find_cases(epath.Path(tree))] == cases  # truth/ is no case
    for seed, case in zip((9000, 9001), cases):
        case_dir = epath.Path(tree) / case
        assert sorted(os.listdir(case_dir)) == [f"{case}_seg.nii.gz", f"{case}_t2.nii.gz"]
        paths = tt.raw_phantom_paths(tree, case)
        assert str(brats.case_file(case_dir, "t2")) == paths["t2"]
        assert str(brats.case_file(case_dir, "seg")) == paths["seg"]
        image, seg, brain = (nib.load(paths[k]) for k in ("t2", "seg", "brainmask"))
        for img in (seg, brain):  # one raw grid, stored LPS like the raw head
            assert img.shape == image.shape
            np.testing.assert_allclose(img.affine, image.affine)
        assert nib.aff2axcodes(image.affine) == ("L", "P", "S") and image.get_data_dtype() == np.int16
        label = np.asarray(seg.dataobj)
        mask = np.asarray(brain.dataobj) > 0
        assert set(np.unique(label)) <= {0, 1, 2, 4} and (label > 0).sum() > 0
        assert not (label[~mask] > 0).any()  # every tumour voxel inside the true brain
        truth = json.loads(open(paths["truth"]).read())
        assert truth["seed"] == seed and truth["case"] == case and truth["tumours"] is True
        np.testing.assert_allclose(truth["affine"], image.affine)
        voxel_ml = abs(np.linalg.det(image.affine[:3, :3])) / 1000
        assert truth["tumour_ml"] == pytest.approx((label > 0).sum() * voxel_ml)
        # the head's own image: scalp and skull around the brain (bright voxels outside the mask)
        data = np.asarray(image.dataobj, np.float32)
        assert np.percentile(data[mask], 50) > 0 and (data[~mask] > 0.5 * np.median(data[mask])).sum() > mask.sum() / 4


def test_the_phantom_subject_behind_a_head_and_resuming(tree, tmp_path):
    """The tumours of the raw labels are the phantom subject's (``synthesize_subject(seed)``), and a
    second call keeps the cases there."""
    paths = tt.raw_phantom_paths(tree, "RawPhantom_09000")
    truth = json.loads(open(paths["truth"]).read())
    subject = phantom.synthesize_subject(truth["seed"], tumours=True, voxel_mm=truth["brain_voxel_mm"])
    raw_ml = truth["tumour_ml"]
    phantom_ml = (subject.label > 0).sum() * truth["brain_voxel_mm"] ** 3 / 1000
    assert raw_ml == pytest.approx(phantom_ml, rel=0.25)  # the same tumour, resampled onto a coarse grid
    stamps = {p: os.path.getmtime(p) for p in paths.values()}
    assert tt.raw_phantom_tree(tree, 2, coarse=True) == ["RawPhantom_09000", "RawPhantom_09001"]
    assert {p: os.path.getmtime(p) for p in paths.values()} == stamps


def test_held_out_seeds():
    """No phantom config's subject (train, validation or test of any builder config) has a raw set seed."""
    used = {phantom_builder.subject_seed(cfg.split_seed(split), split, i)
            for cfg in phantom_builder.Builder.BUILDER_CONFIGS
            for split in phantom_builder.SPLIT_CODES for i in range(cfg.num_volumes(split))}
    assert used and not used & set(tt.RAW_PHANTOM_SEEDS)
    with pytest.raises(ValueError, match="held-out range"):
        tt.raw_phantom_tree("unused", 2, first_seed=5)
