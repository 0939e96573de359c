"""Synthetic T2-weighted brain MRI volumes with synthetic tumours and exact labels.

The phantom lets the whole pipeline run offline: it needs no real scans, only the MNI ICBM152
2009a templates that ship inside the ``nilearn`` package (no download).

Model of one subject (every draw comes from ``np.random.default_rng((seed, tumours))``, so the
result is a pure function of ``(seed, tumours, voxel_mm)``; healthy and tumour subjects with the
same seed are *different* brains, so seed ranges for training and test may overlap without
leaking anatomy):

1. **Anatomy** (:func:`load_anatomy`, cached): the 1 mm grey-matter (GM) and white-matter (WM)
   probability maps and the brain mask (T1 template > 0.2) are resampled onto a ``voxel_mm``
   grid covering the brain bounding box plus a 12 mm margin (Gaussian anti-aliasing, then
   linear interpolation).  CSF = clip(brain - GM - WM, 0, 1), which holds the ventricles and
   the sulcal / peri-cerebral CSF of a skull-stripped scan.
2. **Deformation**: a random affine about the grid centre (rotations +-5 degrees about each
   axis, per-axis scale 0.94-1.06, translation +-4 mm) plus an elastic displacement field
   (smooth Gaussian random field, correlation length 20 mm, 1.5-3 mm standard deviation per
   component).  The tissue maps are pulled through it with
   ``scipy.ndimage.map_coordinates(order=1)``; the brain mask is ``GM + WM + CSF >= 0.5``
   of the warped maps, so it follows the deformation.
3. **Healthy T2 contrast** (BrainWeb-like): CSF 250, GM 100, WM 70, each scaled by its own
   per-subject factor in [0.9, 1.1]; a voxel is the probability-weighted mix of the three
   (partial volume, fading to 0 at the brain edge).
4. **Tumours** (``tumours=True``): 1, 2 or 3 lesions (probabilities 0.6, 0.3, 0.1).  Centres
   are drawn with weight ``WM^2 + 0.01`` among brain voxels at least ``core + 8 mm`` from the
   brain edge; satellite lesions lie within 20 mm (axially) of the first one, so the tumour
   spans a limited z-range and most axial slices stay tumour-free.  Per lesion:

   * core radius 4-20 mm, enhancing rim 2-5 mm thick, necrosis in 75 % of lesions whose core
     is thick enough; edema margin 5-20 mm beyond the core, scaled locally by
     ``0.3 + 0.7 * WM fraction`` (edema spreads along white matter) and kept out of
     CSF-dominant voxels.  Sizes are clamped so every compartment spans at least one voxel.
   * irregular shape: all radii are measured in ``|x - c| / (1 + a * f(x))`` with ``f`` a
     smooth unit-variance random field (10 mm correlation, clipped to +-2) and
     ``a`` in [0.1, 0.2].
   * mass effect, applied to the tissue *before* painting: tissue at distance ``r`` from the
     centre comes from distance ``cbrt(r^3 - R^3)`` (a sphere of radius
     ``R = k * (core + edema / 2)``, ``k`` in [0.6, 0.9], is inserted and the surrounding
     tissue pushed radially outwards, conserving volume), compressing ventricles and sulci.
   * T2 values: necrosis (label 1) 210-250, i.e. about CSF; enhancing rim (label 4) 110-150;
     edema (label 2) 150-220 next to the core, fading linearly towards the healthy tissue
     value (to 30-60 % of the contrast) at its outer edge.  Tumour intensities carry 8 %
     smooth heterogeneity (6 mm correlation).  Edema and necrosis are about as bright as CSF,
     so a plain intensity threshold cannot separate tumour from healthy tissue perfectly.
   * compartments are painted over the healthy image with partial-volume edges one voxel
     wide, edema of all lesions first, then rims, then necrosis.  Labels (BraTS convention
     0 / 1 / 2 / 4) are the voxels whose centre lies inside a compartment, restricted to the
     brain mask.
5. **Acquisition**: a multiplicative bias field ``exp(b * f)`` (50 mm correlation,
   ``b`` in [0.05, 0.08], i.e. about +-15 %), then Rician noise
   ``sqrt((s + n1)^2 + n2^2)`` with ``n1, n2 ~ N(0, sigma^2)``, ``sigma`` 2-5 % of the
   subject's WM intensity, so tumours are exactly as noisy as healthy tissue.  Finally the
   background (outside the brain mask) is set to exactly 0, as in brain-extracted BraTS / HCP
   scans, so a "non-zero voxels" brain mask recovers ``brain_mask``.

6. **Another site** (``shift``, ``shifts.Shift``): the same subject acquired with thick slices,
   another T2 protocol, a stronger bias field or more noise, from an older population (atrophy),
   or with partly hypointense tumours; see ``shifts.py``. Without a shift nothing above changes.

At ``voxel_mm=2`` a subject is an (85, 103, 90) volume and takes about half a second of CPU time.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from scipy import ndimage

from tfvae_datasets.brain_phantom import shifts

TISSUE_T2 = {"csf": 250.0, "gm": 100.0, "wm": 70.0}
"""Nominal T2 intensity of each healthy tissue class (BrainWeb-like, arbitrary units)."""

LABEL_NECROSIS = 1
LABEL_EDEMA = 2
LABEL_ENHANCING = 4

_GRID_MARGIN_MM = 12.0
_MAX_ROTATION_DEG = 5.0
_MAX_SCALE = 0.06
_MAX_TRANSLATION_MM = 4.0
_ELASTIC_SCALE_MM = 20.0
_ELASTIC_STD_MM = (1.5, 3.0)
_CONTRAST_JITTER = 0.10
_BIAS_SCALE_MM = 50.0
_BIAS_AMPLITUDE = (0.05, 0.08)
_NOISE_FRACTION_OF_WM = (0.02, 0.05)

_TUMOUR_COUNT_PROBS = (0.6, 0.3, 0.1)
_CORE_MM = (4.0, 20.0)
_RIM_MM = (2.0, 5.0)
_EDEMA_MM = (5.0, 20.0)
_NECROSIS_PROB = 0.75
_SATELLITE_Z_MM = 20.0
_CENTRE_DEPTH_MARGIN_MM = 8.0
_PLACEMENT_MM = 4.0
_SHAPE_SCALE_MM = 10.0
_SHAPE_AMPLITUDE = (0.1, 0.2)
_MASS_FRACTION = (0.6, 0.9)
_T2_NECROSIS = (210.0, 250.0)
_T2_ENHANCING = (110.0, 150.0)
_T2_EDEMA = (150.0, 220.0)
_EDEMA_FADE = (0.3, 0.6)
_TEXTURE_SCALE_MM = 6.0
_TEXTURE_AMPLITUDE = 0.08


@dataclasses.dataclass(frozen=True)
class Anatomy:
    """Template anatomy on a ``voxel_mm`` grid (arrays are read-only: the object is cached)."""

    gm: np.ndarray  # float32 (X, Y, Z) grey-matter probability
    wm: np.ndarray  # float32 (X, Y, Z) white-matter probability
    csf: np.ndarray  # float32 (X, Y, Z) CSF probability, clip(brain - gm - wm, 0, 1)
    brain_mask: np.ndarray  # bool (X, Y, Z), gm + wm + csf >= 0.5
    affine: np.ndarray  # float64 (4, 4) voxel -> mm (RAS+, MNI space)


@dataclasses.dataclass(frozen=True)
class SyntheticSubject:
    """One synthetic T2-weighted scan with its exact tumour labels."""

    image: np.ndarray  # float32 (X, Y, Z), T2 intensities, exactly 0 outside the brain mask
    brain_mask: np.ndarray  # bool (X, Y, Z)
    label: np.ndarray  # uint8 (X, Y, Z), BraTS convention 0 / 1 necrosis / 2 edema / 4 enhancing
    affine: np.ndarray  # float64 (4, 4) voxel -> mm (RAS+), voxel_mm on the diagonal


@dataclasses.dataclass(frozen=True)
class _Tumour:
    """Geometry and intensities of one lesion (lengths in mm, centre in voxel indices)."""

    centre: np.ndarray
    core_mm: float
    rim_mm: float
    has_necrosis: bool
    edema_mm: float
    mass_mm: float
    shape_amplitude: float
    t2_necrosis: float
    t2_enhancing: float
    t2_edema: float
    edema_fade: float
    lobes: tuple = ()  # ((centre in voxel indices, radius mm), ...): more lobes of a lobulated lesion


# --------------------------------------------------------------------------- anatomy


def _read_templates() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 1 mm MNI152 2009a brain mask, GM and WM maps (float32) and their affine."""
    from nilearn import datasets  # deferred: importing nilearn takes a few seconds

    brain = datasets.load_mni152_brain_mask(resolution=1)
    gm = datasets.load_mni152_gm_template(resolution=1)
    wm = datasets.load_mni152_wm_template(resolution=1)
    if not np.allclose(brain.affine[:3, :3], np.eye(3)):
        raise ValueError(f"expected a 1 mm axis-aligned template, got affine {brain.affine}")
    maps = [np.asarray(img.get_fdata(dtype=np.float32)) for img in (brain, gm, wm)]
    return maps[0], maps[1], maps[2], np.asarray(brain.affine, dtype=np.float64)


