"""Healthy scans of the user's own scanner as a run's healthy reference (``tfvae calibrate``,
``Run.calibrate``).

By default a run's thresholds and the recommended map's filter sizes come from the healthy
validation split of its training data. A site whose scans differ (another scanner, protocol or
population) can calibrate on a few healthy scans of its own instead: they go through exactly the
preprocessing of localize (``scans.slice_scan``) and replace the validation split wherever
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

import dataclasses
import hashlib
import os

import numpy as np

from tfvae.data import labelmaps
from tfvae.data.scans import slice_scan, stem, training_modality
from tfvae.data.nifti import check_same_grid, load_volume
from tfvae.maps.scoring import Volume





def fingerprint(pairs: list[dict]) -> str:
    """SHA-256 over the names and contents of the scans and masks (what the set is, wherever it lies)."""
    from tfvae.thresholds.calibration import file_digest

    digest = hashlib.sha256()
    for pair in sorted(pairs, key=lambda p: stem(p["scan"])):
        for path in (pair["scan"], pair["mask"]):
            if path:
                digest.update(f"{os.path.basename(path)}\0{file_digest(path)}\n".encode())
    return digest.hexdigest()


def read(pairs: list[dict], config: dict, builder_config, *, force: bool = False) -> list[Volume]:
    """The scans as ``Volume`` s through the run's preprocessing (``slice_scan``: the
    run's image size, field of view, slice selection and clip). Errors (unreadable file, mask on
    another grid, brain outside the field of view unless ``force``) are one line naming the file."""
    volumes = []
    for pair in pairs:
        path = pair["scan"]
        data, affine = load_volume(path, allow_unknown_orientation=force,
                                   expect_modality=training_modality(builder_config))
        # a lesion or tissue map in a "healthy" folder, whatever its name: never calibrated on
        labelmaps.refuse_label_map(path, data, "move it out of the healthy scans")
        mask = None
        if pair["mask"]:
            mask, mask_affine = load_volume(pair["mask"], allow_unknown_orientation=force)
            check_same_grid(pair["mask"], mask, mask_affine, path, data, affine, "brain mask")
        try:
            sliced, _ = slice_scan(
                data, affine, image_size=config["data"]["image_size"], fov_mm=builder_config.fov_mm,
                min_brain_fraction=builder_config.min_brain_fraction, mask=mask, clip=config["data"]["clip"],
                force=force)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        volumes.append(Volume(stem(path), sliced.image, sliced.label, sliced.brain_mask,
                              sliced.slice_index, sliced.geometry))
    return volumes


def record(pairs: list[dict], volumes: list[Volume], screening: "Screening | None" = None) -> dict:
    """What ``thresholds.json`` keeps of a set: the files calibrated on (``pairs``, the scans kept),
    their fingerprint and its size; with ``screening``, the scans left out and those warned about
    (each ``{"scan", "mask", "reason", "advice", ...}``) and how they were found (``Screening.record``).
    The fingerprint covers the scans kept only: the set's thresholds are those of calibrating on them."""
    out = {"sha256": fingerprint(pairs), "scans": pairs, "volumes": len(volumes),
           "slices": int(sum(len(v.image) for v in volumes))}
    return {**out, **screening.record()} if screening is not None else out


def load(record_: dict, config: dict, builder_config, *, name: str) -> list[Volume]:
    """The volumes of a recorded set, read again; a file missing or changed since is a one-line
    ``calibration.CalibrationError``."""
    from tfvae.thresholds.calibration import CalibrationError

    pairs = record_["scans"]
    missing = [p for pair in pairs for p in (pair["scan"], pair["mask"]) if p and not os.path.isfile(p)]
    if missing:
        raise CalibrationError(f"calibration {name!r}: {missing[0]} is gone; calibrate again "
                               f"(tfvae calibrate --name {name} ...)")
    if fingerprint(pairs) != record_["sha256"]:
        raise CalibrationError(f"calibration {name!r}: its scans changed since they were calibrated; calibrate "
                               f"again (tfvae calibrate --name {name} ...)")
    return read(pairs, config, builder_config, force=True)


