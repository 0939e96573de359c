"""brain_phantom: synthetic T2 brain MRI slices with synthetic tumours and exact labels.

No download: volumes are synthesised from the MNI152 2009a templates shipped inside nilearn
(``phantom.py`` next to this module) and go through the same volume-to-slice preprocessing as the
real datasets (``tfvae.data.preprocessing``). Fully deterministic given the config's seed.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from tfvae.data import preprocessing
from tfvae_datasets.brain_phantom import phantom
from tfvae_datasets.brain_phantom.shifts import Shift
from tfvae_datasets.slices import slice_dataset_info, slice_examples

SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}


@dataclasses.dataclass(eq=False)
class BrainPhantomConfig(tfds.core.BuilderConfig):
    """Size of the phantom. ``image_size`` pixels span ``fov_mm`` millimetres.

    ``shift`` (``shifts.Shift``) makes the volumes as another site would acquire them; a split with
    no volume is left out (the shifted configs have no ``train`` split). ``validation_seed`` (default
    ``seed``) draws the healthy validation subjects, so a shifted site's healthy scans are other
    people than the default validation's, while its test subjects are the default test's."""

    image_size: int = 64
    voxel_mm: float = 2.0
    fov_mm: float = 192.0
    min_brain_fraction: float = 0.2
    num_train: int = 40
    num_validation: int = 8
    num_test: int = 20
    seed: int = 0
    validation_seed: int | None = None
    shift: Shift | None = None

    def num_volumes(self, split: str) -> int:
        return {"train": self.num_train, "validation": self.num_validation, "test": self.num_test}[split]

    def split_seed(self, split: str) -> int:
        return self.validation_seed if split == "validation" and self.validation_seed is not None else self.seed


def subject_seed(config_seed: int, split: str, index: int) -> int:
    """Independent, reproducible seed of one synthetic subject."""
    return int(np.random.SeedSequence([config_seed, SPLIT_CODES[split], index]).generate_state(1)[0])


THICK_SLICES = Shift(slice_mm=(3.0, 6.0))
CONTRAST = Shift(te_ms=(80.0, 120.0), tr_ms=(2500.0, 6000.0))
BIAS = Shift(bias_amplitude=(0.15, 0.25))
NOISE = Shift(noise_fraction=(0.06, 0.10))
ATROPHY = Shift(atrophy=(0.4, 0.8))
HYPOINTENSE = Shift(hypointense=True)
COMBINED = Shift(slice_mm=THICK_SLICES.slice_mm, te_ms=CONTRAST.te_ms, tr_ms=CONTRAST.tr_ms,
                 bias_amplitude=BIAS.bias_amplitude, noise_fraction=NOISE.noise_fraction,
                 atrophy=ATROPHY.atrophy, hypointense=True)
RESOLUTION_MM = 1.5  # the resolution shift: the default's 2 mm anatomy stored on a finer grid
# BraTS-sized gliomas: one (80 %) or two lesions of 100-400 ml with their edema (median ~250 ml)
LARGE_LESIONS = Shift(core_mm=(18.0, 32.0), edema_mm=(12.0, 28.0), mass_fraction=(0.3, 0.5),
                      tumour_count_probs=(0.8, 0.2))
LOBULATED = dict(lobes=(2, 4))  # the held-out tumour shape family: lobulated lesions

# another site's test set: the default test subjects (paired), 8 healthy scans of other subjects
_SHIFTED = dict(num_train=0, num_validation=8, num_test=20, validation_seed=1)
SHIFTED_CONFIGS = {
    "thick_slices": (dict(shift=THICK_SLICES), "2D acquisition, 3-6 mm slices (axial 60 %, coronal, sagittal) "
                                               "resampled to the 2 mm grid"),
    "contrast": (dict(shift=CONTRAST), "another T2 protocol: TE 80-120 ms, TR 2500-6000 ms (spin-echo relaxation)"),
    "bias": (dict(shift=BIAS), "bias field amplitude 0.15-0.25 (+-40-60 %; default 0.05-0.08)"),
    "noise": (dict(shift=NOISE), "Rician noise 6-10 % of white matter (default 2-5 %)"),
    "resolution": (dict(voxel_mm=RESOLUTION_MM), f"scans on a {RESOLUTION_MM:g} mm grid (default 2 mm)"),
    "atrophy": (dict(shift=ATROPHY), "an older population: widened sulci and enlarged ventricles"),
    "hypointense": (dict(shift=HYPOINTENSE), "tumours with haemorrhagic (hypointense) parts and iso-intense "
                                             "solid cores"),
    "combined": (dict(shift=COMBINED, voxel_mm=RESOLUTION_MM), "every shift above at once"),
    "large_lesions": (dict(shift=LARGE_LESIONS), "BraTS-sized tumours: 100-400 ml with edema, one or two"),
}
# Held-out sites: other people (test and healthy subjects from seeds no other config uses) with
# lobulated tumours, a shape family no other config has; kept out of every design decision
_HELD_OUT = dict(num_train=0, num_validation=8, num_test=20)
HELD_OUT_CONFIGS = {
    "heldout_home": (dict(seed=11, validation_seed=12, shift=Shift(**LOBULATED)),
                     "the training site's acquisition, new subjects, lobulated tumours"),
    "heldout_large": (dict(seed=13, validation_seed=14, shift=dataclasses.replace(LARGE_LESIONS, **LOBULATED)),
                      "new subjects, lobulated BraTS-sized tumours (100-400 ml)"),
    "heldout_site": (dict(seed=15, validation_seed=16, shift=Shift(
        slice_mm=(2.5, 5.0), bias_amplitude=(0.12, 0.2), noise_fraction=(0.05, 0.08), **LOBULATED)),
                     "new subjects, lobulated tumours, 2.5-5 mm slices, bias 0.12-0.2, noise 5-8 %"),
}


def _shifted_configs() -> list[BrainPhantomConfig]:
    return [BrainPhantomConfig(name=name, description=f"Shifted site (validation and test only): {text}.",
                               **_SHIFTED, **settings)
            for name, (settings, text) in SHIFTED_CONFIGS.items()] + [
        BrainPhantomConfig(name=name, description=f"Held-out site (validation and test only): {text}.",
                           **_HELD_OUT, **settings)
        for name, (settings, text) in HELD_OUT_CONFIGS.items()]


class Builder(tfds.core.GeneratorBasedBuilder):
    """Synthetic healthy (train, validation) and tumour-bearing (test) T2 brain slices."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        BrainPhantomConfig(name="default", description="64x64 slices; 40 train, 8 validation, 20 test volumes."),
        BrainPhantomConfig(name="tiny", description="32x32 slices of 4 mm volumes; 3/1/2 volumes, for tests.",
                           image_size=32, voxel_mm=4.0, num_train=3, num_validation=1, num_test=2),
        BrainPhantomConfig(name="tiny_combined", description="tiny's size, every shift at once; 0/1/2 volumes, "
                           "for tests.", image_size=32, voxel_mm=4.0, num_train=0, num_validation=1, num_test=2,
                           validation_seed=1, shift=COMBINED),
        *_shifted_configs(),
    ]
    DEFAULT_CONFIG_NAME = "default"

    def _info(self) -> tfds.core.DatasetInfo:
        # description: README.md; citation: CITATIONS.bib (the MNI152 2009 templates), read by TFDS
        return slice_dataset_info(self, homepage="https://nilearn.github.io/stable/modules/datasets.html")

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # nothing to download
        cfg = self.builder_config
        return {split: self._generate_examples(split) for split in SPLIT_CODES if cfg.num_volumes(split)}

    def _generate_examples(self, split: str):
        cfg = self.builder_config
        for index in range(cfg.num_volumes(split)):
            subject = phantom.synthesize_subject(subject_seed(cfg.split_seed(split), split, index),
                                                 tumours=split == "test", voxel_mm=cfg.voxel_mm, shift=cfg.shift)
            sliced = preprocessing.volume_to_slices(
                subject.image, subject.affine, mask=subject.brain_mask, label=subject.label,
                image_size=cfg.image_size, fov_mm=cfg.fov_mm, min_brain_fraction=cfg.min_brain_fraction)
            yield from slice_examples(f"{split}_{index:03d}", sliced)
