"""Domain shifts of the phantom: how another site's scans differ from the training data's.

A model trained on one dataset (HCP: one 3T protocol, young healthy adults, 0.7 mm) meets scans
from other sites (BraTS: many scanners, 2D acquisitions with thick slices resampled to 1 mm, other
T2 protocols, older patients, tumours with solid and haemorrhagic parts). ``Shift`` describes such
a site; ``phantom.synthesize_subject(..., shift=...)`` applies it to the *same* subject the default
phantom makes from that seed (same deformation, same tumours), so a shifted test set is paired with
the default one: only the site differs. Every shift's random draws come from their own stream
(``np.random.default_rng((seed, tumours, SHIFT_STREAM))``); labels stay exact (they are painted on
the fine grid before any acquisition effect).

The kinds (each ``None`` = as the default phantom):

- ``slice_mm`` (low, high): a **thick-slice 2D acquisition**, resampled back to the phantom's grid.
  Per subject a slice axis (axial 60 %, coronal 20 %, sagittal 20 %) and a thickness uniform in the
  range are drawn; the image is integrated over a Gaussian slice profile (FWHM = thickness),
  sampled every ``thickness`` mm (no gap, random offset) and interpolated linearly back to every
  voxel, as scanners' and BraTS's resampling to 1 mm does.
- ``te_ms`` / ``tr_ms`` (low, high): **another T2 protocol**. Each tissue's signal follows the spin
  echo ``PD (1 - exp(-TR/T1)) exp(-TE/T2)``; the default phantom is taken as TE 100 ms, TR 4000 ms,
  and every compartment's intensity is multiplied by its signal ratio between the drawn (TE, TR)
  and that nominal protocol, with the 3T relaxation times of ``RELAXATION_MS`` (CSF/GM/WM from the
  literature; edema, tumour and haemorrhage typical values). E.g. TE 80 / TR 2500 brings CSF:WM
  from 3.6 down to ~2.1; TE 120 / TR 6000 raises it to ~5.7.
- ``bias_amplitude`` (low, high): the multiplicative bias field's amplitude ``b`` in
  ``exp(b * f)`` (default phantom: 0.05-0.08, about +-15 %; e.g. 0.15-0.25 is +-40-60 %).
- ``noise_fraction`` (low, high): Rician noise sigma as a fraction of the WM intensity (default
  0.02-0.05).
- ``atrophy`` (low, high): **another population** (older patients): a fraction ``a`` drawn in the
  range widens the sulci (grey matter next to CSF becomes CSF in proportion ``a``) and enlarges the
  ventricles (deep CSF dilated by ``a * 6`` mm, taken from the surrounding tissue).
- ``hypointense``: tumours that are **partly iso- or hypointense**: per lesion with probability
  0.6 a haemorrhagic part (a blob of 40-80 % of the core's radius, T2 25-60, darker than white
  matter) and with probability 0.5 a solid core iso-intense to grey/white matter (80-110) instead of
  the necrosis; both are labelled 1 (non-enhancing / necrotic core, BraTS convention).

The voxel size is a builder setting (``BrainPhantomConfig.voxel_mm``), not a ``Shift``: the
``resolution`` config stores the same anatomy on a finer grid.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

SHIFT_STREAM = 1  # the third word of a shifted subject's own random stream

NOMINAL_TE_TR_MS = (100.0, 4000.0)  # the protocol the default phantom's intensities stand for
# (T1, T2) in ms at 3T of every compartment the phantom paints
RELAXATION_MS = {
    "csf": (4000.0, 2000.0), "gm": (1400.0, 100.0), "wm": (850.0, 70.0),
    "edema": (1600.0, 200.0), "enhancing": (1300.0, 120.0), "necrosis": (2500.0, 400.0),
    "solid": (1200.0, 90.0), "haemorrhage": (1000.0, 40.0),
}
SLICE_AXIS_PROBS = (0.2, 0.2, 0.6)  # sagittal (x), coronal (y), axial (z)
HAEMORRHAGE_PROB, HAEMORRHAGE_RADIUS, HAEMORRHAGE_T2 = 0.6, (0.4, 0.8), (25.0, 60.0)
SOLID_PROB, SOLID_T2 = 0.5, (80.0, 110.0)
VENTRICLE_GROWTH_MM = 6.0  # ventricles grow by atrophy * this
DEEP_MM = 15.0  # CSF at least this deep inside the brain counts as ventricular
LOBE_RADIUS = (0.5, 0.9)  # a lobe's radius, in core radii
LOBE_DISTANCE = (0.6, 1.1)  # a lobe's centre from the lesion's, in core radii


@dataclasses.dataclass(frozen=True)
class Shift:
    """A site whose scans differ from the default phantom's (see the module docstring)."""

    slice_mm: tuple[float, float] | None = None
    te_ms: tuple[float, float] | None = None
    tr_ms: tuple[float, float] | None = None
    bias_amplitude: tuple[float, float] | None = None
    noise_fraction: tuple[float, float] | None = None
    atrophy: tuple[float, float] | None = None
    hypointense: bool = False
    core_mm: tuple[float, float] | None = None
    edema_mm: tuple[float, float] | None = None
    mass_fraction: tuple[float, float] | None = None
    tumour_count_probs: tuple[float, ...] | None = None
    lobes: tuple[int, int] | None = None

    def __post_init__(self):
        if (self.te_ms is None) != (self.tr_ms is None):
            raise ValueError("te_ms and tr_ms are given together (another protocol) or not at all")
        if self.tumour_count_probs is not None and not np.isclose(sum(self.tumour_count_probs), 1.0):
            raise ValueError(f"tumour_count_probs {self.tumour_count_probs} do not sum to 1")