def _resample(volume: np.ndarray, origin: np.ndarray, shape: tuple[int, ...], voxel_mm: float):
    """Resample a 1 mm volume onto the grid ``origin + voxel_mm * index`` (anti-aliased)."""
    sigma = max((voxel_mm - 1.0) / 2.0, 0.0)
    smoothed = ndimage.gaussian_filter(volume, sigma) if sigma > 0 else volume
    return ndimage.affine_transform(
        smoothed, np.full(3, voxel_mm), offset=origin, output_shape=shape, order=1, cval=0.0
    ).astype(np.float32)


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


@functools.lru_cache(maxsize=8)
def load_anatomy(voxel_mm: float = 2.0) -> Anatomy:
    """MNI152 2009a tissue maps resampled onto a ``voxel_mm`` grid around the brain (cached)."""
    if voxel_mm < 1.0:
        raise ValueError(f"voxel_mm must be >= 1 (the templates are 1 mm), got {voxel_mm}")
    brain_1mm, gm_1mm, wm_1mm, template_affine = _read_templates()
    inside = np.argwhere(brain_1mm > 0)
    origin = inside.min(axis=0) - _GRID_MARGIN_MM
    extent = inside.max(axis=0) + _GRID_MARGIN_MM - origin
    shape = tuple(int(n) for n in np.ceil(extent / voxel_mm).astype(int) + 1)
    brain, gm, wm = (_resample(v, origin, shape, voxel_mm) for v in (brain_1mm, gm_1mm, wm_1mm))
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    grid_to_template = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    grid_to_template[:3, 3] = origin
    return Anatomy(
        gm=_readonly(gm),
        wm=_readonly(wm),
        csf=_readonly(csf),
        brain_mask=_readonly(gm + wm + csf >= 0.5),
        affine=_readonly(template_affine @ grid_to_template),
    )


