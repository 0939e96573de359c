"""Reading users' scan files safely: the one reader every dataset builder (``tfvae_datasets``),
``localize`` and ``calibrate`` use (``load_volume``). Every problem is a ``BadInputError`` whose
message is one line naming the file, the problem and what to do (missing, corrupt or truncated
file, not 3D, infinite voxels or NaN inside the brain, a singular affine, no orientation, a mask
or segmentation on another voxel grid than its image); what the reader recognises and reads anyway
is said in one line each (``notes``, or the ``tfvae`` logger):

- format: by content where the name disagrees (gzip named ``.nii``, plain named ``.nii.gz``);
- orientation: where it comes from, per format (``orientation_source``); none: refused unless forced;
- background convention (``read_background``): 0 outside the brain; NaN outside it, a near-zero
  resampled background and a zero background's negative undershoot are read as 0;
- modality: the name (``modality_from_name``) and the CSF's brightness (``fluid_contrast``)
  against what is expected (``modality_warning``).

``write_maps`` writes a volume's 2D maps back into its source grid as NIfTI files (evaluation's maps).
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import struct
import zlib

import nibabel as nib
import numpy as np
from etils import epath

from tfvae.data import preprocessing

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
GZIP_MAGIC = b"\x1f\x8b"
log = logging.getLogger("tfvae")
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
                notes: list | None = None, expect_modality: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(data, affine) of a 3D scan file: data (x, y, z) as stored, ``dtype``; affine 4x4 voxel -> mm
    (RAS+ world). Trailing singleton axes ((x, y, z, 1, 1)) are dropped.

    What a file is comes from its content where its name disagrees: a gzip-compressed file named
    ``.nii`` is read decompressed, an uncompressed one named ``.nii.gz`` as it is (each said, with
    the rename to do). The orientation of the voxel axes must come from the file
    (``orientation_source``); where it carries none, ``UnknownOrientationError`` -- unless
    ``allow_unknown_orientation`` (``--force``): then nibabel's assumption is used and said.
    The background is read as ``read_background`` says: NaN outside the brain and a near-zero or
    slightly negative background (resampling ringing) become 0, each said. With
    ``expect_modality`` (t2, flair, t1, t1ce, pd) the file's name and its fluid's brightness are
    checked against it (``modality_warning``); without, a name that its intensities contradict
    (``..._T2w`` with dark fluid) is said.

    What is said goes to ``notes`` (one line each, naming the file), or to the ``tfvae`` logger
    when ``notes`` is None (the dataset builders).

    Raises ``BadInputError`` (one line, naming the file) for a missing or unreadable file
    (permission denied said as such), a folder, a DICOM file (with how to convert it), a file
    that is not an image volume, a corrupt or truncated file, a header whose dimensions would
    not fit in memory, a volume that is not 3D, a singular affine, infinite voxels and NaN
    voxels inside the brain (``read_background``).
    """
    path = epath.Path(path)
    said: list[str] = []
    if path.is_dir():
        raise bad(path, "is a folder, not a NIfTI file")
    if not path.is_file():
        raise bad(path, "file not found")
    if is_dicom(str(path)):
        raise bad(path, f"is a DICOM file, not NIfTI: {DICOM_HINT}")
    try:
        with open(str(path), "rb"):
            pass
        img, format_note = _read_image(str(path))
        if not isinstance(img, nib.spatialimages.SpatialImage) or isinstance(img, nib.Cifti2Image):
            raise bad(path, f"is a {type(img).__name__} file, not an image volume; give a 3D NIfTI scan")
        shape = tuple(int(s) for s in img.shape)
        while len(shape) > 3 and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) != 3:
            raise bad(path, f"is {len(shape)}D (shape {tuple(int(s) for s in img.shape)}), expected a 3D volume")
        need = int(np.prod(shape, dtype=np.float64)) * np.dtype(dtype).itemsize
        if need > MEMORY_SHARE * _memory_bytes():
            raise bad(path, f"header dimensions {shape} need {need / 2**30:.1f} GiB, more than this machine's memory "
                            "allows (a corrupt header?)")
        if format_note:
            said.append(f"{path}: {format_note}")
        source = orientation_source(img, str(path))
        if source is None:
            why, fix, assumed = _unknown_orientation(img)
            from tfvae.utils.console import option

            text = (f"{why}: the orientation of its axes is unknown and tfvae never assumes it; {fix} or pass "
                    f"{option('--force', 'force=True')} to score it with {assumed}")
            if not allow_unknown_orientation:
                raise UnknownOrientationError(f"{path}: {text}")
            said.append(f"{path}: orientation unknown ({why}); assumed {assumed} (forced)")
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
    data, background_notes = read_background(data, str(path))
    said += background_notes
    modality = modality_warning(str(path), data, expect_modality)
    if modality:
        said.append(modality)
    for line in said:
        if notes is not None:
            notes.append(line)
        else:
            log.warning("%s", line)
    return data, affine