# -- screening the set before calibrating on it (Run.calibrate) ------------------------------------
# A "healthy" scan that carries a lesion, or that differs from the rest, biases every threshold
# calibrated on the set. Each scan is compared with the others, without labels (measured in
# docs/threshold_study.md, "Screening a healthy set": lesions of 5-40 % always left out, 1-2 % at
# home mostly, on a strongly bias-distorted site seldom).
TAIL_FPR = 0.001  # the lesion test: each scan against the threshold that flags this share of the others
TAIL_FACTOR = 6.0  # ... a scan flagging more than TAIL_FACTOR * TAIL_FPR of its brain is left out
BULK_LEVELS = tuple(float(p) for p in np.round(np.linspace(0.2, 0.8, 7), 6))  # quantiles matched first
SHIFT_FPR = 0.01  # the shift test: the others' threshold as it is, at this rate ...
SHIFT_FACTOR = 10.0  # ... a scan flagging more than SHIFT_FACTOR * SHIFT_FPR of its brain is left out
MIN_DISTINCT_SCORES = 5  # a scan's map with fewer distinct values (all zero, constant) is left out uncompared
MIN_KEPT = 2  # fewer scans left than this (or more than half left out): calibrate refuses
MAX_POOLED = 2_000_000  # the others' pooled scores beyond this: every scan's sorted scores strided
VOXEL_FACTOR = 2.0  # a voxel side this many times the set's median (or 1 / this) is warned about
CONTRAST_LEVELS = (0.05, 0.25, 0.5, 0.75, 0.95)  # the brain-intensity quantiles compared ...
CONTRAST_LIMIT = 0.4  # ... a scan's differing from the set's median by more (standard deviations) is warned about


def threshold_at(pool_sorted: np.ndarray, fpr: float) -> float:
    """The smallest ``t`` with ``mean(pool >= t) <= fpr`` for scores ``pool_sorted`` (1-D, ascending;
    ``metrics.PixelHistogram.threshold_at_fpr``'s rule, exactly)."""
    n = pool_sorted.size
    allowed = int(np.floor(fpr * n + 1e-9))
    if allowed == 0:
        return float(np.nextafter(pool_sorted[-1], np.inf))
    t = pool_sorted[n - allowed]
    if n - np.searchsorted(pool_sorted, t, side="left") > allowed:  # tied at t: the next value up
        t = np.nextafter(t, np.inf)
    return float(t)


