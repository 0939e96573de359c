"""Healthy scans of the user's own scanner as a run's healthy reference (``tfvae calibrate``,
``Run.calibrate``).

By default a run's thresholds and the recommended map's filter sizes come from the healthy
validation split of its training data. A site whose scans differ (another scanner, protocol or
population) can calibrate on a few healthy scans of its own instead: they go through exactly the
preprocessing of localize (``localization.slice_scan``) and replace the validation split wherever
the run takes healthy statistics (``Run.healthy_split``), for the configs that name the set
(``threshold.calibration``). The set is recorded in the run's ``thresholds.json``
(``calibration.ThresholdStore.healthy_sets``): the scans, their brain masks and a SHA-256 of the
files' content, which keys every threshold calibrated on them; scans changed since are refused
with one line, never silently mixed.

A scan's brain mask is ``<scan>_mask.nii[.gz]`` beside it when there is one (as the
``nifti_folder`` builder reads it), else its non-zero voxels. How many healthy scans are enough
for the false-positive rate to hold is measured in ``docs/results_phantom.md``.
"""

from __future__ import annotations

import hashlib
import os

from tfvae import localization
from tfvae.nifti import NIFTI_SUFFIXES, check_same_grid, load_volume
from tfvae.scoring import Volume


def find(items) -> list[dict]:
    """``[{"scan": path, "mask": path or None}]`` for the NIfTI scans among ``items`` (files, or
    folders searched as localize searches them: ``*_seg``, ``*_mask`` and tfvae's outputs skipped);
    a missing item or an empty folder is a one-line ``ValueError``."""
    out = []
    for scan in localization.scan_files(items):
        stem = os.path.join(os.path.dirname(scan), localization.stem(scan))
        mask = next((stem + "_mask" + s for s in NIFTI_SUFFIXES if os.path.isfile(stem + "_mask" + s)), None)
        out.append({"scan": os.path.abspath(scan), "mask": os.path.abspath(mask) if mask else None})
    names = [localization.stem(p["scan"]) for p in out]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"several healthy scans are named {', '.join(repeated)}; give each scan once")
    return out


def fingerprint(pairs: list[dict]) -> str:
    """SHA-256 over the names and contents of the scans and masks (what the set is, wherever it lies)."""
    from tfvae.calibration import file_digest

    digest = hashlib.sha256()
    for pair in sorted(pairs, key=lambda p: localization.stem(p["scan"])):
        for path in (pair["scan"], pair["mask"]):
            if path:
                digest.update(f"{os.path.basename(path)}\0{file_digest(path)}\n".encode())
    return digest.hexdigest()


def read(pairs: list[dict], config: dict, builder_config, *, force: bool = False) -> list[Volume]:
    """The scans as ``Volume`` s through the run's preprocessing (``localization.slice_scan``: the
    run's image size, field of view, slice selection and clip). Errors (unreadable file, mask on
    another grid, brain outside the field of view unless ``force``) are one line naming the file."""
    volumes = []
    for pair in pairs:
        path = pair["scan"]
        data, affine = load_volume(path, allow_unknown_orientation=force)
        mask = None
        if pair["mask"]:
            mask, mask_affine = load_volume(pair["mask"], allow_unknown_orientation=force)
            check_same_grid(pair["mask"], mask, mask_affine, path, data, affine, "brain mask")
        try:
            sliced, _ = localization.slice_scan(
                data, affine, image_size=config["data"]["image_size"], fov_mm=builder_config.fov_mm,
                min_brain_fraction=builder_config.min_brain_fraction, mask=mask, clip=config["data"]["clip"],
                force=force)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        volumes.append(Volume(localization.stem(path), sliced.image, sliced.label, sliced.brain_mask,
                              sliced.slice_index, sliced.geometry))
    return volumes


def record(pairs: list[dict], volumes: list[Volume]) -> dict:
    """What ``thresholds.json`` keeps of a set: its files, their fingerprint and its size."""
    return {"sha256": fingerprint(pairs), "scans": pairs, "volumes": len(volumes),
            "slices": int(sum(len(v.image) for v in volumes))}


def load(record_: dict, config: dict, builder_config, *, name: str) -> list[Volume]:
    """The volumes of a recorded set, read again; a file missing or changed since is a one-line
    ``calibration.CalibrationError``."""
    from tfvae.calibration import CalibrationError

    pairs = record_["scans"]
    missing = [p for pair in pairs for p in (pair["scan"], pair["mask"]) if p and not os.path.isfile(p)]
    if missing:
        raise CalibrationError(f"calibration {name!r}: {missing[0]} is gone; calibrate again "
                               f"(tfvae calibrate --name {name} ...)")
    if fingerprint(pairs) != record_["sha256"]:
        raise CalibrationError(f"calibration {name!r}: its scans changed since they were calibrated; calibrate "
                               f"again (tfvae calibrate --name {name} ...)")
    return read(pairs, config, builder_config, force=True)