# --------------------------------------------------------------------------- random fields


def _smooth_field(rng: np.random.Generator, shape, voxel_mm: float, scale_mm: float) -> np.ndarray:
    """Smooth Gaussian random field with unit variance at every voxel (float64).

    A sum of Gaussian bumps of width ``scale_mm`` on a lattice of spacing ``scale_mm`` with
    standard-normal weights, evaluated separably (one small matrix product per axis).
    """
    bases = []
    for n in shape:
        x = np.arange(n) * voxel_mm
        knots = np.arange(-2.0 * scale_mm, x[-1] + 3.0 * scale_mm, scale_mm)  # 2 knots beyond each end
        basis = np.exp(-0.5 * ((x[:, None] - knots[None, :]) / scale_mm) ** 2)
        bases.append(basis / np.linalg.norm(basis, axis=1, keepdims=True))
    weights = rng.standard_normal(tuple(b.shape[1] for b in bases))
    return np.einsum("ia,jb,kc,abc->ijk", *bases, weights, optimize=True)


def _rotation(angles_rad: np.ndarray) -> np.ndarray:
    """Rotation matrix Rz @ Ry @ Rx for rotations about the x, y and z axes."""
    cx, cy, cz = np.cos(angles_rad)
    sx, sy, sz = np.sin(angles_rad)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _random_deformation(rng: np.random.Generator, shape, voxel_mm: float):
    """Random affine + elastic deformation.

    Returns the source voxel coordinates (3, X, Y, Z) of every output voxel and the affine's
    linear part (which maps extra output-space displacements to source space).
    """
    angles = np.deg2rad(rng.uniform(-_MAX_ROTATION_DEG, _MAX_ROTATION_DEG, 3))
    scales = rng.uniform(1.0 - _MAX_SCALE, 1.0 + _MAX_SCALE, 3)
    matrix = _rotation(angles) @ np.diag(1.0 / scales)
    shift = rng.uniform(-_MAX_TRANSLATION_MM, _MAX_TRANSLATION_MM, 3) / voxel_mm
    elastic_std = rng.uniform(*_ELASTIC_STD_MM) / voxel_mm
    centre = (np.asarray(shape) - 1) / 2.0
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    coords = np.empty((3, *shape), dtype=np.float32)
    for d in range(3):
        affine_part = sum(matrix[d, e] * (grid[e] - centre[e]) for e in range(3))
        elastic = elastic_std * _smooth_field(rng, shape, voxel_mm, _ELASTIC_SCALE_MM)
        coords[d] = affine_part + centre[d] + shift[d] + elastic
    return coords, matrix.astype(np.float32)


