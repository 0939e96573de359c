"""One path from a 3D scan to 2D training/test slices, shared by every dataset, and its inverse.

``volume_to_slices`` does, in this order:

1. Orientation from the affine (never assumed): the volume is reoriented to the closest canonical
   RAS+ axes (as ``nibabel.as_closest_canonical`` does), so LPS- and RAS-stored copies of one scan
   give the same slices. Axial slices are then planes of constant canonical z.
2. Brain mask: the one given, else the non-zero voxels (scans are brain-extracted, background 0;
   a scan whose non-zero voxels fill the array or its in-plane border is refused: ``check_skull_stripped``;
   what the reader reads as background -- NaN outside the brain, resampling ringing -- is 0 by then:
   ``nifti.read_background``).
3. Z-score over brain voxels (the paper's zero mean / unit variance); background set to 0.
4. In-plane crop and resampling at a fixed physical scale: a square field of view of ``fov_mm``
   millimetres, centred on the brain's bounding box (snapped so that at native resolution pixel
   centres fall on voxel centres), is resampled to ``image_size`` pixels
   (so one pixel is ``fov_mm / image_size`` mm whatever the scan's voxel size: HCP's 0.7 mm and
   BraTS's 1 mm slices show anatomy at the same scale). Images are low-pass filtered before
   downsampling (sigma = (factor - 1) / 2 voxels, as scikit-image's anti-aliasing) and sampled
   linearly; the mask linearly then thresholded at 0.5; labels by nearest neighbour.
   Rows run anterior (top) to posterior, columns the canonical x axis (left to right of the array).
5. Slice selection: axial slices whose resampled brain area is below ``min_brain_fraction`` of the
   largest slice's are skipped (the ends of the brain, which carry little anatomy).

``SlicedVolume.outside_fov`` is the fraction of the brain's voxels that fall outside the square
field of view (a brain larger than ``fov_mm``, or wrong voxel sizes in the header): the real-data
builders warn about it, localize refuses such a scan unless forced (``MAX_OUTSIDE_FOV``).

``SliceGeometry`` records what is needed to put 2D maps back into the source volume, which
``slices_to_volume`` does (canonical grid, then the source's own axis order and flips).
"""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt_lib
from scipy import ndimage

RAS = ornt_lib.axcodes2ornt("RAS")


class PreprocessingError(ValueError):
    """The volume cannot be turned into slices; the message says why."""


@dataclasses.dataclass(frozen=True)
class SliceGeometry:
    """Where the slices of one volume came from.

    ``source_shape`` and ``source_affine`` describe the scan as stored; ``center`` is the centre
    of the field of view in canonical voxel coordinates (x, y) and ``step`` the size of one output
    pixel in canonical voxels along x and y.
    """

    source_shape: tuple[int, int, int]
    source_affine: np.ndarray
    center: tuple[float, float]
    step: tuple[float, float]

    def as_arrays(self) -> dict:
        return {"source_shape": np.asarray(self.source_shape, np.int32),
                "source_affine": np.asarray(self.source_affine, np.float64),
                "crop": np.asarray(self.center + self.step, np.float32)}

    def voxel_mm(self) -> tuple[float, float, float]:
        """Millimetres per step along the stacked slices' axes: (slice spacing, row, column)."""
        vx, vy, vz = canonical_voxel_sizes(self.source_affine)
        return float(vz), float(self.step[1] * vy), float(self.step[0] * vx)

    @classmethod
    def from_arrays(cls, source_shape, source_affine, crop) -> "SliceGeometry":
        crop = [float(v) for v in np.asarray(crop)]
        return cls(tuple(int(v) for v in np.asarray(source_shape)), np.asarray(source_affine, np.float64),
                   (crop[0], crop[1]), (crop[2], crop[3]))


@dataclasses.dataclass(frozen=True)
class SlicedVolume:
    """The kept axial slices of one volume, each (image_size, image_size, 1)."""

    image: np.ndarray        # float32, z-scored inside the brain, 0 outside
    brain_mask: np.ndarray   # uint8 0/1
    label: np.ndarray        # uint8, the source's label values (zeros when none given)
    slice_index: np.ndarray  # int32, canonical z index of each kept slice
    geometry: SliceGeometry
    outside_fov: float = 0.0  # the fraction of the brain's voxels outside the field of view (in-plane)


