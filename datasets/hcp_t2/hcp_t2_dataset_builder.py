"""hcp_t2: healthy T2-weighted brains of the Human Connectome Project (S1200), for training.

Reads a tree the user downloaded (HCP needs registration) from the manual folder:
``<subject>/T1w/T2w_acpc_dc_restore_brain.nii.gz`` with ``<subject>/T1w/brainmask_fs.nii.gz`` as
the brain mask where present (else the non-zero voxels), or with ``space="mni"`` the MNI-space
copies ``<subject>/MNINonLinear/T2w_restore_brain.nii.gz`` + ``brainmask_fs.nii.gz``. Subjects are
split into train / validation by a seeded hash of the subject id. Volumes are read, preprocessed
and written one at a time, so memory does not grow with the number of subjects.
"""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds
from etils import epath

from tfvae_datasets import real_data
from tfvae_datasets.slices import slice_dataset_info

SPACES = {
    # space: (folder under the subject, T2 file, brain mask file)
    "native": ("T1w", "T2w_acpc_dc_restore_brain.nii.gz", "brainmask_fs.nii.gz"),
    "mni": ("MNINonLinear", "T2w_restore_brain.nii.gz", "brainmask_fs.nii.gz"),
}

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
HCP data needs registration: accept the data use terms at https://db.humanconnectome.org (or use
the AWS copy, s3://hcp-openaccess/HCP_1200/), then get the "Structural Preprocessed" package of the
WU-Minn HCP S1200 release for the subjects you want (1113 subjects have a T2w image). Unpack it so
that the manual folder (--manual-dir DIR, data.manual_dir or TFVAE_MANUAL_DIR; either DIR itself or
DIR/hcp_t2/) holds one folder per subject:
    <subject>/T1w/T2w_acpc_dc_restore_brain.nii.gz      (and T1w/brainmask_fs.nii.gz)
    <subject>/MNINonLinear/T2w_restore_brain.nii.gz     (and brainmask_fs.nii.gz; config "mni")
Only these files are read; nothing in the folder is changed."""


@dataclasses.dataclass(eq=False)
class HcpT2Config(real_data.SliceConfig):
    """``space``: "native" (T1w/, 0.7 mm ACPC) or "mni" (MNINonLinear/); ``validation_fraction`` of
    the subjects, chosen by ``seed``, form the validation split."""

    space: str = "native"
    validation_fraction: float = 0.1
    seed: int = 0


def find_subjects(root: epath.Path, space: str) -> list[epath.Path]:
    """Subject folders (those with a ``T1w/`` or ``MNINonLinear/`` folder) at depth 1 or 2 of ``root``
    (depth 2 for an extra level such as ``HCP_1200/``), sorted by name."""
    def is_subject(d):
        return d.is_dir() and not real_data.ignored(d.name) and any((d / folder).is_dir()
                                                                    for folder, _, _ in SPACES.values())

    subjects = [d for d in root.iterdir() if is_subject(d)]
    if not subjects:
        subjects = [s for d in root.iterdir() if d.is_dir() for s in d.iterdir() if is_subject(s)]
    return sorted(subjects, key=lambda d: d.name)


class Builder(tfds.core.GeneratorBasedBuilder):
    """Healthy HCP T2 slices: train and validation splits (by subject)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [
        HcpT2Config(name="default", description="T1w/T2w_acpc_dc_restore_brain (native ACPC space, 0.7 mm), "
                                                "64x64 slices of a 192 mm field of view; 10% of subjects validate."),
        HcpT2Config(name="mni", space="mni", description="MNINonLinear/T2w_restore_brain (MNI space), 64x64."),
    ]
    DEFAULT_CONFIG_NAME = "default"

    def _info(self) -> tfds.core.DatasetInfo:
        # description: README.md; citation: CITATIONS.bib (Van Essen et al. 2013), read by TFDS
        return slice_dataset_info(self, homepage="https://www.humanconnectome.org/study/hcp-young-adult", metadata=True)

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        cfg = self.builder_config
        if cfg.space not in SPACES:
            raise ValueError(f"hcp_t2 config {cfg.name}: space must be one of {', '.join(SPACES)}, got {cfg.space!r}")
        root = real_data.manual_root(dl_manager, self.name)
        subjects = find_subjects(root, cfg.space)
        if not subjects:
            raise real_data.BadInputError(
                f"{root}: no HCP subject folders found (expected <subject>/{SPACES[cfg.space][0]}/"
                f"{SPACES[cfg.space][1]})")
        if len(subjects) < 2:
            raise real_data.BadInputError(
                f"{root}: only {len(subjects)} HCP subject; train and validation need 2 or more")
        validation = real_data.validation_subset([s.name for s in subjects], cfg.validation_fraction, cfg.seed)
        return {
            "train": self._generate_examples("train", [s for s in subjects if s.name not in validation], root),
            "validation": self._generate_examples("validation", [s for s in subjects if s.name in validation], root),
        }

    def _load(self, subject: epath.Path):
        cfg = self.builder_config
        folder, image_name, mask_name = SPACES[cfg.space]
        image_path = subject / folder / image_name
        if not image_path.is_file():
            raise real_data.bad(image_path, "missing T2 image (modality t2) of this subject")
        image, affine = real_data.load_volume(image_path, expect_modality="t2")
        mask = None
        mask_path = subject / folder / mask_name
        if mask_path.is_file():
            mask, mask_affine = real_data.load_volume(mask_path)
            real_data.check_same_grid(mask_path, mask, mask_affine, image_path, image, affine, "brain mask")
        return real_data.slices_of(image_path, image, affine, mask=mask, cfg=cfg)

    def _generate_examples(self, split: str, subjects, root):
        yield from real_data.case_examples(self, split, [(s.name, s) for s in subjects], self._load, root)
