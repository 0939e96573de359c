"""nifti_folder: any folder of brain-extracted 3D NIfTI scans (e.g. IXI T2), for training or testing.

Every ``*.nii`` / ``*.nii.gz`` file under the folder (searched recursively) is a scan, except the
companions named after a scan: ``<scan>_seg.nii[.gz]`` (a segmentation: the scan is a test case)
and ``<scan>_mask.nii[.gz]`` (a brain mask; else the non-zero voxels are the brain). Scans without
a segmentation are healthy and split by file into ``train`` / ``validation`` (seeded); scans with
one form the ``test`` split. A split with no scans is not declared (the build says so).
"""

from __future__ import annotations

import dataclasses
import logging

import tensorflow_datasets as tfds
from etils import epath

from tfvae_datasets import real_data
from tfvae_datasets.slices import slice_dataset_info

COMPANIONS = ("_seg", "_mask")
MAX_DEPTH = 8

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put your brain-extracted 3D NIfTI scans (.nii or .nii.gz, any voxel size and orientation; e.g. the
IXI T2 scans after skull stripping) into the manual folder (--manual-dir DIR, data.manual_dir or
TFVAE_MANUAL_DIR; either DIR itself or DIR/nifti_folder/), or name the folder in the builder
config's `folder` field. Subfolders are searched. Healthy scans train (train / validation split by
file); a scan with a segmentation next to it, <scan>_seg.nii[.gz] (0 background, tumour labels
1, 2, 3 or 4), is a test case. An optional <scan>_mask.nii[.gz] is the scan's brain mask.
Nothing in the folder is changed."""


@dataclasses.dataclass(eq=False)
class NiftiFolderConfig(real_data.SliceConfig):
    """``folder``: read this folder instead of the manual folder; ``validation_fraction`` of the
    healthy scans (chosen by ``seed``) validate; ``labels``: the label values a segmentation may
    hold (stored unchanged; the whole tumour is ``label > 0``)."""

    folder: str | None = None
    validation_fraction: float = 0.1
    seed: int = 0
    labels: tuple = (0, 1, 2, 3, 4)


def find_scans(root: epath.Path) -> list[tuple[str, epath.Path]]:
    """(volume id, path) of every scan under ``root`` (companion files and tfvae's own outputs,
    ``*_tfvae_*``, excluded), sorted."""
    scans, pending = [], [(root, "", 0)]
    while pending:  # an explicit walk: epath's glob refuses "**"
        folder, prefix, depth = pending.pop()
        try:
            entries = list(folder.iterdir())
        except PermissionError:
            raise real_data.bad(folder, "cannot be read (permission denied)") from None
        for path in entries:
            if real_data.ignored(path.name):  # hidden / OS metadata files, tfvae's outputs
                continue
            if path.is_dir():
                if depth + 1 < MAX_DEPTH:
                    pending.append((path, f"{prefix}{path.name}/", depth + 1))
                continue
            stem = real_data.strip_nifti_suffix(path.name)
            if stem is not None and not stem.endswith(COMPANIONS):
                scans.append((prefix + stem, path))
    scans.sort(key=lambda s: (s[0], str(s[1])))
    for (first_id, first), (second_id, second) in zip(scans, scans[1:]):
        if first_id == second_id:  # e.g. patient0.nii beside patient0.nii.gz: one volume id, two scans
            raise real_data.bad(first, f"the same case {first_id!r} as {second}; keep one of them")
    return scans


def companion(path: epath.Path, kind: str) -> epath.Path | None:
    return real_data.find_nifti(path.parent, real_data.strip_nifti_suffix(path.name) + kind)


class Builder(tfds.core.GeneratorBasedBuilder):
    """Slices of the scans of a folder: healthy train / validation, segmented test."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [NiftiFolderConfig(name="default", description="64x64 slices of a 192 mm field of view.")]
    DEFAULT_CONFIG_NAME = "default"

    def _info(self) -> tfds.core.DatasetInfo:
        # description: README.md; CITATIONS.bib is empty (the scans are the user's: cite their source)
        return slice_dataset_info(self, homepage="https://brain-development.org/ixi-dataset/", metadata=True)

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        cfg = self.builder_config
        if cfg.folder:
            root = epath.Path(cfg.folder).expanduser()
            if not root.is_dir():
                raise real_data.bad(root, "folder not found (nifti_folder config field `folder`)")
        else:
            root = real_data.manual_root(dl_manager, self.name)
        scans = find_scans(root)
        if not scans:
            raise real_data.BadInputError(f"{root}: no NIfTI scans (.nii or .nii.gz) found")
        test = [(vid, p) for vid, p in scans if companion(p, "_seg") is not None]
        healthy = [(vid, p) for vid, p in scans if companion(p, "_seg") is None]
        validation = real_data.validation_subset([vid for vid, _ in healthy], cfg.validation_fraction, cfg.seed)
        splits = {
            "train": [s for s in healthy if s[0] not in validation],
            "validation": [s for s in healthy if s[0] in validation],
            "test": test,
        }
        missing = [name for name, items in splits.items() if not items]
        if missing:
            logging.getLogger("tfvae_datasets").warning(
                "nifti_folder %s: no scans for split(s) %s (healthy scans: %d, with _seg: %d); not declared",
                root, ", ".join(missing), len(healthy), len(test))
        return {name: self._generate_examples(name, items, root) for name, items in splits.items() if items}

    def _load(self, path: epath.Path):
        cfg = self.builder_config
        image, affine = real_data.load_volume(path)
        mask = label = None
        mask_path = companion(path, "_mask")
        if mask_path is not None:
            mask, mask_affine = real_data.load_volume(mask_path)
            real_data.check_same_grid(mask_path, mask, mask_affine, path, image, affine, "brain mask")
        seg_path = companion(path, "_seg")
        if seg_path is not None:
            seg, seg_affine = real_data.load_volume(seg_path)
            real_data.check_same_grid(seg_path, seg, seg_affine, path, image, affine, "segmentation")
            label = real_data.check_labels(seg_path, seg, cfg.labels)
        return real_data.slices_of(path, image, affine, mask=mask, label=label, cfg=cfg)

    def _generate_examples(self, split, items, root):
        yield from real_data.case_examples(self, split, items, self._load, root)
