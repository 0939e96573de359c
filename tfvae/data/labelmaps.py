"""Label maps are not scans: recognising segmentations, lesion masks and brain masks by their names,
their folders and their content, so that no reader takes one as an image (a label map trained on as
a healthy scan is silently wrong). No TensorFlow here: the dataset builders and localize can both ask.

- By name: the words of a file's name (split at ``_``, ``-``, ``.`` and spaces) hold a label word --
  ``seg`` (BraTS, FSL FAST), ``dseg`` (BIDS), ``label``, ``gt``, ``consensus`` (MSLUB's
  ``consensus_gt``), ``aseg`` (FreeSurfer), ... (``LABEL_WORDS``) -- or a mask word (``mask``,
  ``brainmask``: a brain mask, ``MASK_WORDS``).
- By folder: a folder named ``labels``, ``labelsTr``, ``labelsTs`` (nnU-Net / the Medical
  Segmentation Decathlon), ``segmentations``, ``masks``, ... (``LABEL_FOLDERS``) holds label maps.
- By content: a volume of integers with few distinct values (``MAX_LABEL_VALUES``) is a label map,
  whatever its name (a scan has hundreds of grey values, even stored as integers).
- A label map that labels (``> 0``) most of the brain (``MAX_LESION_SHARE``) is a tissue or
  anatomy segmentation (CSF / grey / white matter, SynthSeg, aseg), not the lesions of a test case.
"""

from __future__ import annotations

import re

import numpy as np

LABEL_WORDS = frozenset({
    "seg", "segs", "segm", "segmentation", "segmentations", "dseg", "pveseg", "aseg", "aparc", "wmparc", "synthseg",
    "label", "labels", "labelmap", "labelmaps", "gt", "groundtruth", "consensus", "lesionmask", "lesionmasks",
    "annotation", "annotations", "roi",
})
MASK_WORDS = frozenset({"mask", "masks", "brainmask"})
LABEL_FOLDERS = re.compile(r"^(labels?(tr|ts|va|val)?|seg|segs|segmentations?|masks|gt|groundtruth|annotations?)$",
                           re.IGNORECASE)
MAX_LABEL_VALUES = 16  # distinct integer values of a label map (BraTS 4, tissue maps 3-9; scans: hundreds)
MAX_LESION_SHARE = 0.6  # of the brain labelled > 0: more is a tissue / anatomy segmentation, not lesions


def words(stem: str) -> list[str]:
    """The words of a file name (without its suffix), lower case: ``"T2W_consensus-gt"`` ->
    ``["t2w", "consensus", "gt"]``, ``"aparc+aseg"`` -> ``["aparc", "aseg"]``."""
    return [w for w in re.split(r"[_\-.+\s]+", stem.lower()) if w]


def name_kind(stem: str) -> str | None:
    """``"label"`` when the words of a file's name say segmentation / label / ground truth,
    ``"mask"`` when they say (brain) mask, else None (a scan, by its name)."""
    found = set(words(stem))
    if found & LABEL_WORDS or ("lesion" in found and found & MASK_WORDS):
        return "label"
    if found & MASK_WORDS:
        return "mask"
    return None


def label_folder(parts) -> str | None:
    """The first of the folder names ``parts`` (relative to the data folder) that holds label maps
    (``labelsTr``, ``labels``, ``segmentations``, ...), else None."""
    return next((p for p in parts if LABEL_FOLDERS.match(p)), None)


def content_reason(data: np.ndarray, sample: int = 200_000) -> str | None:
    """Why a volume is a label map by its content -- integers only, at most ``MAX_LABEL_VALUES``
    distinct values (``"holds only the integer values 0, 1, 2, 3"``) -- else None. A sample of
    ``sample`` voxels decides first, so a scan costs little."""
    flat = np.asarray(data).ravel()
    if flat.size == 0:
        return None
    if flat.size > sample:
        picked = flat[np.random.default_rng(0).integers(0, flat.size, sample)]
        if not _few_integers(picked):
            return None
    if not _few_integers(flat):
        return None
    values = np.unique(flat)
    shown = ", ".join(f"{v:g}" for v in values[:8]) + (", ..." if len(values) > 8 else "")
    return f"holds only the integer values {shown}"


def _few_integers(values: np.ndarray) -> bool:
    if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
        return False
    return len(np.unique(values)) <= MAX_LABEL_VALUES


def lesion_share(label: np.ndarray, brain: np.ndarray) -> float:
    """The share of the brain's voxels a label map labels (``> 0``)."""
    brain = np.asarray(brain) > 0
    total = int(brain.sum())
    return float(np.count_nonzero((np.asarray(label) > 0) & brain)) / total if total else 0.0


def refuse_label_map(path, data: np.ndarray, advice: str) -> None:
    """A ``nifti.BadInputError`` (one line naming ``path``, then ``advice``) when ``data``, read as a
    scan, is a label map by its content (``content_reason``), whatever its name; else nothing."""
    looks = content_reason(data)
    if looks:
        from tfvae.data.nifti import bad

        raise bad(path, f"{looks}: a label map or mask, not a scan; {advice}")
