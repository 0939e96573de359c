"""The labels of ``evaluate.pixel_set: reference``: each test volume's original segmentation,
resampled once into the paper's crop.

What the reference code scores (Zimmerer et al., ``MIC-DKFZ/vae-anomaly-experiments``, the code the
paper builds on: ``utils/preprcess_brain.py``, ``data/brain_ds.py::load_dataset``,
``brats_script.py::test_pixel``): every axial slice of a BraTS case but the first and last
``slice_offset=20`` -- no slice is left out for its brain area (``only_labeled_slices`` is None for
the pixel test set) -- each slice resized whole to 64 x 64, background included, its labels
the case's segmentation resized with it once (batchgenerators' ``ResizeTransform``; a pixel is
positive where ``seg > 0.5``).

Here, in the same way:

- **Labels**: the volume's original segmentation (``reader``: the builder's source files, or the
  phantom made again from its seed), reoriented to the canonical axes, the first and last ``skip``
  axial slices dropped, each remaining slice resampled once to ``size`` x ``size`` by nearest
  neighbour (``paper_crop``: output pixel i takes source voxel floor((i + 0.5) * n / size), the
  voxel under its centre -- the sampling positions of the scores' linear resize). Not, as before,
  the 64-pixel labels of our field of view written back into the scan's grid and resized again:
  that sampled the segmentation twice (thin lesions lost or grown) and knew nothing outside our
  crop and brain mask.
- **Slices our preprocessing left out** (``min_brain_fraction``: the ends of the brain) are in the
  set, as in the reference, **with their true labels**; we do not score them, so their maps are 0
  there (what ``localize`` writes too) and a lesion in them counts as missed. Before, their labels
  were 0, so such a lesion silently became healthy pixels. Excluding them instead would score
  another population than the paper's.
- Before a volume is used its segmentation is checked against the dataset: sampled on the
  volume's own slices as the builder sampled it (nearest neighbour, inside the brain mask), it
  must give the stored labels, else the source files changed since the build (one-line error).

Readers exist for the datasets with lesion labels: ``brain_phantom`` (made again from each
volume's seed: deterministic), ``brats`` and ``nifti_folder`` (their source folder, as built);
not for a config that registers raw heads first (``preprocess``: the labels were resampled into
template space by the build).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage

from tfvae.data import preprocessing
from tfvae.data.nifti import AFFINE_ATOL

# volume_id -> (segmentation in the stored axis order, its affine)
Reader = Callable[[str], tuple[np.ndarray, np.ndarray]]


class ReferenceLabelError(ValueError):
    """The original segmentation of a test volume cannot be had, or is not the one the dataset was built from."""


def nearest_indices(n: int, size: int) -> np.ndarray:
    """For ``size`` output pixels spanning ``n`` source voxels: the voxel under each pixel's centre,
    floor((i + 0.5) * n / size)."""
    return np.minimum(np.floor((np.arange(size) + 0.5) * n / size).astype(int), n - 1)


def paper_crop(label: np.ndarray, affine: np.ndarray, size: int, skip: int) -> np.ndarray:
    """(size, size, k) bool: ``label`` > 0 (stored with ``affine``) in canonical axes, every axial
    slice but the first and last ``skip``, each resampled whole to ``size`` x ``size`` by nearest
    neighbour (``nearest_indices``), once."""
    canonical = preprocessing.to_canonical(np.asarray(label) > 0, affine)
    kept = canonical[:, :, skip:max(canonical.shape[2] - skip, skip)]
    rows, cols = nearest_indices(kept.shape[0], size), nearest_indices(kept.shape[1], size)
    return kept[rows][:, cols]


def sampled_like_the_dataset(label: np.ndarray, volume) -> np.ndarray:
    """``label`` (the source grid) > 0 sampled as the builders sample labels (``preprocessing.volume_to_slices``:
    nearest neighbour at the field of view's pixel centres of the volume's slices, inside its brain mask):
    (z, S, S) bool, to compare with ``volume.label``."""
    geometry = volume.geometry
    canonical = preprocessing.to_canonical((np.asarray(label) > 0).astype(np.uint8), geometry.source_affine)
    size = volume.label.shape[1]
    x, y = preprocessing._sample_grid(geometry.center, geometry.step, size)
    z = np.asarray(volume.slice_index, int)
    coords = np.stack([np.broadcast_to(x, (len(z),) + x.shape), np.broadcast_to(y, (len(z),) + y.shape),
                       np.broadcast_to(z[:, None, None], (len(z),) + x.shape)])
    out = ndimage.map_coordinates(canonical, coords, order=0, mode="constant") > 0
    return out & (np.asarray(volume.brain_mask)[..., 0] > 0)


def checked(label: np.ndarray, affine: np.ndarray, volume) -> np.ndarray:
    """``label`` if it is the segmentation ``volume`` (a ``scoring.Volume``) was built from: the same
    grid, and the stored labels where the dataset sampled it; else a ``ReferenceLabelError``."""
    geometry = volume.geometry
    if tuple(np.shape(label)) != tuple(geometry.source_shape) or not np.allclose(
            affine, geometry.source_affine, atol=AFFINE_ATOL):
        raise ReferenceLabelError(
            f"{volume.volume_id}: its segmentation is {np.shape(label)} on another grid than the scan the dataset "
            f"was built from ({tuple(geometry.source_shape)}): the source changed since the build; rebuild the dataset")
    differ = int(np.sum(sampled_like_the_dataset(label, volume) != (volume.label[..., 0] > 0)))
    if differ:
        raise ReferenceLabelError(
            f"{volume.volume_id}: its segmentation sampled as the dataset was gives other labels at {differ} pixel(s) "
            "than the dataset stores: the source changed since the build; rebuild the dataset")
    return label


def reader(data_config: dict) -> Reader:
    """The original segmentation of each volume of the dataset ``data_config`` names (see the module
    docstring); a ``ReferenceLabelError`` when there is none to read."""
    from tfvae.data import pipelines as data

    b = data.builder(data_config)
    cfg = b.builder_config
    if getattr(cfg, "preprocess", False):
        raise ReferenceLabelError(
            f"evaluate.pixel_set=reference: {b.name}/{cfg.name} registers raw heads to a template first, so the "
            "slices were not cut from the scans' own grid and there is no original segmentation on it; use "
            "evaluate.pixel_set=fov")
    if b.name == "brain_phantom":
        return _phantom_reader(cfg)
    if b.name in ("brats", "nifti_folder"):
        folder = data.source_folder(b, data_config)
        return (_brats_reader if b.name == "brats" else _nifti_folder_reader)(cfg, folder)
    raise ReferenceLabelError(f"evaluate.pixel_set=reference: {b.name} has no lesion segmentations to read "
                              "(brain_phantom, brats and nifti_folder have); use evaluate.pixel_set=fov")


def _phantom_reader(cfg) -> Reader:
    from tfvae_datasets.brain_phantom import phantom
    from tfvae_datasets.brain_phantom.brain_phantom_dataset_builder import subject_seed

    def read(volume_id: str):
        split, index = volume_id.rsplit("_", 1)
        subject = phantom.synthesize_subject(subject_seed(cfg.split_seed(split), split, int(index)),
                                             tumours=split == "test", voxel_mm=cfg.voxel_mm, shift=cfg.shift)
        return subject.label, subject.affine
    return read


def _cases(found, folder: str, key) -> dict:
    cases = {key(c): c for c in found}
    if not cases:
        raise ReferenceLabelError(f"evaluate.pixel_set=reference: no cases in {folder}, the folder the test "
                                  "dataset was built from; its original segmentations are needed")
    return cases


def _case(cases: dict, volume_id: str, folder: str):
    if volume_id not in cases:
        raise ReferenceLabelError(f"{volume_id}: not found in {folder}, the folder the test dataset was built "
                                  "from; its original segmentation is needed (evaluate.pixel_set=reference)")
    return cases[volume_id]


def _brats_reader(cfg, folder: str) -> Reader:
    from etils import epath

    from tfvae_datasets import real_data
    from tfvae_datasets.brats import brats_dataset_builder as brats

    cases = _cases(brats.find_cases(epath.Path(folder)), folder, lambda c: c.name)

    def read(volume_id: str):
        case = _case(cases, volume_id, folder)
        seg_path = brats.case_file(case, "seg")
        seg, affine = real_data.load_volume(seg_path)
        return brats.convert_labels(seg_path, seg, case.name, cfg.cavity)[0], affine
    return read


def _nifti_folder_reader(cfg, folder: str) -> Reader:
    from etils import epath

    from tfvae_datasets import real_data
    from tfvae_datasets.nifti_folder import nifti_folder_dataset_builder as nifti_folder

    found = [c for c in nifti_folder.find_cases(epath.Path(folder), cfg.modality) if c.seg is not None]
    cases = _cases(found, folder, lambda c: c.volume_id)

    def read(volume_id: str):
        case = _case(cases, volume_id, folder)
        seg, affine = real_data.load_volume(case.seg)
        return real_data.check_labels(case.seg, seg, cfg.labels), affine
    return read
