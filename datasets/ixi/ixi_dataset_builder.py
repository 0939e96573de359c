"""ixi: healthy T2-weighted heads of the IXI dataset, preprocessed by tfvae, for training.

IXI ships raw heads (skull and scalp on, each in its own pose, bias field uncorrected, 0.94 x 0.94
x 1.2 mm) from three London sites, all healthy subjects. The builder reads
``IXI-T2/IXI<nnn>-<site>-<nnnn>-T2.nii.gz`` (site ``Guys``, ``HH`` or ``IOP``) from the manual
folder, preprocesses each scan once (``tfvae.data.head_preprocessing`` through ``raw_scans``: 1 mm,
N4, affine registration to MNI152 2009a, brain extraction, crop; cached in TFDS's download folder)
and slices the brain in template space like ``hcp_t2`` (the same features: training reads it
unchanged). Subjects (``IXI<nnn>``) are split into train / validation by a seeded hash of the
subject id; there is no test split (IXI has no lesions: test on ``brats``). Each scan's site is in
the built dataset's metadata (``site``: volume id -> site; ``sites``: split -> site -> scans).
"""

from __future__ import annotations

import dataclasses
import re
import sys

import tensorflow_datasets as tfds
from etils import epath

from tfvae_datasets import raw_scans, real_data
from tfvae_datasets.slices import slice_dataset_info

SITES = ("Guys", "HH", "IOP")
NAME = re.compile(r"^(IXI\d{3})-(Guys|HH|IOP)-(\d{4})-T2$")
FOLDER = "IXI-T2"

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
IXI is free to download (CC BY-SA 3.0): get IXI-T2.tar (the T2 images, about 4.5 GB) from
https://brain-development.org/ixi-dataset/ and unpack it into a folder IXI-T2/ in the manual folder
(--manual-dir DIR, data.manual_dir or TFVAE_MANUAL_DIR; either DIR itself or DIR/ixi/):
    mkdir -p DIR/ixi/IXI-T2 && tar -xf IXI-T2.tar -C DIR/ixi/IXI-T2