def _read_image(path: str):
    """(nibabel image, note or None): the file read as what its first bytes say it is where its
    NIfTI name disagrees (gzip content named ``.nii``, plain content named ``.nii.gz``)."""
    with open(path, "rb") as f:
        head = f.read(2)
    name = os.path.basename(path).lower()
    compressed = head == GZIP_MAGIC
    if name.endswith(".nii") and compressed:
        with gzip.open(path, "rb") as f:
            img = _nifti_from_bytes(path, f.read())
        return img, ("is gzip-compressed but named .nii (its first bytes are 1f 8b): read decompressed; rename it "
                     "to .nii.gz, as other tools go by the name")
    if name.endswith(".nii.gz") and len(head) == 2 and not compressed:
        with open(path, "rb") as f:
            img = _nifti_from_bytes(path, f.read())
        return img, "is not gzip-compressed but named .nii.gz: read as a plain .nii; rename it to .nii"
    return nib.load(path), None


def _nifti_from_bytes(path: str, raw: bytes):
    """A single-file NIfTI-1 or NIfTI-2 image from its bytes (the header size says which)."""
    sizes = {struct.unpack(order + "i", raw[:4])[0] for order in "<>"} if len(raw) >= 4 else set()
    for size, klass in ((348, nib.Nifti1Image), (540, nib.Nifti2Image)):
        if size in sizes:
            return klass.from_bytes(raw)
    raise bad(path, "cannot read NIfTI (corrupt or truncated file, or another format under a NIfTI name?): its "
                    "header size is neither 348 nor 540 bytes")


NIFTI_XFORM = {1: "scanner", 2: "aligned", 3: "Talairach", 4: "MNI", 5: "template"}


def orientation_source(img, path: str | None = None) -> str | None:
    """Where the orientation of ``img``'s voxel axes comes from (a phrase), or None when its file
    carries none (``path``: the file, for the formats nibabel rewrites on reading):

    - NIfTI-1 / NIfTI-2 (.nii, .nii.gz, .hdr/.img pairs): the sform when sform_code > 0, else the
      qform when qform_code > 0; none when both codes are 0;
    - MGH / MGZ: the vox2ras matrix (Mdc, Pxyz_c); none when goodRASFlag is 0 (nibabel then puts
      FreeSurfer's default in, so the flag is read from the file);
    - Analyze 7.5 and SPM Analyze (.hdr/.img without the NIfTI magic): none, ever;
    - MINC 1/2: the direction cosines; PAR/REC: the PAR file's angulation and orientation; any
      other image nibabel reads (AFNI BRIK/HEAD, ECAT): its own header.
    """
    if isinstance(img, (nib.Nifti1Pair, nib.Nifti2Pair, nib.Nifti1Image, nib.Nifti2Image)):
        for key in ("sform_code", "qform_code"):
            code = int(img.header.get(key, 0))
            if code > 0:
                return f"the NIfTI {key[:5]} ({key} {code}: {NIFTI_XFORM.get(code, 'unknown')})"
        return None
    if isinstance(img, nib.MGHImage):
        return "the MGH vox2ras matrix (goodRASFlag 1)" if _mgh_good_ras(path) else None
    if isinstance(img, nib.AnalyzeImage):  # Analyze 7.5, SPM99 / SPM2 Analyze: no orientation field
        return None
    if isinstance(img, (nib.Minc1Image, nib.Minc2Image)):
        return "the MINC direction cosines"
    if isinstance(img, nib.PARRECImage):
        return "the PAR file's angulation and orientation"
    return f"the {type(img).__name__} header"