def to_canonical(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``data`` (stored with ``affine``) reordered and flipped to the closest RAS+ axes."""
    transform = ornt_lib.ornt_transform(ornt_lib.io_orientation(affine), RAS)
    return ornt_lib.apply_orientation(data, transform)


def from_canonical(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The inverse of ``to_canonical``: RAS+ data back to the axis order and flips of ``affine``."""
    transform = ornt_lib.ornt_transform(RAS, ornt_lib.io_orientation(affine))
    return ornt_lib.apply_orientation(data, transform)


MAX_OUTSIDE_FOV = 0.02  # more of the brain outside the field of view than this: warned / refused
NOT_STRIPPED_FILL = 0.9  # non-zero voxels filling more of the array than this: not skull-stripped
NOT_STRIPPED_BORDER = 0.5  # ... or covering more than this share of the array's in-plane border voxels
THIN_AXIS = 0.25  # an axis with at most this share of the longest axis's voxels is a slab's: its faces are cuts
# (nifti.THIN_SLAB is the same share, for NaN inside a slab's brain)


def check_skull_stripped(nonzero: np.ndarray) -> None:
    """A brain taken from the non-zero voxels of a canonical (RAS+) 3D volume must look like a
    brain-extracted scan's: a ``PreprocessingError`` when the non-zero voxels fill the array (a
    noisy background) or cover most of its in-plane border (a head cut by the field of view), with
    what to do.

    The border is the faces of the in-plane (x, y) axes: the axial faces are where limited coverage
    cuts a brain (a slab of a few slices, a scan missing the vertex or the cerebellum), and a
    brain cropped to its bounding box touches its in-plane faces only where it is widest. Faces of
    a thin axis (a sagittal or coronal slab: ``THIN_AXIS``) are cuts too and not counted.
    """
    from tfvae.utils.console import option

    fill = float(nonzero.mean())
    longest = max(nonzero.shape)
    axes = [axis for axis in (0, 1) if nonzero.shape[axis] > THIN_AXIS * longest]
    border = np.concatenate([np.ravel(face) for axis in axes for face in
                             (np.take(nonzero, 0, axis=axis), np.take(nonzero, -1, axis=axis))]) \
        if axes else np.zeros(1, bool)
    on_border = float(border.mean())
    if fill > NOT_STRIPPED_FILL or on_border > NOT_STRIPPED_BORDER:
        raise PreprocessingError(
            f"does not look skull-stripped ({100 * fill:.0f}% of the voxels and {100 * on_border:.0f}% of the "
            "array's in-plane border are non-zero, where a brain-extracted scan has a zero background): "
            f"preprocess it (tfvae preprocess: skull stripping in template space), skull-strip it (e.g. SynthStrip, "
            f"HD-BET or FSL BET) or give its brain mask (<scan>_mask.nii.gz beside it, or "
            f"{option('--mask', 'mask=...')})")


VOXEL_DECIMALS = 5  # voxel sizes are compared to 1e-5 mm: an oblique affine's float noise is no change


def canonical_voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Voxel sizes (mm) along the canonical x, y, z axes, rounded to ``VOXEL_DECIMALS`` (the column
    norms of a rotated affine carry ~1e-7 mm of rounding noise that must not change the sampling)."""
    sizes = np.round(nib.affines.voxel_sizes(affine), VOXEL_DECIMALS)
    axis_of = ornt_lib.io_orientation(affine)[:, 0].astype(int)  # source axis i -> canonical axis
    out = np.empty(3)
    out[axis_of] = sizes
    return out


def _sample_grid(geometry_center, step, image_size):
    """Canonical (x, y) voxel coordinates of the output pixel centres, each (S, S)."""
    offsets = np.arange(image_size) + 0.5 - image_size / 2.0
    rows, cols = np.meshgrid(offsets, offsets, indexing="ij")
    x = geometry_center[0] + cols * step[0]
    y = geometry_center[1] - rows * step[1]
    return x, y


def volume_to_slices(image: np.ndarray, affine: np.ndarray, *, mask: np.ndarray | None = None,
                     label: np.ndarray | None = None, image_size: int = 64, fov_mm: float = 192.0,
                     min_brain_fraction: float = 0.2) -> SlicedVolume:
    """Preprocess one 3D scan (see the module docstring). ``image``, ``mask`` and ``label`` share
    the source's voxel grid and ``affine``."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise PreprocessingError(f"expected a 3D volume, got shape {image.shape}")
    if not np.all(np.isfinite(image)):
        raise PreprocessingError("volume contains NaN or infinite voxels")
    for name, other in (("mask", mask), ("label", label)):
        if other is not None and np.shape(other) != image.shape:
            raise PreprocessingError(f"{name} shape {np.shape(other)} does not match image shape {image.shape}")
    source_shape = image.shape
    data = to_canonical(image.astype(np.float32), affine)
    if mask is None:
        check_skull_stripped(data != 0)
    brain = to_canonical(np.asarray(mask) > 0, affine) if mask is not None else data != 0
    labels = (to_canonical(np.asarray(label).astype(np.uint8), affine) if label is not None
              else np.zeros(data.shape, np.uint8))
    if not brain.any():
        raise PreprocessingError("empty brain: no non-zero voxels (or an empty brain mask)")

    values = data[brain]
    std = float(values.std())
    if std == 0:
        raise PreprocessingError("brain voxels all have the same intensity; cannot z-score")
    data = np.where(brain, (data - float(values.mean())) / std, 0.0).astype(np.float32)

    voxel = canonical_voxel_sizes(affine)
    step = (fov_mm / image_size / voxel[0], fov_mm / image_size / voxel[1])
    bx, by, _ = np.nonzero(brain)
    # centre of the brain's bounding box, snapped so that at native resolution pixels fall on voxels
    half = ((image_size - 1) / 2.0) % 1.0
    center = tuple(float(np.round((lo + hi) / 2.0 - half) + half) for lo, hi in ((bx.min(), bx.max()),
                                                                                  (by.min(), by.max())))
    sigma = (max(0.0, (step[0] - 1) / 2), max(0.0, (step[1] - 1) / 2), 0.0)
    smooth = ndimage.gaussian_filter(data, sigma) if any(sigma) else data
    brain_f = brain.astype(np.float32)

    # brain voxels outside the square field of view are lost: say how many
    half_x, half_y = image_size * step[0] / 2.0, image_size * step[1] / 2.0
    inside = ((np.abs(bx - center[0]) <= half_x) & (np.abs(by - center[1]) <= half_y)).sum()
    outside_fov = float(1.0 - inside / len(bx))

    x, y = _sample_grid(center, step, image_size)
    n_z = data.shape[2]
    coords = np.stack([np.broadcast_to(x, (n_z,) + x.shape), np.broadcast_to(y, (n_z,) + y.shape),
                       np.broadcast_to(np.arange(n_z)[:, None, None], (n_z,) + x.shape)])
    out_brain = ndimage.map_coordinates(brain_f, coords, order=1, mode="constant") > 0.5
    area = out_brain.sum(axis=(1, 2))
    keep = np.nonzero(area >= min_brain_fraction * area.max())[0]
    coords = coords[:, keep]
    out_image = ndimage.map_coordinates(smooth, coords, order=1, mode="constant") * out_brain[keep]
    out_label = ndimage.map_coordinates(labels, coords, order=0, mode="constant") * out_brain[keep]

    geometry = SliceGeometry(tuple(int(s) for s in source_shape), np.asarray(affine, np.float64),
                             (float(center[0]), float(center[1])), (float(step[0]), float(step[1])))
    return SlicedVolume(image=out_image[..., None].astype(np.float32),
                        brain_mask=out_brain[keep][..., None].astype(np.uint8),
                        label=out_label[..., None].astype(np.uint8),
                        slice_index=keep.astype(np.int32), geometry=geometry, outside_fov=outside_fov)


def slices_to_volume(maps: np.ndarray, slice_index, geometry: SliceGeometry, *, order: int = 1,
                     fill: float = 0.0) -> np.ndarray:
    """Put 2D maps (N, S, S[, 1]) of the slices ``slice_index`` back into the source volume's grid
    (shape ``geometry.source_shape``, same axis order and flips as the stored scan).

    ``order`` 1 interpolates linearly (scores), 0 takes the nearest pixel (labels, masks). Voxels
    of slices that were not kept, or outside the field of view, get ``fill``.
    """
    maps = np.asarray(maps, np.float32)
    if maps.ndim == 4:
        maps = maps[..., 0]
    slice_index = np.asarray(slice_index, int)
    if maps.shape[0] != len(slice_index):
        raise ValueError(f"{maps.shape[0]} maps but {len(slice_index)} slice indices")
    size = maps.shape[1]
    canonical_shape = to_canonical(np.empty(geometry.source_shape, np.bool_), geometry.source_affine).shape
    gx, gy = np.meshgrid(np.arange(canonical_shape[0]), np.arange(canonical_shape[1]), indexing="ij")
    cols = (gx - geometry.center[0]) / geometry.step[0] + size / 2.0 - 0.5
    rows = -(gy - geometry.center[1]) / geometry.step[1] + size / 2.0 - 0.5
    volume = np.full(canonical_shape, fill, np.float32)
    for plane, z in zip(maps, slice_index):
        volume[:, :, z] = ndimage.map_coordinates(plane, [rows, cols], order=order, mode="constant", cval=fill)
    return from_canonical(volume, geometry.source_affine)