def _warp_tissue(anatomy: Anatomy, coords: np.ndarray) -> np.ndarray:
    """Tissue probabilities (3, X, Y, Z) in the order CSF, GM, WM, pulled through ``coords``."""
    return np.stack(
        [ndimage.map_coordinates(m, coords, order=1, cval=0.0) for m in (anatomy.csf, anatomy.gm, anatomy.wm)]
    )


# --------------------------------------------------------------------------- tumours


def _sample_sizes(rng: np.random.Generator, voxel_mm: float, shift: shifts.Shift) -> dict:
    """Radii of one lesion (in the shift's ranges where it gives them), clamped so that every
    compartment spans at least one voxel."""
    core = max(rng.uniform(*(shift.core_mm or _CORE_MM)), 2.0 * voxel_mm)
    rim = max(rng.uniform(*_RIM_MM), voxel_mm)
    edema = max(rng.uniform(*(shift.edema_mm or _EDEMA_MM)), 2.0 * voxel_mm)
    necrosis = bool(rng.random() < _NECROSIS_PROB) and core - rim >= voxel_mm
    mass = rng.uniform(*(shift.mass_fraction or _MASS_FRACTION)) * (core + edema / 2.0)
    return dict(core_mm=core, rim_mm=rim, has_necrosis=necrosis, edema_mm=edema, mass_mm=mass)


def _sample_centre(rng, tissue, depth_mm, core_mm, z_window) -> np.ndarray:
    """Index of a centre preferring white matter, ``core + 8 mm`` inside the brain, in ``z_window``."""
    allowed = depth_mm >= core_mm + _CENTRE_DEPTH_MARGIN_MM
    if z_window is not None:
        z = np.arange(allowed.shape[2])
        allowed &= ((z >= z_window[0]) & (z <= z_window[1]))[None, None, :]
    if not allowed.any():  # small brain or large core: fall back to the deepest voxels
        allowed = depth_mm == depth_mm.max()
    candidates = np.flatnonzero(allowed)
    weights = tissue[2].ravel()[candidates].astype(np.float64) ** 2 + 0.01
    index = rng.choice(candidates, p=weights / weights.sum())
    return np.array(np.unravel_index(index, allowed.shape), dtype=np.float64)


def _sample_tumours(rng, anatomy: Anatomy, coords: np.ndarray, voxel_mm: float,
                    shift: shifts.Shift) -> list[_Tumour]:
    """1-3 lesions placed on the deformed anatomy; satellites lie within 20 mm (axially) of the first.

    Placement works on a grid of about 4 mm (every ``stride``-th voxel) for speed; centres are
    then jittered uniformly within their coarse voxel.
    """
    stride = max(1, round(_PLACEMENT_MM / voxel_mm))
    coarse_mm = stride * voxel_mm
    tissue = _warp_tissue(anatomy, coords[:, ::stride, ::stride, ::stride])
    depth_mm = ndimage.distance_transform_edt(tissue.sum(axis=0) >= 0.5, sampling=coarse_mm)
    probs = shift.tumour_count_probs or _TUMOUR_COUNT_PROBS
    count = 1 + int(rng.choice(len(probs), p=probs))
    tumours, z_window = [], None
    for _ in range(count):
        sizes = _sample_sizes(rng, voxel_mm, shift)
        coarse_centre = _sample_centre(rng, tissue, depth_mm, sizes["core_mm"], z_window)
        if z_window is None:
            half = _SATELLITE_Z_MM / coarse_mm
            z_window = (coarse_centre[2] - half, coarse_centre[2] + half)
        tumours.append(
            _Tumour(
                centre=stride * (coarse_centre + rng.uniform(-0.5, 0.5, 3)),
                shape_amplitude=rng.uniform(*_SHAPE_AMPLITUDE),
                t2_necrosis=rng.uniform(*_T2_NECROSIS),
                t2_enhancing=rng.uniform(*_T2_ENHANCING),
                t2_edema=rng.uniform(*_T2_EDEMA),
                edema_fade=rng.uniform(*_EDEMA_FADE),
                **sizes,
            )
        )
    return tumours


