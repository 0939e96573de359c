"""Reading users' NIfTI files safely: every problem is a ``BadInputError`` whose message is one
line naming the file and the problem (missing, corrupt or truncated file, not 3D, NaN or infinite
voxels, a singular affine, a mask or segmentation on another voxel grid than its image).
Used by the real-data builders (``tfvae_datasets``) and by ``localize.py``. ``write_maps`` writes
a volume's 2D maps back into its source grid as NIfTI files (evaluation's maps).
"""

from __future__ import annotations

import gzip
import os
import re
import zlib

import nibabel as nib
import numpy as np
from etils import epath

from tfvae import preprocessing

NIFTI_SUFFIXES = (".nii.gz", ".nii")
# how far two affines may differ (mm, per entry) and still describe the same voxel grid
AFFINE_ATOL = 1e-3


class BadInputError(ValueError):
    """A source file cannot be used; the message is one line ``<file>: <problem>``."""


def _one_line(text) -> str:
    return re.sub(r"\s+", " ", str(text)).strip()


def bad(path, problem) -> BadInputError:
    return BadInputError(f"{path}: {_one_line(problem)}")


def strip_nifti_suffix(name: str) -> str | None:
    """``name`` without ``.nii``/``.nii.gz``, or None when it is not a NIfTI file name."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def find_nifti(folder: epath.Path, stem: str) -> epath.Path | None:
    """``folder/stem.nii.gz`` or ``folder/stem.nii``, whichever exists."""
    for suffix in NIFTI_SUFFIXES:
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def load_volume(path, *, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """(data, affine) of a 3D NIfTI file; a trailing singleton 4th axis is dropped.

    Raises ``BadInputError`` naming the file for a missing, unreadable, corrupt or truncated
    file, a volume that is not 3D, and NaN or infinite voxels.
    """
    path = epath.Path(path)
    if not path.is_file():
        raise bad(path, "file not found")
    try:
        img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        if len(shape) != 3:
            raise bad(path, f"is {len(shape)}D (shape {shape}), expected a 3D volume")
        data = np.asarray(img.get_fdata(dtype=np.float64 if dtype == np.float64 else np.float32))
        data = data.reshape(shape).astype(dtype, copy=False)
        affine = np.asarray(img.affine, np.float64)
    except BadInputError:
        raise
    except PermissionError:
        raise bad(path, "cannot be read (permission denied)") from None
    except nib.spatialimages.HeaderDataError as e:
        raise bad(path, f"invalid NIfTI header: {e}") from None
    except (nib.filebasedimages.ImageFileError, EOFError, zlib.error, gzip.BadGzipFile, OSError, ValueError,
            MemoryError) as e:
        raise bad(path, f"cannot read NIfTI (corrupt or truncated file?): {type(e).__name__}: {e}") from None
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise bad(path, "invalid affine (singular or not finite) in the NIfTI header")
    if not np.all(np.isfinite(data)):
        count = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise bad(path, f"contains {count} NaN or infinite voxels")
    return data, affine


def check_same_grid(path, data, affine, image_path, image, image_affine, what: str) -> None:
    """A segmentation / mask must lie on its image's voxel grid."""
    if data.shape != image.shape:
        raise bad(path, f"{what} shape {data.shape} does not match image shape {image.shape} of {image_path}")
    if not np.allclose(affine, image_affine, rtol=0, atol=AFFINE_ATOL):
        diff = float(np.abs(affine - image_affine).max())
        raise bad(path, f"{what} affine differs from the affine of {image_path} (by up to {diff:.4g} mm)")


def write_maps(volume, out_dir: str, maps: dict) -> None:
    """``<volume>_<name>.nii.gz`` in the source volume's shape and affine, for each of ``maps``
    (name -> slices), plus the preprocessed ``image`` and the ``label``."""
    os.makedirs(out_dir, exist_ok=True)
    layers = {"image": (volume.image, 1), "label": (volume.label, 0), **{n: (m, 1) for n, m in maps.items()}}
    for name, (planes, order) in layers.items():
        data = preprocessing.slices_to_volume(planes, volume.slice_index, volume.geometry, order=order)
        data = data.astype(np.uint8) if name == "label" else data
        nib.save(nib.Nifti1Image(data, volume.geometry.source_affine),
                 os.path.join(out_dir, f"{volume.volume_id}_{name}.nii.gz"))
