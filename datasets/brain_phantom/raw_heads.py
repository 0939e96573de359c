"""Raw phantom heads: the phantom brain (``phantom.synthesize_subject``) inside a head, as a scanner
stores it -- for testing and measuring the raw-scan preprocessing (``tfvae.data.head_preprocessing``).

What a raw IXI-like T2 scan has and a skull-stripped phantom does not (issue 32):

1. **A head around the brain**, built on the phantom's own (MNI-like) grid padded by
   ``_PAD_MM`` (more below, for the neck), from the distance ``d`` (mm) to the brain mask closed
   by a 5 mm ball (the outer brain surface, sulci bridged):

   * extra-cerebral CSF ``0 < d <= c`` (``c`` 1.5-4.5 mm, varying smoothly over the surface), T2
     of the subject's CSF;
   * skull ``c < d <= c + s`` (``s`` 4.5-8.5 mm): dark inner and outer tables (T2 ~ 15) around a
     diploe of fatty marrow (T2 ~ 90);
   * scalp ``c + s < d <= c + s + k`` (``k`` 3.5-7.5 mm): subcutaneous fat (T2 ~ 180);
   * a neck: an elliptic column of muscle (T2 ~ 60) in a fat sheath from below the cerebellum
     down to the grid's lower edge.

   Edges have one voxel of partial volume; inside the brain mask the phantom's image (its own
   mild bias and noise included) is kept as it is.
2. **A random pose**: a rotation about the brain's centre of up to ``max_rotation_deg`` (15)
   about each axis and a translation of up to ``max_translation_mm`` (20) per axis, relative to
   the scanner's grid, whose centre is the scanner's world origin (the header's coordinates are
   scanner coordinates, not MNI).
3. **An IXI-like grid**: ``voxel_mm`` (0.94 x 0.94 x 1.2 mm by default) covering ``fov_mm``,
   stored in ``orientation`` (axis codes as nibabel writes them, "LPS" by default: not the
   RAS+ of the phantom) with that orientation in the header (qform and sform code 1).
4. **A strong bias field** ``exp(b * f)`` over the whole head (``b`` in ``bias_amplitude``, 0.2-0.3
   by default, i.e. about +-25 % at one standard deviation, 80 mm correlation), then Rician noise
   (3 % of the brain's median intensity) over everything, the air included.

The truth comes with it, in the raw grid: the phantom's brain mask (its partial-volume map
pulled through the pose, >= 0.5) and its tumour labels (nearest neighbour), and the exact world
transform from the scanner's coordinates to the phantom's (MNI-like) coordinates.

It is a phantom: its brain is the MNI152 2009a template anatomy, deformed (see ``phantom.py``),
so registration to that template is easier than on a real head; its head is a set of smooth
shells, without face, eyes or sinuses.

Deterministic: a pure function of its arguments; the head's own draws come from the stream
``(seed, tumours, RAW_STREAM)``, so the brain is exactly ``synthesize_subject(seed, ...)``'s.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from tfvae_datasets.brain_phantom import phantom

RAW_STREAM = 7  # the third word of the head's own random stream
IXI_VOXEL_MM = (0.94, 0.94, 1.2)
IXI_FOV_MM = (240.0, 240.0, 210.0)

_PAD_MM = 24.0
_NECK_MM = 70.0
_CLOSING_MM = 5.0
_CSF_MM = (1.5, 4.5)
_SKULL_MM = (4.5, 8.5)
_SCALP_MM = (3.5, 7.5)
_THICKNESS_SCALE_MM = 30.0
_T2_SKULL = 15.0
_T2_DIPLOE = 90.0
_T2_FAT = 180.0
_T2_MUSCLE = 60.0
_BIAS_SCALE_MM = 80.0
_NOISE_FRACTION_OF_WM = 0.03


@dataclasses.dataclass(frozen=True)
class RawHead:
    """One raw phantom head, with its truth in the same grid."""

    image: np.ndarray  # float32, the stored (raw) grid
    affine: np.ndarray  # float64 (4, 4): stored voxel -> scanner world mm (RAS+)
    brain_mask: np.ndarray  # bool, the true brain mask in the stored grid
    label: np.ndarray  # uint8, BraTS-convention tumour labels in the stored grid
    world_to_phantom: np.ndarray  # float64 (4, 4): scanner world mm -> the phantom's (MNI-like) mm
    pose: dict  # rotation_deg, translation_mm, bias_amplitude (what was drawn)

    def nifti(self, what: str = "image"):
        """``image``, ``brain_mask`` or ``label`` as a nibabel image with the orientation in its header."""
        import nibabel as nib

        data = {"image": self.image, "brain_mask": self.brain_mask.astype(np.uint8), "label": self.label}[what]
        img = nib.Nifti1Image(data, self.affine)
        img.set_qform(self.affine, code=1)
        img.set_sform(self.affine, code=1)
        return img


def _membership(distance_mm, boundary_mm, voxel_mm: float):
    """Fraction of a voxel inside ``distance <= boundary`` (one voxel of partial volume)."""
    return np.clip((boundary_mm - distance_mm) / voxel_mm + 0.5, 0.0, 1.0)


def _head_in_phantom_space(rng, subject: phantom.SyntheticSubject, voxel_mm: float, csf_t2: float):
    """(image, brain fraction, label, affine) of the head on the phantom's grid padded for the shells
    and the neck (float32, float32, uint8, float64)."""
    pad = int(np.ceil(_PAD_MM / voxel_mm))
    neck = int(np.ceil(_NECK_MM / voxel_mm))
    widths = ((pad, pad), (pad, pad), (neck, pad))
    brain = np.pad(subject.image, widths)
    mask = np.pad(subject.brain_mask, widths)
    label = np.pad(subject.label, widths)
    affine = subject.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.array([pad, pad, neck], dtype=np.float64)
    shape = mask.shape

    radius = max(1, int(round(_CLOSING_MM / voxel_mm)))
    ball = np.sum(np.square(np.mgrid[(slice(-radius, radius + 1),) * 3]), axis=0) <= radius**2
    hull = ndimage.binary_closing(np.pad(mask, radius), structure=ball)[(slice(radius, -radius),) * 3] | mask
    d = ndimage.distance_transform_edt(~hull, sampling=voxel_mm).astype(np.float32)

    def thickness(bounds):
        field = np.clip(phantom._smooth_field(rng, shape, voxel_mm, _THICKNESS_SCALE_MM), -2.0, 2.0)
        return (np.mean(bounds) + (bounds[1] - bounds[0]) / 4.0 * field).astype(np.float32)

    csf_mm, skull_mm, scalp_mm = thickness(_CSF_MM), thickness(_SKULL_MM), thickness(_SCALP_MM)
    inside_csf = _membership(d, csf_mm, voxel_mm)
    inside_skull = _membership(d, csf_mm + skull_mm, voxel_mm)
    inside_scalp = _membership(d, csf_mm + skull_mm + scalp_mm, voxel_mm)
    diploe = _membership(np.abs(d - csf_mm - skull_mm / 2.0), skull_mm / 6.0, voxel_mm)
    skull_t2 = _T2_SKULL + (_T2_DIPLOE - _T2_SKULL) * diploe
    shells = (inside_csf * csf_t2 + (inside_skull - inside_csf) * skull_t2
              + (inside_scalp - inside_skull) * _T2_FAT)

    # the neck: an elliptic column under the brain's inferior third, from the grid's bottom up to
    # 15 mm above the brain's lowest voxel (its top hidden inside the head's shells)
    inside = np.argwhere(mask)
    low, high = inside.min(axis=0), inside.max(axis=0)
    centre = (low + high) / 2.0
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    semi = np.array([0.22, 0.2]) * (high[:2] - low[:2]) * voxel_mm  # mm
    ellipse = np.sqrt(((grid[0] - centre[0]) * voxel_mm / semi[0]) ** 2
                      + ((grid[1] - centre[1] - 0.05 * (high[1] - low[1])) * voxel_mm / semi[1]) ** 2)
    top = low[2] + 15.0 / voxel_mm
    below = np.clip((top - grid[2]) + 0.5, 0.0, 1.0)
    in_neck = np.clip((1.0 - ellipse) * semi.min() / voxel_mm + 0.5, 0.0, 1.0) * below
    muscle = np.clip((0.8 - ellipse) * semi.min() / voxel_mm + 0.5, 0.0, 1.0) * below
    neck_t2 = muscle * _T2_MUSCLE + (in_neck - muscle) * _T2_FAT
    outside_head = 1.0 - inside_scalp
    head = shells + outside_head * neck_t2
    image = np.where(mask, brain, head).astype(np.float32)
    return image, mask.astype(np.float32), label, affine


def _stored(array: np.ndarray, affine: np.ndarray, orientation: str):
    """``array`` (RAS+ axes) and its affine, reoriented to ``orientation`` axis codes."""
    import nibabel as nib

    transform = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")),
                                                nib.orientations.axcodes2ornt(tuple(orientation)))
    data = nib.orientations.apply_orientation(array, transform)
    new_affine = affine @ nib.orientations.inv_ornt_aff(transform, array.shape)
    return np.ascontiguousarray(data), new_affine


def synthesize_raw_head(seed: int, *, tumours: bool = False, brain_voxel_mm: float = 1.0,
                        voxel_mm=IXI_VOXEL_MM, fov_mm=IXI_FOV_MM, orientation: str = "LPS",
                        max_rotation_deg: float = 15.0, max_translation_mm: float = 20.0,
                        bias_amplitude=(0.2, 0.3), translation_range_mm=None) -> RawHead:
    """A raw T2 head around ``phantom.synthesize_subject(seed, tumours=tumours, voxel_mm=brain_voxel_mm)``.

    ``voxel_mm`` (per RAS axis, before reorientation) and ``fov_mm`` set the scanner's grid;
    ``orientation``: the stored axis codes. Small coarse heads for tests: ``brain_voxel_mm=4``,
    ``voxel_mm=(4, 4, 4.8)``. ``translation_range_mm``: ``((low, high),) * 3`` per RAS axis (mm)
    in place of ``+-max_translation_mm`` on every axis, e.g. ``((-20, 20), (-20, 20), (10, 25))`` for
    a head placed high in the field of view (drawn by the same single call: the rest of the head's
    draws do not change). See the module docstring for the model.
    """
    subject = phantom.synthesize_subject(seed, tumours=tumours, voxel_mm=float(brain_voxel_mm))
    rng = np.random.default_rng((int(seed), int(bool(tumours)), RAW_STREAM))
    wm_t2 = float(np.median(subject.image[subject.brain_mask]))  # only sets the air's noise level below
    csf_t2 = float(np.percentile(subject.image[subject.brain_mask], 97))
    image, fraction, label, head_affine = _head_in_phantom_space(rng, subject, float(brain_voxel_mm), csf_t2)

    angles = rng.uniform(-max_rotation_deg, max_rotation_deg, 3)
    if translation_range_mm is None:
        translation = rng.uniform(-max_translation_mm, max_translation_mm, 3)
    else:
        bounds = np.asarray(translation_range_mm, dtype=np.float64).reshape(3, 2)
        translation = rng.uniform(bounds[:, 0], bounds[:, 1])
    rotation = phantom._rotation(np.deg2rad(angles))
    brain_centre = (subject.affine @ np.append(np.argwhere(subject.brain_mask).mean(axis=0), 1.0))[:3]
    # scanner world x_s = R (x_p - c) + t, the grid's centre at x_s = 0; so x_p = R^T (x_s - t) + c
    world_to_phantom = np.eye(4)
    world_to_phantom[:3, :3] = rotation.T
    world_to_phantom[:3, 3] = brain_centre - rotation.T @ translation

    voxel = np.asarray(voxel_mm, dtype=np.float64)
    shape = tuple(int(n) for n in np.round(np.asarray(fov_mm, dtype=np.float64) / voxel))
    ras_affine = np.diag([*voxel, 1.0])
    ras_affine[:3, 3] = -voxel * (np.asarray(shape) - 1) / 2.0
    to_head_index = np.linalg.inv(head_affine) @ world_to_phantom @ ras_affine
    coords = np.indices(shape, dtype=np.float32).reshape(3, -1)
    coords = (to_head_index[:3, :3].astype(np.float32) @ coords
              + to_head_index[:3, 3:].astype(np.float32)).reshape(3, *shape)
    raw = ndimage.map_coordinates(image, coords, order=1, cval=0.0)
    brain_mask = ndimage.map_coordinates(fraction, coords, order=1, cval=0.0) >= 0.5
    raw_label = ndimage.map_coordinates(label, coords, order=0, cval=0).astype(np.uint8)
    raw_label[~brain_mask] = 0
    del coords

    amplitude = float(rng.uniform(*bias_amplitude))
    field = phantom._smooth_field(rng, shape, float(voxel.min()), _BIAS_SCALE_MM)
    raw = raw * np.exp(amplitude * field).astype(np.float32)
    raw = phantom.rician(rng, raw, _NOISE_FRACTION_OF_WM * wm_t2).astype(np.float32)

    stored, affine = _stored(raw, ras_affine, orientation)
    stored_mask, _ = _stored(brain_mask, ras_affine, orientation)
    stored_label, _ = _stored(raw_label, ras_affine, orientation)
    return RawHead(image=stored, affine=affine, brain_mask=stored_mask, label=stored_label,
                   world_to_phantom=world_to_phantom,
                   pose={"rotation_deg": [float(a) for a in angles],
                         "translation_mm": [float(t) for t in translation], "bias_amplitude": amplitude})