def _mgh_good_ras(path: str | None) -> bool:
    """Whether an MGH/MGZ file's goodRASFlag (big-endian int16 at byte 28) is set (nibabel replaces
    a header with the flag 0 by FreeSurfer's default on reading, so it is read from the file)."""
    if path is None:
        return True
    with open(path, "rb") as f:
        compressed = f.read(2) == GZIP_MAGIC
    with (gzip.open(path, "rb") if compressed else open(path, "rb")) as f:
        head = f.read(30)
    return len(head) == 30 and struct.unpack(">h", head[28:30])[0] != 0


def _unknown_orientation(img) -> tuple[str, str, str]:
    """(what the header lacks, how to fix it, what --force assumes) for a file without orientation."""
    if isinstance(img, nib.MGHImage):
        return ("the MGH header's goodRASFlag is 0", "convert it with its orientation (mri_convert with the right "
                "--in_orientation)", "FreeSurfer's default for it: coronal axes (left, inferior, anterior: LIA) "
                "with 1 mm voxels")
    if isinstance(img, (nib.Nifti1Pair, nib.Nifti2Pair, nib.Nifti1Image, nib.Nifti2Image)):
        return ("qform_code and sform_code are both 0", "set it in the header (e.g. img.set_qform(affine, code=1) in "
                "nibabel, or the converter's option)", ASSUMED_ORIENTATION)
    kind = "an Analyze 7.5" if isinstance(img, nib.AnalyzeImage) else f"a {type(img).__name__}"
    return (f"{kind} header carries no orientation",
            "convert it to NIfTI with its orientation (e.g. from the DICOM files with dcm2niix)", ASSUMED_ORIENTATION)


# --- the background convention: what is brain and what is not -------------------------------------------------
NEAR_ZERO = 0.05  # |value| at or below this share of the brain's level: background, where the background is not 0
NEGLIGIBLE = 1e-3  # ... provided the background's median |value| is below this share (ringing, not a noise floor)
THIN_SLAB = 0.25  # an axis with at most this share of the longest axis's voxels: a slab's (its faces are cuts)
SIGNED = 0.5  # values below -SIGNED * level: both signs carry signal (a z-scored scan); nothing is changed