def _offsets_mm(shape, centre: np.ndarray, voxel_mm: float) -> list[np.ndarray]:
    """Broadcastable per-axis offsets (mm) of every voxel from ``centre``."""
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return [((g - c) * voxel_mm).astype(np.float32) for g, c in zip(grid, centre)]


def _mass_effect(shape, tumours: list[_Tumour], voxel_mm: float) -> np.ndarray:
    """Displacement (3, X, Y, Z), in voxels, of the radial volume-conserving push of all lesions.

    Tissue now at distance ``r`` from a centre came from distance ``cbrt(r^3 - R^3)``, so the
    returned vectors point from each voxel's source towards the voxel (outwards).
    """
    displacement = np.zeros((3, *shape), dtype=np.float32)
    for tumour in tumours:
        offsets = _offsets_mm(shape, tumour.centre, voxel_mm)
        radius = np.sqrt(sum(o**2 for o in offsets)) + np.float32(1e-6)
        pulled = np.cbrt(np.maximum(radius**3 - np.float32(tumour.mass_mm**3), 0.0))
        shrink = (radius - pulled) / radius / np.float32(voxel_mm)
        for d in range(3):
            displacement[d] += offsets[d] * shrink
    return displacement


def _irregular_radius(shape, tumour: _Tumour, shape_field: np.ndarray, voxel_mm: float) -> np.ndarray:
    """Distance (mm) from the centre, divided by ``1 + a * f`` so that iso-surfaces are irregular;
    for a lobulated lesion the least of it and each lobe's distance in the core's units (a lobe of
    radius ``r`` ends where the core does: its distance is scaled by ``core / r``)."""
    distance = np.sqrt(sum(o**2 for o in _offsets_mm(shape, tumour.centre, voxel_mm)))
    for centre, radius_mm in tumour.lobes:
        lobe = np.sqrt(sum(o**2 for o in _offsets_mm(shape, centre, voxel_mm))) * np.float32(tumour.core_mm / radius_mm)
        distance = np.minimum(distance, lobe)
    return distance / (1.0 + tumour.shape_amplitude * shape_field)


def _with_lobes(rng: np.random.Generator, tumour: _Tumour, lobes: tuple[int, int], voxel_mm: float) -> _Tumour:
    """``tumour`` made lobulated (``shifts.Shift.lobes``): ``n`` in ``lobes`` more lobes, each of
    ``shifts.LOBE_RADIUS`` core radii, centred ``shifts.LOBE_DISTANCE`` core radii away."""
    out = []
    for _ in range(int(rng.integers(lobes[0], lobes[1] + 1))):
        direction = rng.standard_normal(3)
        distance = rng.uniform(*shifts.LOBE_DISTANCE) * tumour.core_mm / voxel_mm
        out.append((tumour.centre + direction / np.linalg.norm(direction) * distance,
                    rng.uniform(*shifts.LOBE_RADIUS) * tumour.core_mm))
    return dataclasses.replace(tumour, lobes=tuple(out))


def _membership(rho, boundary_mm, voxel_mm: float, brain_fraction: np.ndarray) -> np.ndarray:
    """Partial-volume fraction of each voxel inside ``rho <= boundary`` (one-voxel-wide edge)."""
    return np.clip((boundary_mm - rho) / voxel_mm + 0.5, 0.0, 1.0) * brain_fraction


def _paint(image, label, weight, value, code, strength=1.0):
    """Blend ``value`` into ``image`` by ``weight * strength``; label voxels with ``weight >= 0.5``."""
    image += weight * strength * (value - image)
    label[weight >= 0.5] = code


