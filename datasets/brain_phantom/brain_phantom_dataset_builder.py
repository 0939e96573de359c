"""brain_phantom: synthetic T2 brain MRI slices with synthetic tumours and exact labels.

No download: volumes are synthesised from the MNI152 2009a templates shipped inside nilearn
(``phantom.py`` next to this module) and go through the same volume-to-slice preprocessing as the
real datasets (``tfvae.preprocessing``). Fully deterministic given the config's seed.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from tfvae import preprocessing
from tfvae_datasets.brain_phantom import phantom
from tfvae_datasets.slices import slice_dataset_info, slice_examples

SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}


@dataclasses.dataclass(eq=False)
class BrainPhantomConfig(tfds.core.BuilderConfig):
    """Size of the phantom. ``image_size`` pixels span ``fov_mm`` millimetres."""

    image_size: int = 64
    voxel_mm: float = 2.0
    fov_mm: float = 192.0
    min_brain_fraction: float = 0.2
    num_train: int = 40
    num_validation: int = 8
    num_test: int = 20
    seed: int = 0

    def num_volumes(self, split: str) -> int:
        return {"train": self.num_train, "validation": self.num_validation, "test": self.num_test}[split]


def subject_seed(config_seed: int, split: str, index: int) -> int:
    """Independent, reproducible seed of one synthetic subject."""
    return int(np.random.SeedSequence([config_seed, SPLIT_CODES[split], index]).generate_state(1)[0])


class Builder(tfds.core.GeneratorBasedBuilder):
    """Synthetic healthy (train, validation) and tumour-bearing (test) T2 brain slices."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        BrainPhantomConfig(name="default", description="64x64 slices; 40 train, 8 validation, 20 test volumes."),
        BrainPhantomConfig(name="tiny", description="32x32 slices of 4 mm volumes; 3/1/2 volumes, for tests.",
                           image_size=32, voxel_mm=4.0, num_train=3, num_validation=1, num_test=2),
    ]
    DEFAULT_CONFIG_NAME = "default"

    def _info(self) -> tfds.core.DatasetInfo:
        # description: README.md; citation: CITATIONS.bib (the MNI152 2009 templates), read by TFDS
        return slice_dataset_info(self, homepage="https://nilearn.github.io/stable/modules/datasets.html")

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # nothing to download
        return {split: self._generate_examples(split) for split in SPLIT_CODES}

    def _generate_examples(self, split: str):
        cfg = self.builder_config
        for index in range(cfg.num_volumes(split)):
            subject = phantom.synthesize_subject(subject_seed(cfg.seed, split, index),
                                                 tumours=split == "test", voxel_mm=cfg.voxel_mm)
            sliced = preprocessing.volume_to_slices(
                subject.image, subject.affine, mask=subject.brain_mask, label=subject.label,
                image_size=cfg.image_size, fov_mm=cfg.fov_mm, min_brain_fraction=cfg.min_brain_fraction)
            yield from slice_examples(f"{split}_{index:03d}", sliced)
