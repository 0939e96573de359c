"""brats: BraTS brain-tumour scans with their segmentations, for testing (one ``test`` split).

Recognises on its own, case by case, the layouts of BraTS 2018-2023+ found anywhere (up to four
folders deep) under the manual folder: a case is a folder holding NIfTI files named after it,
``<case>_<modality>.nii[.gz]`` (2018-2021) or ``<case>-<modality>.nii.gz`` (2023+), e.g.

- 2018 / 2019: ``{HGG,LGG}/Brats18_CBICA_AAB_1/Brats18_CBICA_AAB_1_t2.nii.gz`` (``BraTS19_`` in 2019)
- 2020: ``BraTS20_Training_001/BraTS20_Training_001_t2.nii[.gz]`` (case 355's segmentation has an
  odd name, e.g. ``W39_1998.09.19_Segm.nii``: a single ``*seg*`` file in the case folder is taken)
- 2021: ``BraTS2021_00000/BraTS2021_00000_t2.nii.gz``
- 2023+: ``BraTS-GLI-00000-000/BraTS-GLI-00000-000-t2w.nii.gz`` (t2w = t2, t2f = flair, t1n = t1,
  t1c = t1ce)

Labels are stored in the BraTS 2018 convention: 1 necrotic / non-enhancing core, 2 edema,
4 enhancing; the whole tumour is ``label > 0``. Each case's own convention is recognised
(``label_convention``) and mapped explicitly, and the build says which conventions it met:

- 2018-2021 names: 1, 2, 4 as stored (3 is an error);
- 2023+ names: 3 is enhancing tumour (stored as 4);
- 2023+ names with a label 4 (BraTS 2024+ post-treatment cases): 3 is enhancing (stored as 4) and
  4 the **resection cavity**, which is not tumour: stored as 0 by default, or as ``CAVITY_LABEL``
  (5, counted in the whole tumour) with the config ``t2_cavity`` (``BratsConfig.cavity="tumour"``).

Raw cases (heads not skull-stripped, not registered): with ``preprocess`` (``data.preprocess: true``)
each case's scan is first preprocessed (``raw_scans``: 1 mm, N4, registration to MNI152 2009a,
brain extraction, crop; cached in TFDS's download folder) and its segmentation follows it into
template space through the recorded transform, by nearest neighbour. A case whose scan fails
preprocessing is skipped and reported.
"""

from __future__ import annotations

import dataclasses
import re
import sys

import tensorflow_datasets as tfds
from etils import epath

from tfvae_datasets import raw_scans, real_data
from tfvae_datasets.slices import slice_dataset_info

# modality -> the names it has in the file names of the different releases
MODALITY_NAMES = {
    "t2": ("t2", "t2w"),
    "flair": ("flair", "t2f"),
    "t1": ("t1", "t1n"),
    "t1ce": ("t1ce", "t1c", "t1gd"),
    "seg": ("seg",),
}
CAVITY_LABEL = 5  # a resection cavity, stored only when BratsConfig.cavity == "tumour"
# convention -> (label values a segmentation may hold, mapping to the BraTS 2018 convention)
CONVENTIONS = {
    "2018-2021": ((0, 1, 2, 4), {}),
    "2023": ((0, 1, 2, 3), {3: 4}),  # 3 is enhancing tumour, which BraTS 2018 calls 4
    "2024+ post-treatment": ((0, 1, 2, 3, 4), {3: 4, 4: 0}),  # 4: resection cavity, not tumour
    "unknown release": ((0, 1, 2, 3, 4), {3: 4}),
}
MAX_DEPTH = 4

LAYOUTS = [  # (release, pattern of its case names)
    ("2018", re.compile(r"^Brats18_")),
    ("2019", re.compile(r"^BraTS19_")),
    ("2020", re.compile(r"^BraTS20_")),
    ("2021", re.compile(r"^BraTS2021_")),
    ("2023+", re.compile(r"^BraTS-[A-Z]+-\d+-\d+$")),
]

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
BraTS needs registration: get the training data of BraTS 2018-2023 (e.g. via
https://www.med.upenn.edu/sbia/brats2018/data.html, the CBICA Image Processing Portal, Kaggle or
Synapse for 2021+) and unpack it into the manual folder (--manual-dir DIR, data.manual_dir or
TFVAE_MANUAL_DIR; either DIR itself or DIR/brats/), keeping the release's own layout, e.g.
    MICCAI_BraTS_2018_Data_Training/{HGG,LGG}/Brats18_*/Brats18_*_{t2,seg}.nii.gz
    MICCAI_BraTS2020_TrainingData/BraTS20_Training_NNN/BraTS20_Training_NNN_{t2,seg}.nii[.gz]
    BraTS2021_NNNNN/BraTS2021_NNNNN_{t2,seg}.nii.gz
    BraTS-GLI-NNNNN-NNN/BraTS-GLI-NNNNN-NNN-{t2w,seg}.nii.gz