def _paint_tumours(rng, image, tissue, tumours: list[_Tumour], voxel_mm: float, hypointense=None) -> np.ndarray:
    """Paint edema, then enhancing rims, then necrosis of all lesions into ``image``; return labels.
    ``hypointense``: ``(rng, contrast factors)`` of a shift with partly hypointense tumours."""
    shape = image.shape
    shape_field = np.clip(_smooth_field(rng, shape, voxel_mm, _SHAPE_SCALE_MM), -2.0, 2.0)
    texture = 1.0 + _TEXTURE_AMPLITUDE * _smooth_field(rng, shape, voxel_mm, _TEXTURE_SCALE_MM)
    total = tissue.sum(axis=0)
    brain_fraction = np.minimum(total, 1.0)
    wm_fraction = tissue[2] / np.maximum(total, 1e-6)
    not_csf = tissue[0] < 0.5 * total
    radii = [_irregular_radius(shape, t, shape_field, voxel_mm) for t in tumours]
    label = np.zeros(shape, dtype=np.uint8)
    for t, rho in zip(tumours, radii):
        outer = t.core_mm + t.edema_mm * (0.3 + 0.7 * wm_fraction)
        weight = _membership(rho, outer, voxel_mm, brain_fraction) * not_csf
        fade = 1.0 - (1.0 - t.edema_fade) * np.clip((rho - t.core_mm) / t.edema_mm, 0.0, 1.0)
        _paint(image, label, weight, t.t2_edema * texture, LABEL_EDEMA, strength=fade)
    for t, rho in zip(tumours, radii):
        weight = _membership(rho, t.core_mm, voxel_mm, brain_fraction)
        _paint(image, label, weight, t.t2_enhancing * texture, LABEL_ENHANCING)
    for t, rho in zip(tumours, radii):
        if t.has_necrosis:
            weight = _membership(rho, t.core_mm - t.rim_mm, voxel_mm, brain_fraction)
            _paint(image, label, weight, t.t2_necrosis * texture, LABEL_NECROSIS)
    if hypointense is not None:
        _paint_hypointense(*hypointense, image, label, tumours, radii, brain_fraction, voxel_mm)
    return label


def _paint_hypointense(rng, factors: dict, image, label, tumours: list[_Tumour], radii, brain_fraction,
                       voxel_mm: float) -> None:
    """Solid iso-intense cores and haemorrhagic (hypointense) parts of ``shifts.Shift.hypointense``,
    painted over the lesions in place and labelled necrotic / non-enhancing core (1).

    Per lesion: with ``shifts.SOLID_PROB`` (when it has necrosis) the necrosis becomes solid tissue
    of T2 ``shifts.SOLID_T2``; with ``shifts.HAEMORRHAGE_PROB`` a ball of ``HAEMORRHAGE_RADIUS``
    times the core radius, centred within half the core radius of the centre, gets T2
    ``HAEMORRHAGE_T2`` (darker than white matter). ``factors``: the protocol's contrast factors."""
    for t, rho in zip(tumours, radii):
        if rng.random() < shifts.SOLID_PROB and t.has_necrosis:
            weight = _membership(rho, t.core_mm - t.rim_mm, voxel_mm, brain_fraction)
            _paint(image, label, weight, rng.uniform(*shifts.SOLID_T2) * factors["solid"], LABEL_NECROSIS)
        if rng.random() < shifts.HAEMORRHAGE_PROB:
            direction = rng.standard_normal(3)
            offset = direction / np.linalg.norm(direction) * rng.uniform(0.0, 0.5) * t.core_mm / voxel_mm
            distance = np.sqrt(sum(o**2 for o in _offsets_mm(image.shape, t.centre + offset, voxel_mm)))
            weight = _membership(distance, rng.uniform(*shifts.HAEMORRHAGE_RADIUS) * t.core_mm, voxel_mm,
                                 brain_fraction)
            _paint(image, label, weight, rng.uniform(*shifts.HAEMORRHAGE_T2) * factors["haemorrhage"],
                   LABEL_NECROSIS)


# --------------------------------------------------------------------------- subject


def _healthy_t2(rng: np.random.Generator, tissue: np.ndarray, factors: dict | None = None) -> tuple[np.ndarray, float]:
    """Partial-volume T2 image and the subject's WM intensity (per-tissue jitter +-10 %), each
    tissue multiplied by its protocol factor (``factors``; default 1)."""
    jitter = rng.uniform(1.0 - _CONTRAST_JITTER, 1.0 + _CONTRAST_JITTER, 3)
    t2 = np.array([TISSUE_T2["csf"], TISSUE_T2["gm"], TISSUE_T2["wm"]]) * jitter
    if factors is not None:
        t2 = t2 * np.array([factors["csf"], factors["gm"], factors["wm"]])
    return np.tensordot(t2.astype(np.float32), tissue, axes=1), float(t2[2])


