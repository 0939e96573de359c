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
OUTPUT_TAG = "_tfvae_"  # in every name localize writes: never read back as a scan
IGNORED_PREFIXES = (".", "__")  # hidden files, macOS "._" AppleDouble files, "__MACOSX" folders
IGNORED_NAMES = frozenset({"Thumbs.db", "desktop.ini", "Icon\r", "$RECYCLE.BIN", "System Volume Information"})


def ignored(name: str) -> bool:
    """Whether a file or folder name is one no reader takes as data (every builder and localize ask
    this one function): hidden and operating-system metadata files, and tfvae's own outputs."""
    return name.startswith(IGNORED_PREFIXES) or name in IGNORED_NAMES or OUTPUT_TAG in name
# how far two affines may differ (mm, per entry) and still describe the same voxel grid
AFFINE_ATOL = 1e-3


class BadInputError(ValueError):
    """A source file cannot be used; the message is one line ``<file>: <problem>``."""


class UnknownOrientationError(BadInputError):
    """The header's qform_code and sform_code are both 0: the orientation of the voxel axes is unknown."""


DICOM_HINT = "convert it to NIfTI first, e.g. dcm2niix -z y -o OUTPUT_FOLDER DICOM_FOLDER"
ASSUMED_ORIENTATION = ("nibabel's fallback for a header without orientation: the stored axes taken as left, "
                       "anterior, superior (LAS) with the pixdim voxel sizes")
MEMORY_SHARE = 0.5  # a volume needing more than this share of the machine's memory is refused before reading


def is_dicom(path) -> bool:
    """Whether ``path`` is a DICOM Part 10 file (the "DICM" magic after the 128-byte preamble)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 1 << 34


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


def load_volume(path, *, dtype=np.float32, allow_unknown_orientation: bool = False,
                notes: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(data, affine) of a 3D NIfTI file; trailing singleton axes ((x, y, z, 1, 1)) are dropped.

    Raises ``BadInputError`` naming the file for a missing or unreadable file (permission denied
    said as such), a folder, a DICOM file (with how to convert it), a corrupt or truncated file, a
    header whose dimensions would not fit in memory, a volume that is not 3D, NaN or infinite
    voxels, and ``UnknownOrientationError`` when qform_code and sform_code are both 0 -- unless
    ``allow_unknown_orientation``: then ``ASSUMED_ORIENTATION`` is used and said in ``notes``.
    """
    path = epath.Path(path)
    if path.is_dir():
        raise bad(path, "is a folder, not a NIfTI file")
    if not path.is_file():
        raise bad(path, "file not found")
    if is_dicom(str(path)):
        raise bad(path, f"is a DICOM file, not NIfTI: {DICOM_HINT}")
    try:
        with open(str(path), "rb"):
            pass
        img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
        while len(shape) > 3 and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) != 3:
            raise bad(path, f"is {len(shape)}D (shape {tuple(int(s) for s in img.shape)}), expected a 3D volume")
        need = int(np.prod(shape, dtype=np.float64)) * np.dtype(dtype).itemsize
        if need > MEMORY_SHARE * _memory_bytes():
            raise bad(path, f"header dimensions {shape} need {need / 2**30:.1f} GiB, more than this machine's memory "
                            "allows (a corrupt header?)")
        codes = [int(img.header.get(k, 1)) for k in ("qform_code", "sform_code")] \
            if isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)) else [1]
        if not any(codes):
            text = ("qform_code and sform_code are both 0: the orientation of its axes is unknown and tfvae never "
                    "assumes it; set it in the header (e.g. img.set_qform(affine, code=1) in nibabel, or the "
                    "converter's option) or pass --force (force=True) to score it with " + ASSUMED_ORIENTATION)
            if not allow_unknown_orientation:
                raise UnknownOrientationError(f"{path}: {text}")
            if notes is not None:
                notes.append(f"{path}: orientation unknown (qform_code = sform_code = 0); assumed "
                             + ASSUMED_ORIENTATION + " (forced)")
        data = np.asarray(img.get_fdata(dtype=np.float64 if dtype == np.float64 else np.float32))
        data = data.reshape(shape).astype(dtype, copy=False)
        affine = np.asarray(img.affine, np.float64)
    except BadInputError:
        raise
    except PermissionError:
        raise bad(path, "cannot be read (permission denied)") from None
    except nib.spatialimages.HeaderDataError as e:
        raise bad(path, f"invalid NIfTI header: {e}") from None
    except MemoryError:
        raise bad(path, "does not fit in memory (header dimensions "
                        f"{tuple(int(s) for s in img.shape)})") from None
    except (nib.filebasedimages.ImageFileError, EOFError, zlib.error, gzip.BadGzipFile, OSError, ValueError) as e:
        raise bad(path, f"cannot read NIfTI (corrupt or truncated file?): {type(e).__name__}: {e}") from None
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise bad(path, "invalid affine (singular or not finite) in the NIfTI header")
    if not np.all(np.isfinite(data)):
        count = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise bad(path, f"contains {count} NaN or infinite voxels")
    return data, affine


def label_scaling(path) -> str:
    """The header's intensity scaling (scl_slope / scl_inter) of a NIfTI file, for messages."""
    try:
        img = nib.load(str(path))
        slope, inter = img.dataobj.slope, img.dataobj.inter
    except Exception:  # noqa: BLE001 - only for a message
        return "unknown scaling"
    return f"scl_slope {float(slope):g}, scl_inter {float(inter):g}, stored as {img.get_data_dtype()}"


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