Every case needs the chosen modality and its segmentation (validation sets without seg files do
not work). Nothing in the folder is changed."""


@dataclasses.dataclass(eq=False)
class BratsConfig(raw_scans.PreprocessConfig):
    """``modality``: t2 (the paper), flair, t1 or t1ce; ``cavity``: what the resection cavity of
    BraTS 2024+ post-treatment cases is, "background" (default: not tumour) or "tumour";
    ``preprocess`` and its fields: raw cases (``raw_scans``)."""

    modality: str = "t2"
    cavity: str = "background"


def layout_of(case: str) -> str:
    """The BraTS release a case name comes from ("2018", ..., "2023+", or "unknown")."""
    return next((release for release, pattern in LAYOUTS if pattern.match(case)), "unknown")


def label_convention(case: str, values) -> str:
    """The label convention of a case (a key of ``CONVENTIONS``) from its name's release and the
    label values its segmentation holds: a 2023+ case with a 4 is a post-treatment case."""
    release = layout_of(case)
    if release == "unknown":
        return "unknown release"
    if release != "2023+":
        return "2018-2021"
    return "2024+ post-treatment" if 4 in set(int(v) for v in values) else "2023"


def convert_labels(seg_path, seg, case: str, cavity: str = "background"):
    """``(labels in the BraTS 2018 convention (uint8), the convention recognised)``."""
    import numpy as np

    rounded = np.round(seg)
    convention = label_convention(case, np.unique(rounded[np.abs(seg - rounded) <= real_data.LABEL_TOLERANCE]))
    allowed, mapping = CONVENTIONS[convention]
    if convention == "2024+ post-treatment" and cavity == "tumour":
        mapping = {**mapping, 4: CAVITY_LABEL}
    label = real_data.check_labels(seg_path, seg, allowed)
    out = label.copy()
    for source, target in mapping.items():
        out[label == source] = target
    return out, convention


def _nifti_stems(folder: epath.Path) -> dict:
    """{stem: path} of the NIfTI files directly in ``folder``; two files of one stem (``x.nii`` beside
    ``x.nii.gz``) are a ``BadInputError`` naming both, not a choice made by the listing order."""
    out = {}
    for path in sorted(folder.iterdir()):
        stem = real_data.strip_nifti_suffix(path.name)
        if stem is not None and path.is_file() and not real_data.ignored(path.name):
            if stem in out:
                raise real_data.bad(path, f"two files for {stem} (also {out[stem].name}); keep one")
            out[stem] = path
    return out


def is_case(folder: epath.Path, stems: dict) -> bool:
    return any(stem.startswith((folder.name + "_", folder.name + "-")) for stem in stems)


def find_cases(root: epath.Path) -> list[epath.Path]:
    """Case folders under ``root`` (up to ``MAX_DEPTH`` deep), sorted by case name."""
    cases, seen = [], {}
    pending = [(root, 0)]
    while pending:
        folder, depth = pending.pop()
        for child in sorted(folder.iterdir()):
            if not child.is_dir() or real_data.ignored(child.name):
                continue
            if is_case(child, _nifti_stems(child)):
                if child.name in seen:
                    raise real_data.bad(child, f"duplicate BraTS case name (also at {seen[child.name]})")
                seen[child.name] = child
                cases.append(child)
            elif depth + 1 < MAX_DEPTH:
                pending.append((child, depth + 1))
    return sorted(cases, key=lambda c: c.name)


def case_file(case: epath.Path, modality: str) -> epath.Path:
    """The case's file of ``modality`` (or "seg"); ``BadInputError`` when it is missing."""
    stems = _nifti_stems(case)
    for name in MODALITY_NAMES[modality]:
        for sep in ("_", "-"):
            path = stems.get(f"{case.name}{sep}{name}")
            if path is not None:
                return path
    if modality == "seg":  # BraTS 2020 case 355: e.g. W39_1998.09.19_Segm.nii
        odd = [p for s, p in stems.items() if "seg" in s.lower()]
        if len(odd) == 1:
            return odd[0]
    what = "segmentation" if modality == "seg" else f"modality {modality}"
    expected = " or ".join(f"{case.name}_{n}.nii[.gz]" for n in MODALITY_NAMES[modality])
    raise real_data.bad(case, f"missing {what} (expected {expected})")