def leave_one_out(scores, fpr: float, *, match_bulk: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(shares, thresholds)``, each ``(n,)``, for ``n >= 2`` scans' brain scores (``scores``: n
    arrays of one map, any shape): ``thresholds[i]`` flags ``fpr`` of the other scans' pooled
    scores, and ``shares[i]`` is the share of scan i's scores at or above it. With ``match_bulk``
    the threshold is first moved by the straight line that maps the others' quantiles at
    ``BULK_LEVELS`` onto scan i's (least squares over the levels where neither side sits on its
    lowest score, as a positive-part map's zeros; at least 3, else it is not moved): a scan whose
    scores are a shifted and scaled copy of the others' flags about ``fpr``, and only an excess in
    its tail (a lesion) flags more."""
    ordered = [np.sort(np.asarray(s, np.float64).ravel()) for s in scores]
    if len(ordered) < 2 or min(s.size for s in ordered) == 0:
        raise ValueError("leave_one_out needs at least 2 scans with brain scores")
    stride = max(1, int(np.ceil(sum(s.size for s in ordered) / MAX_POOLED)))
    shares, thresholds = np.empty(len(ordered)), np.empty(len(ordered))
    for i, own in enumerate(ordered):
        pool = np.sort(np.concatenate([s[::stride] for j, s in enumerate(ordered) if j != i]))
        t = threshold_at(pool, fpr)
        if match_bulk:
            theirs, mine = np.quantile(pool, BULK_LEVELS), np.quantile(own, BULK_LEVELS)
            above = (theirs > pool[0]) & (mine > own[0])
            if above.sum() >= 3 and np.ptp(theirs[above]) > 0 and np.ptp(mine[above]) > 0:
                scale, offset = np.polyfit(theirs[above], mine[above], 1)
                if scale > 0:
                    t = offset + scale * t
        thresholds[i] = t
        shares[i] = (own.size - np.searchsorted(own, t, side="left")) / own.size
    return shares, thresholds


@dataclasses.dataclass
class Screening:
    """What ``screen`` found: the scans kept (indices into the set), those left out and the
    warnings (each ``{"scan", "mask", "reason", "advice", <statistic>: value}``), and each scan's
    shares in the first comparison (``flagged``: stem -> ``{"tail": share, "shift": share}``)."""

    kept: list
    left_out: list
    warnings: list
    flagged: dict
    predictor: str | None

    def record(self) -> dict:
        """What ``thresholds.json`` keeps of it (beside the set's record, ``record``)."""
        return {"left_out": self.left_out, "warnings": self.warnings,
                "screening": {"predictor": self.predictor, "tail_fpr": TAIL_FPR, "tail_factor": TAIL_FACTOR,
                              "shift_fpr": SHIFT_FPR, "shift_factor": SHIFT_FACTOR, "flagged": self.flagged}}


def _mm(sizes) -> str:
    return "x".join(f"{v:.3g}" for v in sizes) + " mm"


def source_voxel_mm(volume: Volume) -> np.ndarray:
    """``(3,)`` the scan's voxel sizes (mm) along the canonical x, y, z axes, as stored (before the
    run's resampling, which ``geometry.voxel_mm()`` describes: its in-plane sides are the run's grid)."""
    from tfvae.data.preprocessing import canonical_voxel_sizes

    return np.asarray(canonical_voxel_sizes(volume.geometry.source_affine), np.float64)


def contrast_profile(volume: Volume) -> np.ndarray:
    """``(5,)`` the quantiles ``CONTRAST_LEVELS`` of the scan's brain intensities after the run's
    preprocessing (z-scored in the brain: standard deviations from its mean). Another contrast
    (e.g. a T1-weighted scan among T2-weighted ones: dark fluid) reorders the tissues and moves them."""
    return np.quantile(np.asarray(volume.image)[np.asarray(volume.brain_mask) > 0], CONTRAST_LEVELS)


def _warnings(pairs: list[dict], volumes: list[Volume]) -> list[dict]:
    """A scan whose voxel sides differ from the set's median by ``VOXEL_FACTOR`` or more, or whose
    ``contrast_profile`` differs from the set's median by more than ``CONTRAST_LIMIT``."""
    out = []
    if len(volumes) < 3:  # a median of two is either one: nothing to tell apart
        return out
    voxels = np.array([source_voxel_mm(v) for v in volumes])
    median_voxel = np.median(voxels, axis=0)
    profiles = np.array([contrast_profile(v) for v in volumes])
    median_profile = np.median(profiles, axis=0)
    for pair, voxel, profile in zip(pairs, voxels, profiles):
        ratio = float(np.max(np.maximum(voxel / median_voxel, median_voxel / voxel)))
        if ratio >= VOXEL_FACTOR:
            out.append({**pair, "voxel_ratio": ratio,
                        "reason": f"its voxels are {_mm(voxel)}, the set's median {_mm(median_voxel)} ({ratio:.2g}x)",
                        "advice": "calibrate scans of one resolution together (a --name per protocol), and "
                                  "localize scans of that resolution with it"})
        distance = float(np.max(np.abs(profile - median_profile)))
        if distance > CONTRAST_LIMIT:
            out.append({**pair, "contrast_distance": distance,
                        "reason": f"its brain-intensity quantiles differ from the set's by up to {distance:.2f} "
                                  f"standard deviations (healthy scans of one protocol: under {CONTRAST_LIMIT:g}): "
                                  "another contrast?",
                        "advice": "calibrate scans of one contrast together (a --name per protocol)"})
    return out


def exclusions(scores) -> tuple[list, list, dict]:
    """``(kept, left_out, first)`` for the brain scores of n scans (``scores``: n arrays of one map;
    fewer than 2: nothing compared): the indices kept; ``(index, test, share)`` for each scan left
    out, in the order left out (``test``: "degenerate" -- non-finite scores, their share, or fewer
    than ``MIN_DISTINCT_SCORES`` distinct values -- first, then "tail" or "shift", ``screen``), each
    found by comparing the scans still kept; ``first``: ``{"tail": (n,), "shift": (n,)}`` shares of the first comparison
    (empty below 2 scans)."""
    kept, left_out, first = [], [], {}
    for i, s in enumerate(scores):  # nothing to compare: non-finite, or (nearly) one value
        s = np.asarray(s, np.float64).ravel()
        bad = float(np.mean(~np.isfinite(s))) if s.size else 1.0
        if bad > 0 or np.unique(s).size < MIN_DISTINCT_SCORES:
            left_out.append((i, "degenerate", bad))
        else:
            kept.append(i)
    while len(kept) >= 2:
        group = [scores[k] for k in kept]
        shares = {"tail": leave_one_out(group, TAIL_FPR, match_bulk=True)[0],
                  "shift": leave_one_out(group, SHIFT_FPR, match_bulk=False)[0]}
        if not first:  # per scan of the set (NaN: left out before any comparison)
            first = {t: np.full(len(scores), np.nan) for t in shares}
            for t in shares:
                first[t][kept] = shares[t]
        excess = {"tail": shares["tail"] / (TAIL_FACTOR * TAIL_FPR), "shift": shares["shift"] / (SHIFT_FACTOR * SHIFT_FPR)}
        worst = int(np.argmax(np.maximum(excess["tail"], excess["shift"])))
        test = max(excess, key=lambda t: excess[t][worst])
        if excess[test][worst] <= 1.0:
            break
        left_out.append((kept.pop(worst), test, float(shares[test][worst])))
    return kept, left_out, first


def screen(pairs: list[dict], volumes: list[Volume], scores: list | None, *, predictor: str | None,
           name: str = "") -> Screening:
    """Compare each scan of a healthy set with the others, without labels, before calibrating on it.

    ``scores``: per scan, the brain scores (1-D) of the map ``predictor`` as the calibration
    thresholds it (None, or fewer than 2 scans: not compared). Left out, worst first and compared
    again without it, until none is left to leave out:

    - **tail** (a lesion): the scan flags more than ``TAIL_FACTOR * TAIL_FPR`` of its brain at the
      others' ``TAIL_FPR`` threshold moved to its own bulk (``leave_one_out(match_bulk=True)``);
    - **shift** (another protocol, resolution or contrast whose maps differ): it flags more than
      ``SHIFT_FACTOR * SHIFT_FPR`` at the others' ``SHIFT_FPR`` threshold as it is (one-sided: a map
      that sits lower than the rest's is kept; a lower-tail test left healthy scans of a varied
      set out);
    - **degenerate**, before any comparison: a map with non-finite scores or (nearly) one value.

    Warned about, not left out (a site may scan with several protocols; where one's maps differ
    enough to bias the thresholds, the comparison above leaves it out): a voxel size or a contrast
    unlike the set's median (``_warnings``). A ``calibration.CalibrationError`` (one line naming
    the first scan left out and its share) when fewer than ``MIN_KEPT`` scans would be left, or
    more than half the set left out."""
    from tfvae.thresholds.calibration import CalibrationError

    warnings = _warnings(pairs, volumes)
    kept, found, first = exclusions(scores) if scores is not None else (list(range(len(volumes))), [], {})
    flagged = {v.volume_id: {test: float(first[test][i]) if np.isfinite(first[test][i]) else None for test in first}
               for i, v in enumerate(volumes)} if first else {}
    left_out = []
    for index, test, share in found:
        if test == "degenerate":
            left_out.append({**pairs[index], "test": test, "flagged_share": float(share), "fpr": float("nan"),
                             "predictor": predictor,
                             "reason": (f"{100 * share:.2g}% of its {predictor} map is not finite" if share > 0 else
                                        f"its {predictor} map takes fewer than {MIN_DISTINCT_SCORES} distinct values in "
                                        "the brain (empty or constant)"),
                             "advice": "check the scan and its brain mask; the thresholds stored are those without it"})
            continue
        fpr, limit = (TAIL_FPR, TAIL_FACTOR * TAIL_FPR) if test == "tail" else (SHIFT_FPR, SHIFT_FACTOR * SHIFT_FPR)
        how, what = (("threshold (moved to its own bulk)", "looks lesioned") if test == "tail" else
                     ("threshold", "its maps are unlike the rest's"))
        left_out.append({**pairs[index], "test": test, "flagged_share": float(share), "fpr": fpr,
                         "predictor": predictor,
                         "reason": f"flags {100 * share:.2g}% of its brain at the other scans' {100 * fpr:g}% {how} "
                                   f"of the {predictor} map (healthy scans: at most {100 * limit:.2g}%): {what}",
                         "advice": "check it; the thresholds stored are those without it, and a healthy scan of "
                                   "another protocol belongs in a calibration of its own (--name)"})
    if left_out and (len(kept) < MIN_KEPT or 2 * len(left_out) > len(volumes)):
        first = left_out[0]
        why = f"fewer than {MIN_KEPT}" if len(kept) < MIN_KEPT else "under half the set"
        raise CalibrationError(
            f"calibration {name!r}: {first['scan']} {first['reason']} ({len(left_out)} of {len(volumes)} scan(s) left "
            f"out); {len(kept)} would be left, {why}: give more healthy scans of one scanner and protocol")
    return Screening(kept, left_out, warnings, flagged, predictor if scores is not None else None)