def _acquire(rng: np.random.Generator, image: np.ndarray, wm_t2: float, voxel_mm: float,
             bias_amplitude=_BIAS_AMPLITUDE, noise_fraction=_NOISE_FRACTION_OF_WM) -> np.ndarray:
    """Multiply by a smooth bias field, then add Rician noise (amplitude and noise drawn from the
    given ranges; the draws are the same whatever the ranges, so a shifted site keeps the subject)."""
    bias = np.exp(rng.uniform(*bias_amplitude) * _smooth_field(rng, image.shape, voxel_mm, _BIAS_SCALE_MM))
    sigma = rng.uniform(*noise_fraction) * wm_t2
    return rician(rng, image * bias.astype(np.float32), sigma)


def rician(rng: np.random.Generator, signal: np.ndarray, sigma: float) -> np.ndarray:
    """The magnitude of ``signal`` (float32) plus complex Gaussian noise of standard deviation
    ``sigma`` in each channel: Rician noise, as a magnitude MR image has (float32)."""
    real = signal + np.float32(sigma) * rng.standard_normal(signal.shape, dtype=np.float32)
    imaginary = np.float32(sigma) * rng.standard_normal(signal.shape, dtype=np.float32)
    return np.sqrt(real**2 + imaginary**2)


def _with_contrast(tumour: _Tumour, factors: dict) -> _Tumour:
    return dataclasses.replace(tumour, t2_necrosis=tumour.t2_necrosis * factors["necrosis"],
                               t2_enhancing=tumour.t2_enhancing * factors["enhancing"],
                               t2_edema=tumour.t2_edema * factors["edema"])


LESION_SHARE_STREAM = 2  # the third word of a lesion-share lesion's own random stream
_SHARE_CORE = 0.45  # a lesion-share lesion's core (rim and necrosis): this fraction of its radius
_SHARE_NECROSIS = 0.3  # ... and its necrosis


def _paint_share(seed: int, image, tissue, brain_mask, share: float, voxel_mm: float, factors: dict) -> np.ndarray:
    """One lesion covering ``share`` of ``brain_mask`` (edema outside ``_SHARE_CORE`` of its
    radius, an enhancing rim, necrosis inside ``_SHARE_NECROSIS``), painted into ``image``; return
    its labels. Every draw comes from the subject's own stream ``(seed, 0, LESION_SHARE_STREAM)``
    and none depends on ``share``, so the lesions of one subject at growing shares are nested: the
    same centre, shape and intensities, a larger radius (the ``share``-quantile of the irregular
    distance over the brain)."""
    rng = np.random.default_rng((int(seed), 0, LESION_SHARE_STREAM))
    depth_mm = ndimage.distance_transform_edt(brain_mask, sampling=voxel_mm)
    candidates = np.flatnonzero(depth_mm >= 0.5 * depth_mm.max())
    centre = np.array(np.unravel_index(rng.choice(candidates), brain_mask.shape), dtype=np.float64)
    field = np.clip(_smooth_field(rng, image.shape, voxel_mm, 2.0 * _SHAPE_SCALE_MM), -2.0, 2.0)
    texture = 1.0 + _TEXTURE_AMPLITUDE * _smooth_field(rng, image.shape, voxel_mm, _TEXTURE_SCALE_MM)
    t2 = {"edema": rng.uniform(*_T2_EDEMA), "enhancing": rng.uniform(*_T2_ENHANCING),
          "necrosis": rng.uniform(*_T2_NECROSIS)}
    t2 = {k: v * factors.get(k, 1.0) for k, v in t2.items()}
    fade = rng.uniform(*_EDEMA_FADE)
    distance = np.sqrt(sum(o**2 for o in _offsets_mm(image.shape, centre, voxel_mm)))
    rho = distance / (1.0 + rng.uniform(*_SHAPE_AMPLITUDE) * field)
    label = np.zeros(image.shape, dtype=np.uint8)
    if share <= 0:
        return label
    radius = float(np.quantile(rho[brain_mask], min(float(share), 1.0)))
    brain_fraction = np.minimum(tissue.sum(axis=0), 1.0)
    core = _SHARE_CORE * radius
    weight = _membership(rho, radius, voxel_mm, brain_fraction)
    strength = 1.0 - (1.0 - fade) * np.clip((rho - core) / max(radius - core, voxel_mm), 0.0, 1.0)
    _paint(image, label, weight, t2["edema"] * texture, LABEL_EDEMA, strength=strength)
    _paint(image, label, _membership(rho, core, voxel_mm, brain_fraction), t2["enhancing"] * texture,
           LABEL_ENHANCING)
    _paint(image, label, _membership(rho, _SHARE_NECROSIS * radius, voxel_mm, brain_fraction),
           t2["necrosis"] * texture, LABEL_NECROSIS)
    return label