class Builder(real_data.BeamSupport, tfds.core.GeneratorBasedBuilder):
    """BraTS test slices with tumour labels (one ``test`` split). Generated in this process, or
    through Apache Beam when the build names a runner (``BeamSupport``)."""

    BEAM_STATE = ("_preprocessor", "_conventions_said")
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [
        BratsConfig(name="default", description="T2 (the paper's modality), 64x64 slices of a 192 mm field of view."),
        BratsConfig(name="flair", modality="flair", description="FLAIR, 64x64."),
        BratsConfig(name="t1", modality="t1", description="T1 (native), 64x64."),
        BratsConfig(name="t1ce", modality="t1ce", description="T1 with contrast, 64x64."),
        BratsConfig(name="t2_cavity", cavity="tumour", description="T2, the resection cavity of BraTS 2024+ "
                    "post-treatment cases counted as tumour (stored as label 5)."),
    ]
    DEFAULT_CONFIG_NAME = "default"

    def _info(self) -> tfds.core.DatasetInfo:
        # description: README.md; citation: CITATIONS.bib (Menze et al. 2015, Bakas et al. 2017), read by TFDS
        return slice_dataset_info(self, homepage="https://www.synapse.org/brats", metadata=True)

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        cfg = self.builder_config
        if cfg.modality not in MODALITY_NAMES or cfg.modality == "seg":
            raise ValueError(f"brats config {cfg.name}: modality must be one of t2, flair, t1, t1ce, "
                             f"got {cfg.modality!r}")
        if cfg.cavity not in ("background", "tumour"):
            raise ValueError(f"brats config {cfg.name}: cavity must be 'background' or 'tumour', got {cfg.cavity!r}")
        raw_scans.check_fields(cfg, self.name)
        self._conventions_said: set = set()
        root = real_data.manual_root(dl_manager, self.name)
        cases = find_cases(root)
        if not cases:
            raise real_data.BadInputError(f"{root}: no BraTS case folders found (expected e.g. "
                                          "Brats18_CBICA_AAB_1/Brats18_CBICA_AAB_1_t2.nii.gz)")
        self._preprocessor = raw_scans.Preprocessor(self.name, cfg, dl_manager) if cfg.preprocess else None
        return {"test": self._generate_examples(cases, root)}

    def _load(self, case: epath.Path):
        image_path = case_file(case, self.builder_config.modality)
        seg_path = case_file(case, "seg")
        image, affine = real_data.load_volume(image_path, expect_modality=self.builder_config.modality)
        seg, seg_affine = real_data.load_volume(seg_path)
        real_data.check_same_grid(seg_path, seg, seg_affine, image_path, image, affine, "segmentation")
        label, convention = convert_labels(seg_path, seg, case.name, self.builder_config.cavity)
        if convention not in self._conventions_said:  # one line per convention met in this build
            self._conventions_said.add(convention)
            cavity = {"2024+ post-treatment": f"; label 4 is the resection cavity, "
                      f"{'counted as tumour (label 5)' if self.builder_config.cavity == 'tumour' else 'not tumour'}"}
            line = (f"brats: {case.name} and the cases like it read in the {convention} label convention (stored "
                    f"as BraTS 2018: 1 core, 2 edema, 4 enhancing){cavity.get(convention, '')}")
            print(line, file=sys.stderr)
            real_data.log.warning(line)
        if self._preprocessor is not None:  # a raw case: the brain in template space, the labels following it
            pre = self._preprocessor.load(case.name, image_path, expect_modality=self.builder_config.modality)
            return real_data.slices_of(pre.path, pre.image, pre.affine, mask=pre.mask, label=pre.label(label),
                                       cfg=self.builder_config)
        return real_data.slices_of(image_path, image, affine, label=label, cfg=self.builder_config)

    def _generate_examples(self, cases, root):
        pre = self._preprocessor

        def start():  # every case's scan preprocessed ahead, in parallel
            jobs = []
            for c in cases:
                try:
                    jobs.append((c.name, case_file(c, self.builder_config.modality)))
                except real_data.BadInputError:
                    pass  # said (or skipped) when the case is read
            pre.prepare(jobs)

        def done():
            if pre is not None:
                pre.report("test")
            self.info.metadata["releases"] = sorted({layout_of(c.name) for c in cases})  # e.g. the paper's: ["2018"]

        if self._beam:
            self.info.metadata["releases"] = sorted({layout_of(c.name) for c in cases})
        return real_data.split_examples(self, "test", [(c.name, c) for c in cases], self._load, root,
                                        start=start if pre is not None else None, done=done)