def read_background(data: np.ndarray, path: str = "array") -> tuple[np.ndarray, list[str]]:
    """``(data, notes)``: ``data`` (any shape, float) with what is background set to exactly 0, as the
    preprocessing's brain mask (the non-zero voxels) needs; ``notes`` say what was changed (one line
    each, naming ``path``); an untouched volume has none.

    - NaN voxels are background when they all lie outside the brain, the region the finite
      non-zero voxels enclose (a masked scan whose tool writes NaN outside the mask); NaN inside
      it, or any infinite voxel, is a ``BadInputError`` with the count and what to do.
    - A magnitude scan (no value below ``-SIGNED`` times its level, the 99th percentile of its
      |values|) whose background is near zero but not exactly zero (B-spline or sinc resampling:
      most of the voxels within ``NEAR_ZERO`` of the level are not 0, and their median is
      negligible) is read with its voxels at or below ``NEAR_ZERO * level`` *outside the brain they
      enclose* as background (dark tissue inside -- CSF, necrosis -- is kept); a noise floor (an unmasked head's air) is left as it is (the skull-strip check judges it).
    - In a magnitude scan with a zero background, negative voxels outside the brain (fewer than the
      zeros: resampling's undershoot, not an unmasked head's signed noise) are background.
    Scans with an exactly-zero background and no negative voxels are returned unchanged.
    """
    notes = []
    data = np.asarray(data)
    finite = np.isfinite(data)
    if not finite.all():
        data = _nan_background(data, finite, path, notes)
    zeros = int(np.count_nonzero(data == 0))
    negative = int(np.count_nonzero(data < 0))
    if not negative and 2 * zeros >= data.size:
        return data, notes  # a zero background, as the convention is (most scans: nothing more to compute)
    top = float(np.abs(data).max()) if data.size else 0.0
    if top == 0:
        return data, notes
    magnitude = np.abs(data)
    level = float(np.percentile(magnitude[magnitude > 1e-3 * top], 99))
    if float(data.min()) < -SIGNED * level:
        return data, notes  # both signs carry signal: the background is what is exactly 0
    tol = NEAR_ZERO * level
    near = magnitude <= tol
    tiny = int(np.count_nonzero(near)) - zeros
    if tiny > zeros and float(np.median(magnitude[near])) < NEGLIGIBLE * level:
        kept = _enclosed(data > tol)  # dark tissue the brain encloses (CSF, necrosis) is kept
        notes.append(f"{path}: its background is near 0 but not 0 ({tiny} voxels within +-{tol:.3g}, "
                     f"{100 * NEAR_ZERO:g}% of its 99th percentile {level:.4g}"
                     + (f"; {negative} negative, down to {float(data.min()):.3g}" if negative else "")
                     + "), as resampling with B-spline or sinc interpolation leaves it: those voxels are read as "
                     f"background and the {int(kept.sum())} above as the brain; to choose the brain yourself, give "
                     "its brain mask (<scan>_mask.nii.gz beside it, or --mask)")
        return np.where(kept, data, 0).astype(data.dtype, copy=False), notes
    if negative and zeros > negative:  # ringing around a zero background, not a signed noise floor
        notes.append(f"{path}: {negative} negative voxels (down to {float(data.min()):.3g}, against a 99th "
                     f"percentile of {level:.4g}), as resampling's undershoot leaves them: read as background (0); "
                     "to choose the brain yourself, give its brain mask (<scan>_mask.nii.gz beside it, or --mask)")
        inside = _enclosed(data > 0)  # undershoot inside the brain stays tissue (non-zero: in the mask)
        return np.where((data < 0) & ~inside, 0, data).astype(data.dtype, copy=False), notes
    return data, notes


def _enclosed(tissue: np.ndarray) -> np.ndarray:
    """``tissue`` (bool, any shape) with the holes it encloses filled -- in 3D, and in each slice of a
    slab (an axis of at most ``THIN_SLAB`` of the longest's voxels), whose cut faces open what its
    slices enclose: the brain a background convention must not reach into."""
    from scipy import ndimage

    brain = ndimage.binary_fill_holes(tissue)
    thin = [axis for axis in range(tissue.ndim) if tissue.ndim == 3 and tissue.shape[axis] <= THIN_SLAB * max(tissue.shape)]
    for axis in thin:
        planes = np.moveaxis(brain, axis, 0)  # a view: filled in place
        for k in range(planes.shape[0]):
            planes[k] |= ndimage.binary_fill_holes(np.moveaxis(tissue, axis, 0)[k])
    return brain