so that it holds IXI<nnn>-<site>-<nnnn>-T2.nii.gz files (sites Guys, HH, IOP; 578 scans). The
scans are raw heads: each is preprocessed once (about 1-2 minutes per scan on 2 cores, cached) and
needs SimpleITK (pip install tfvae[preprocess]). Nothing in the folder is changed."""


@dataclasses.dataclass(eq=False)
class IxiConfig(raw_scans.PreprocessConfig):
    """``validation_fraction`` of the subjects, chosen by ``seed``, form the validation split;
    ``sites``: the sites whose scans are read. ``preprocess`` is always on (IXI ships raw heads)."""

    preprocess: bool = True
    validation_fraction: float = 0.1
    seed: int = 0
    sites: tuple = SITES


def parse_name(stem: str):
    """``(subject, site)`` of an IXI T2 file stem (``IXI002-Guys-0828-T2``), or None."""
    match = NAME.match(stem)
    return (match.group(1), match.group(2)) if match else None


def find_scans(root: epath.Path) -> list[tuple[str, epath.Path]]:
    """``(volume id, path)`` of the IXI T2 scans in ``root/IXI-T2/`` (else ``root`` itself, where
    IXI-T2.tar was unpacked straight into it), sorted by volume id (the file's stem). Other NIfTI
    files there (IXI's T1, PD, MRA scans, a file named otherwise) are left out, said in one line."""
    root = epath.Path(root)
    folder = root / FOLDER if (root / FOLDER).is_dir() else root
    found, others = [], []
    for path in sorted(folder.iterdir()):
        stem = real_data.strip_nifti_suffix(path.name)
        if stem is None or real_data.ignored(path.name) or not path.is_file():
            continue
        (found if parse_name(stem) else others).append((stem, path))
    stems = [s for s, _ in found]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise real_data.bad(folder / twice[0], "two files of this scan (.nii and .nii.gz); keep one")
    if others:
        shown = ", ".join(p.name for _, p in others[:3]) + (", ..." if len(others) > 3 else "")
        line = (f"ixi: {len(others)} NIfTI file(s) in {folder} not named IXI<nnn>-<site>-<nnnn>-T2 left out "
                f"({shown})")
        print(line, file=sys.stderr)
        real_data.log.warning(line)
    return found


class Builder(real_data.BeamSupport, tfds.core.GeneratorBasedBuilder):
    """Healthy IXI T2 slices, preprocessed from the raw heads: train and validation (by subject).
    Generated in this process, or through Apache Beam when the build names a runner (``BeamSupport``)."""

    BEAM_STATE = ("_preprocessor",)
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [
        IxiConfig(name="default", description="All three sites, preprocessed (1 mm, MNI152 2009a space), 64x64 "
                                              "slices of a 192 mm field of view; 10% of subjects validate."),
    ] + [IxiConfig(name=site.lower(), sites=(site,), description=f"As default, the {site} site's scans only.")
         for site in SITES]
    DEFAULT_CONFIG_NAME = "default"

    def _info(self) -> tfds.core.DatasetInfo:
        # description: README.md; citation: CITATIONS.bib (the IXI dataset), read by TFDS
        return slice_dataset_info(self, homepage="https://brain-development.org/ixi-dataset/", metadata=True)

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        cfg = self.builder_config
        raw_scans.check_fields(cfg, self.name)
        if not cfg.preprocess:
            raise ValueError(f"ixi config {cfg.name}: preprocess cannot be off (IXI ships raw heads)")
        unknown = [s for s in cfg.sites if s not in SITES]
        if not cfg.sites or unknown or isinstance(cfg.sites, str):
            raise ValueError(f"ixi config {cfg.name}: sites must be a non-empty tuple of {', '.join(SITES)}, "
                             f"got {cfg.sites!r}")
        root = real_data.manual_root(dl_manager, self.name)
        scans = [(vid, path) for vid, path in find_scans(root) if parse_name(vid)[1] in cfg.sites]
        if not scans:
            raise real_data.BadInputError(
                f"{root}: no IXI T2 scans found (expected {FOLDER}/IXI<nnn>-<site>-<nnnn>-T2.nii.gz"
                + (f" of site {', '.join(cfg.sites)}" if tuple(cfg.sites) != SITES else "") + ")")
        subjects = sorted({parse_name(vid)[0] for vid, _ in scans})
        if len(subjects) < 2:
            raise real_data.BadInputError(f"{root}: only {len(subjects)} IXI subject; train and validation need 2 "
                                          "or more")
        validation = real_data.validation_subset(subjects, cfg.validation_fraction, cfg.seed)
        self._preprocessor = raw_scans.Preprocessor(self.name, cfg, dl_manager)
        self._all_scans = scans
        return {
            "train": self._generate_examples("train", [s for s in scans if parse_name(s[0])[0] not in validation],
                                             root),
            "validation": self._generate_examples("validation",
                                                  [s for s in scans if parse_name(s[0])[0] in validation], root),
        }

    def _load(self, item):
        scan, volume_id = item
        pre = self._preprocessor.load(volume_id, scan, expect_modality="t2")
        return real_data.slices_of(pre.path, pre.image, pre.affine, mask=pre.mask, cfg=self.builder_config)

    def _generate_examples(self, split: str, scans, root):
        cases = [(vid, (path, vid)) for vid, path in scans]
        if self._beam:  # each worker preprocesses its scans (cached); the sites of the scans given
            self._record_sites(split, [vid for vid, _ in scans])
            return real_data.beam_case_examples(self, split, cases, self._load)

        def generate():
            self._preprocessor.prepare(self._all_scans)  # every split's scans at once, in parallel (once)
            yield from real_data.case_examples(self, split, cases, self._load, root)
            skipped = {s["case"] for s in self.info.metadata.get("skipped", {}).get(split, [])}
            self._record_sites(split, [vid for vid, _ in scans if vid not in skipped])
            self._preprocessor.report(split)
        return generate()

    def _record_sites(self, split: str, volume_ids) -> None:
        """The metadata's ``site`` (volume id -> site) and ``sites`` (split -> site -> scans)."""
        metadata = self.info.metadata
        sites = {vid: parse_name(vid)[1] for vid in volume_ids}
        metadata.setdefault("site", {}).update(sites)
        metadata.setdefault("sites", {})[split] = {site: list(sites.values()).count(site) for site in SITES
                                                   if site in sites.values()}