def synthesize_subject(seed: int, *, tumours: bool, voxel_mm: float = 2.0,
                       shift: shifts.Shift | None = None, lesion_share: float | None = None) -> SyntheticSubject:
    """A synthetic T2-weighted brain, with 1-3 labelled tumours when ``tumours`` is true.

    Deterministic: the same ``(seed, tumours, voxel_mm, shift)`` gives identical arrays.  See the
    module docstring for the model. ``shift`` (``shifts.Shift``) acquires the same subject as
    another site would (thick slices, another protocol, bias, noise), from an older population
    (atrophy) or with partly hypointense tumours; its draws come from their own stream, so the
    anatomy and the tumours are those of the unshifted subject (atrophy changes the tissue after).

    ``lesion_share`` (with ``tumours=False``): the healthy subject of ``seed`` with one lesion
    covering that share of its brain (``_paint_share``; 0: the healthy scan itself); the rest of
    the scan -- anatomy, bias field, noise -- is the healthy scan's, so a sweep over shares
    isolates what the lesion's size does.
    """
    if lesion_share is not None and (tumours or not 0.0 <= lesion_share < 1.0):
        raise ValueError(f"lesion_share {lesion_share!r}: a share in [0, 1) of a healthy subject (tumours=False)")
    anatomy = load_anatomy(float(voxel_mm))
    rng = np.random.default_rng((int(seed), int(bool(tumours))))
    shift = shift or shifts.Shift()
    shift_rng = shifts.stream(seed, tumours)
    factors = shifts.draw_contrast(shift, shift_rng)
    shape = anatomy.brain_mask.shape
    coords, matrix = _random_deformation(rng, shape, voxel_mm)
    lesions = _sample_tumours(rng, anatomy, coords, voxel_mm, shift) if tumours else []
    if lesions:
        coords -= np.tensordot(matrix, _mass_effect(shape, lesions, voxel_mm), axes=1)
    tissue = _warp_tissue(anatomy, coords)
    if shift.atrophy is not None:
        tissue = shifts.atrophy(tissue, shift_rng.uniform(*shift.atrophy), voxel_mm)
    if shift.lobes is not None:
        lesions = [_with_lobes(shift_rng, t, shift.lobes, voxel_mm) for t in lesions]
    brain_mask = tissue.sum(axis=0) >= 0.5
    image, wm_t2 = _healthy_t2(rng, tissue, factors if shift.te_ms is not None else None)
    if lesions:
        if shift.te_ms is not None:
            lesions = [_with_contrast(t, factors) for t in lesions]
        label = _paint_tumours(rng, image, tissue, lesions, voxel_mm,
                               hypointense=(shift_rng, factors) if shift.hypointense else None)
    elif lesion_share is not None:
        label = _paint_share(seed, image, tissue, brain_mask, lesion_share, voxel_mm, factors)
    else:
        label = np.zeros(image.shape, dtype=np.uint8)
    image = _acquire(rng, image, wm_t2, voxel_mm, bias_amplitude=shift.bias_amplitude or _BIAS_AMPLITUDE,
                     noise_fraction=shift.noise_fraction or _NOISE_FRACTION_OF_WM)
    if shift.slice_mm is not None:
        image = shifts.thick_slices(image, *shifts.draw_thick_slices(shift, shift_rng), voxel_mm)
    image[~brain_mask] = 0.0
    label[~brain_mask] = 0
    return SyntheticSubject(
        image=image,
        brain_mask=brain_mask,
        label=label,
        affine=anatomy.affine.copy(),
    )