def _nan_background(data, finite, path, notes):
    """``data`` with its NaN background set to 0 (said in ``notes``), or a ``BadInputError``.

    The brain is the finite non-zero voxels with the holes they enclose filled (in 3D, and in each
    slice of a slab -- an axis of at most ``THIN_SLAB`` of the longest's voxels -- whose cut faces
    open what its slices enclose); a NaN voxel inside it is refused, every other NaN voxel is
    background."""
    total = int(finite.size - np.count_nonzero(finite))
    infinite = int(np.count_nonzero(np.isinf(data)))
    if infinite:
        raise bad(path, f"contains {total} NaN or infinite voxels ({infinite} infinite): replace them (e.g. "
                        "np.nan_to_num) or rerun the step that wrote them")
    tissue = finite & (np.where(finite, data, 0) != 0)
    if not tissue.any():
        raise bad(path, f"contains {total} NaN or infinite voxels and no other non-zero voxel: an empty or failed "
                        "output? rerun the step that wrote it")
    brain = _enclosed(tissue)
    n_inside = int(np.count_nonzero(~finite & brain))
    if n_inside:
        raise bad(path, f"contains {total} NaN or infinite voxels, {n_inside} of them inside the brain (NaN is read as "
                        "background only outside it): rerun the step that wrote them (a division by zero in bias "
                        "correction or normalisation?), or set them to 0 if they mean no signal (fslmaths IN -nan OUT)")
    notes.append(f"{path}: {total} NaN voxels ({100 * total / data.size:.0f}%), all outside the brain, as masking "
                 "tools write them: read as background (0)")
    return np.where(finite, data, 0).astype(data.dtype, copy=False)


# --- modality: what the file's name says and what its intensities show ------------------------------------------
MODALITY_ALIASES = {"t2": "t2", "t2w": "t2", "flair": "flair", "t2f": "flair", "t1": "t1", "t1w": "t1",
                    "t1n": "t1", "mprage": "t1", "mp2rage": "t1", "spgr": "t1", "t1ce": "t1ce", "t1c": "t1ce",
                    "t1gd": "t1ce", "t1post": "t1ce", "pd": "pd", "pdw": "pd"}
# FLAIR under the names scanners and converters give it, anywhere in the name and in any case:
# "flair" (T2_FLAIR, AX_FLAIR_T2, t2flair), Siemens' dark fluid and TIRM (t2_tirm_tra_dark-fluid),
# SPACE dark fluid (t2_spc_da-fl), BraTS 2023's t2f
FLAIR_NAME = re.compile(r"flair|dark[-_ ]?fluid|(?<![a-z])tirm|(?<![a-z])da-?fl(?![a-z])|(?<![a-z0-9])t2f(?![a-z0-9])")
NOT_A_SCAN = {"seg", "mask", "label", "labels", "brainmask", "dseg", "probseg", "roi"}
FLUID = {"t2": "bright", "flair": "dark", "t1": "dark", "t1ce": "dark", "pd": None}  # CSF against white matter
FLUID_SKEW = 0.1  # the brain's quantile skew (5/50/95%) beyond +-this ...
FLUID_EDGE = (-0.2, -0.1)  # ... and its edge's median (share of the 5-95% range from the median) below / above


def modality_from_name(path: str) -> str | None:
    """The MRI modality a file name suggests (t2, flair, t1, t1ce or pd; ``..._t1ce.nii.gz`` ->
    "t1ce", ``t2_tirm_tra_dark-fluid_4.nii`` -> "flair"), or None; the folders are not read."""
    name = re.sub(r"\.(nii(\.gz)?|mg[hz]|hdr|img)$", "", os.path.basename(str(path)).lower())
    tokens = [t for t in re.split(r"[_.\-\s]+", name) if t]
    if tokens and tokens[-1] in NOT_A_SCAN:
        return None
    if FLAIR_NAME.search(name):
        return "flair"
    found = [MODALITY_ALIASES[t] for t in tokens if t in MODALITY_ALIASES]
    return found[-1] if found else None


