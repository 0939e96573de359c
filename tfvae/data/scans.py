"""The user's scans as files: finding the NIfTI scans among files and folders (``scan_files``), the
brain mask beside each (``find``), their names (``stem``), and one scan through a run's
preprocessing (``slice_scan``). One rule for every reader: ``localize``, ``calibrate`` on a site's
healthy scans (``healthy_scans``) and the raw-head preprocessing.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

from tfvae.data import labelmaps, nifti, preprocessing
from tfvae.data.pipelines import clip as clip_lib
from tfvae.data.nifti import NIFTI_SUFFIXES


def slice_scan(data: np.ndarray, affine: np.ndarray, *, image_size: int, fov_mm: float, min_brain_fraction: float,
               mask: np.ndarray | None = None, clip: float | None = None, force: bool = False):
    """``(sliced, outside)``: a scan that is in no dataset through the run's preprocessing
    (``preprocessing.volume_to_slices``, then ``data.clip``), and the sentence saying how much of its
    brain lies outside the field of view (None when under ``preprocessing.MAX_OUTSIDE_FOV``; more is
    a one-line ``ValueError`` unless ``force``)."""
    sliced = preprocessing.volume_to_slices(data, affine, mask=mask, image_size=image_size, fov_mm=fov_mm,
                                            min_brain_fraction=min_brain_fraction)
    outside = (f"{100 * sliced.outside_fov:.1f}% of the brain lies outside the run's {fov_mm:g} mm field of view"
               if sliced.outside_fov > preprocessing.MAX_OUTSIDE_FOV else None)
    if outside and not force:
        from tfvae.utils.console import option

        raise ValueError(f"{outside} and would not be scored (check the voxel sizes in the header); pass "
                         f"{option('--force', 'force=True')} to score the rest anyway")
    return dataclasses.replace(sliced, image=clip_lib(sliced.image, clip)), outside


def training_modality(builder_config) -> str:
    """The modality a run was trained on: its builder config's (t2 where it names none: the paper's,
    and what a ``nifti_folder`` of single scans is taken to hold)."""
    return getattr(builder_config, "modality", None) or "t2"


def scan_files(items) -> list[str]:
    """The NIfTI scans among ``items`` (files, or folders searched for *.nii / *.nii.gz, skipping
    files named as label maps or masks -- ``_seg``, ``_label``, ``consensus_gt``, ``_mask``, ...:
    ``labelmaps.name_kind`` -- and tfvae's own outputs); a missing item, an empty folder, a folder
    of label maps (``labelsTr/``) or of files all named as label maps is a one-line ``ValueError``."""
    scans = []
    for item in items:
        if os.path.isdir(item):
            try:
                names = sorted(n for n in os.listdir(item) if not nifti.ignored(n))
            except PermissionError:
                raise ValueError(f"{item}: cannot be read (permission denied)") from None
            stems = {n: nifti.strip_nifti_suffix(n) for n in names}
            niftis = [n for n in names if stems[n] is not None]
            found = [os.path.join(item, n) for n in niftis if labelmaps.name_kind(stems[n]) is None]
            folder = labelmaps.label_folder([os.path.basename(os.path.normpath(item))])
            if folder and found:
                raise ValueError(f"{item}: a folder of label maps ({folder}/, as nnU-Net and the Decathlon name "
                                 "them), not of scans; give the scans' folder (e.g. imagesTs/)")
            if not found and niftis:
                raise ValueError(f"{item}: its {len(niftis)} NIfTI file(s) (e.g. {niftis[0]}) are named as label maps "
                                 "or masks (seg, label, gt, mask, ...), not scans; give the scans")
            if not found:
                dicom = [n for n in names[:1000] if nifti.is_dicom(os.path.join(item, n))]
                if dicom:
                    raise ValueError(f"{item}: holds DICOM files ({len(dicom)}, e.g. {dicom[0]}) and no NIfTI scan: "
                                     f"{nifti.DICOM_HINT}")
                raise ValueError(f"{item}: no .nii or .nii.gz scans in this folder")
            scans += found
        elif os.path.isfile(item):
            scans.append(item)
        else:
            raise ValueError(f"{item}: no such file or folder")
    return scans


def stem(path: str) -> str:
    return re.sub(r"\.nii(\.gz)?$", "", os.path.basename(path))


def find(items) -> list[dict]:
    """``[{"scan": path, "mask": path or None}]`` for the NIfTI scans among ``items`` (files, or
    folders searched as localize searches them: ``*_seg``, ``*_mask`` and tfvae's outputs skipped);
    a missing item or an empty folder is a one-line ``ValueError``."""
    out = []
    for scan in scan_files(items):
        base = os.path.join(os.path.dirname(scan), stem(scan))
        mask = next((base + "_mask" + s for s in NIFTI_SUFFIXES if os.path.isfile(base + "_mask" + s)), None)
        out.append({"scan": os.path.abspath(scan), "mask": os.path.abspath(mask) if mask else None})
    names = [stem(p["scan"]) for p in out]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"several healthy scans are named {', '.join(repeated)}; give each scan once")
    return out