def stream(seed: int, tumours: bool) -> np.random.Generator:
    """The shift's own random stream for one subject (independent of the phantom's)."""
    return np.random.default_rng((int(seed), int(bool(tumours)), SHIFT_STREAM))


def spin_echo(t1_ms: float, t2_ms: float, te_ms: float, tr_ms: float) -> float:
    """Relative spin-echo signal ``(1 - exp(-TR/T1)) exp(-TE/T2)`` (proton density left out)."""
    return (1.0 - np.exp(-tr_ms / t1_ms)) * np.exp(-te_ms / t2_ms)


def contrast_factors(te_ms: float, tr_ms: float) -> dict[str, float]:
    """Each compartment's intensity at (TE, TR) over its intensity at the nominal protocol."""
    te0, tr0 = NOMINAL_TE_TR_MS
    return {name: float(spin_echo(t1, t2, te_ms, tr_ms) / spin_echo(t1, t2, te0, tr0))
            for name, (t1, t2) in RELAXATION_MS.items()}


def draw_contrast(shift: Shift, rng: np.random.Generator) -> dict[str, float]:
    """One subject's contrast factors (all 1 without a protocol shift)."""
    if shift.te_ms is None:
        return {name: 1.0 for name in RELAXATION_MS}
    return contrast_factors(rng.uniform(*shift.te_ms), rng.uniform(*shift.tr_ms))


def atrophy(tissue: np.ndarray, amount: float, voxel_mm: float) -> np.ndarray:
    """Tissue probabilities (3, X, Y, Z: CSF, GM, WM) of an atrophied brain: sulci widened (GM next
    to CSF turned to CSF in proportion ``amount``) and ventricles grown by ``amount *
    VENTRICLE_GROWTH_MM`` (the CSF gained taken from GM and WM in proportion). The brain's extent
    (the sum of the three) is unchanged."""
    csf, gm, wm = (np.asarray(t, np.float32) for t in tissue)
    total = csf + gm + wm
    depth_mm = ndimage.distance_transform_edt(total >= 0.5, sampling=voxel_mm)
    near_csf = np.clip(2.0 * ndimage.gaussian_filter(csf, 3.0 / voxel_mm), 0.0, 1.0)
    shallow = (depth_mm < DEEP_MM).astype(np.float32)
    moved = amount * gm * near_csf * shallow
    csf, gm = csf + moved, gm - moved
    radius = amount * VENTRICLE_GROWTH_MM / voxel_mm
    if radius >= 0.5:
        r = int(np.ceil(radius))
        grid = np.ogrid[tuple(slice(-r, r + 1) for _ in range(3))]
        ball = sum(g.astype(np.float32) ** 2 for g in grid) <= radius**2
        deep_csf = np.where(depth_mm >= DEEP_MM, csf, 0.0)
        grown = ndimage.maximum_filter(deep_csf, footprint=ball) * (total >= 0.5)
        gain = np.clip(grown - csf, 0.0, gm + wm)
        share = gain / np.maximum(gm + wm, 1e-6)
        csf, gm, wm = csf + gain, gm * (1.0 - share), wm * (1.0 - share)
    return np.stack([csf, gm, wm]).astype(np.float32)


def _linear_take(data: np.ndarray, positions: np.ndarray, axis: int) -> np.ndarray:
    """``data`` sampled at fractional ``positions`` along ``axis`` by linear interpolation (edges
    clamped)."""
    n = data.shape[axis]
    positions = np.clip(positions, 0.0, n - 1.0)
    low = np.floor(positions).astype(int)
    high = np.minimum(low + 1, n - 1)
    frac = (positions - low).astype(np.float32)
    shape = [1] * data.ndim
    shape[axis] = len(positions)
    frac = frac.reshape(shape)
    return np.take(data, low, axis=axis) * (1.0 - frac) + np.take(data, high, axis=axis) * frac


def thick_slices(image: np.ndarray, axis: int, thickness_mm: float, offset_mm: float, voxel_mm: float) -> np.ndarray:
    """``image`` as a 2D acquisition of ``thickness_mm`` slices along ``axis`` would record it,
    resampled back to its own grid: a Gaussian slice profile (FWHM = thickness), one sample every
    ``thickness_mm`` starting ``offset_mm`` (in [0, thickness)) from the first voxel, then linear
    interpolation back to every voxel."""
    sigma = thickness_mm / (2.0 * np.sqrt(2.0 * np.log(2.0))) / voxel_mm
    blurred = ndimage.gaussian_filter1d(np.asarray(image, np.float32), sigma, axis=axis, mode="nearest")
    n = image.shape[axis]
    step = thickness_mm / voxel_mm
    centres = np.arange(offset_mm / voxel_mm, n - 1 + 1e-6, step)
    acquired = _linear_take(blurred, centres, axis)
    back = (np.arange(n) - centres[0]) / step
    return _linear_take(acquired, back, axis).astype(np.float32)


def draw_thick_slices(shift: Shift, rng: np.random.Generator) -> tuple[int, float, float]:
    """(axis, thickness mm, offset mm) of one subject's 2D acquisition."""
    axis = int(rng.choice(3, p=SLICE_AXIS_PROBS))
    thickness = float(rng.uniform(*shift.slice_mm))
    return axis, thickness, float(rng.uniform(0.0, thickness))