def fluid_contrast(data: np.ndarray, brain: np.ndarray | None = None) -> tuple[str | None, str]:
    """``(fluid, evidence)``: whether the CSF of a skull-stripped 3D scan looks "bright" (T2-weighted)
    or "dark" (FLAIR, T1), or None when the intensities do not say, with the measures in words.

    CSF is the brain's extreme tissue and lies at its edge (sulcal and peri-cerebral CSF): in a
    T2-weighted scan the brain's intensities trail off to the bright side (quantile skew
    ``((q95 - q50) - (q50 - q5)) / (q95 - q5)`` above ``FLUID_SKEW``) and its edge voxels are not
    darker than the median; in FLAIR and T1 the skew is negative and the edge darker. ``brain``
    defaults to the non-zero voxels; fewer than 500 of them say nothing.
    """
    from scipy import ndimage

    data = np.asarray(data)
    brain = data != 0 if brain is None else np.asarray(brain) > 0
    if data.ndim != 3 or int(brain.sum()) < 500:
        return None, "too few brain voxels to judge"
    values = data[brain]
    q5, q50, q95 = (float(v) for v in np.percentile(values, [5, 50, 95]))
    if not q95 > q5:
        return None, "no intensity range to judge"
    skew = ((q95 - q50) - (q50 - q5)) / (q95 - q5)
    edge_voxels = brain & ~ndimage.binary_erosion(brain, border_value=1)  # a cut face is no edge
    if not edge_voxels.any():
        return None, "no brain edge to judge"
    edge = (float(np.median(data[edge_voxels])) - q50) / (q95 - q5)

    def measures(side):
        return (f"its CSF looks {side}: the brain's edge, where CSF lies, is {abs(edge):.2f} of the 5-95% intensity "
                f"range {'below' if edge < 0 else 'above'} the median and the intensities trail off to the "
                f"{side} side (quantile skew {skew:+.2f})")

    if skew <= -FLUID_SKEW and edge <= FLUID_EDGE[0]:
        return "dark", measures("dark")
    if skew >= FLUID_SKEW and edge >= FLUID_EDGE[1]:
        return "bright", measures("bright")
    return None, f"its CSF's brightness is unclear (edge {edge:+.2f}, quantile skew {skew:+.2f})"


def modality_warning(path: str, data: np.ndarray, expected: str | None = None,
                     brain: np.ndarray | None = None) -> str | None:
    """One line naming ``path`` when the scan looks like another modality than ``expected`` (by its
    name, ``modality_from_name``, or by its fluid, ``fluid_contrast``: a T2 has bright CSF, FLAIR
    and T1 dark), with what to do; None when nothing disagrees. Without ``expected``, only a name
    that the intensities contradict is said (``..._T2w`` with dark fluid)."""
    named = modality_from_name(path)
    reference = expected or named
    if reference is None or (expected is None and FLUID.get(named) is None):
        return None
    seen, evidence = fluid_contrast(data, brain) if FLUID.get(reference) else (None, "")
    seen_off = seen is not None and seen != FLUID.get(reference)
    guess = "FLAIR or T1" if seen == "dark" else "T2"
    if expected is None:
        if not seen_off:
            return None
        return (f"{path}: named {named}, but {evidence}, where in a {named.upper()} it is {FLUID[named]} (CSF is "
                f"brighter than white matter in T2-weighted scans, darker in FLAIR and T1): it looks like {guess}; "
                "check which contrast it is and rename it")
    name_off = named is not None and named != expected
    if not (name_off or seen_off):
        return None
    said = ([f"its name says {named}"] if name_off else []) + ([evidence] if seen_off else [])
    return (f"{path}: looks like {named if name_off else guess}, not {expected}: {'; '.join(said)} (CSF is brighter "
            f"than white matter in T2-weighted scans, darker in FLAIR and T1); give a {expected} scan, or use a run "
            "trained on this contrast (a model flags another contrast's normal tissue as anomalous)")


def label_scaling(path) -> str:
    """The header's intensity scaling (scl_slope / scl_inter) of a NIfTI file, for messages."""
    try:
        img, _ = _read_image(str(path))
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


def write_scan(path: str, data: np.ndarray, affine: np.ndarray) -> None:
    """``data`` as a NIfTI file at ``path`` with ``affine`` as both its qform and sform (codes 1,
    scanner), written whole or not at all (``tfvae.utils.files.written_whole``)."""
    from tfvae.utils import files

    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with files.written_whole(path) as tmp:
        nib.save(img, tmp)
