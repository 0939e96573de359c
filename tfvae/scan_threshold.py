"""A threshold for each scan, from its own score distribution: false-positive rates that hold on
scans from another site than the training data's, without labels.

A threshold calibrated on healthy validation scans (``tfvae.calibration``) flags the asked share
of *their* healthy brain pixels. On a scan from another scanner, protocol or population the whole
score distribution moves (a stronger bias field, thick slices, a tumour's mass effect and the halo
the recommended map's 3D filters spread around it), and the same threshold flags several times
the promised share of healthy tissue (measured in ``docs/results_phantom.md``). So the threshold
is moved with the scan:

1. ``HealthyReference``: the healthy validation distribution of a map's brain scores, kept as the
   thresholds that flag each of ``REFERENCE_FPRS`` of it (its quantiles; stored in
   ``thresholds.json``).
2. ``fit``: a straight line through the Q-Q plot of the scan's brain scores against the reference
   over the bulk -- the 20th to 80th percentiles (``BULK_QUANTILES``, 9 points, least squares),
   where the lesions of a scan (a minority, at the top of its scores) hardly reach: the scan's
   healthy-looking scores are ``a + b * s`` of the reference's ``s``. A robust fit of the bulk, as
   intensity-standardisation methods (Nyul & Udupa's landmarks) match histograms.
3. ``for_scan``: with ``mode="per_scan"`` (the default, ``threshold.mode``) the threshold is the
   line at the reference threshold, ``a + b * t_ref``; with ``mode="fixed"`` it is ``t_ref``.
   Either way ``estimated_fpr`` is the label-free estimate of the share of the scan's healthy
   tissue it flags: the reference's share above the threshold mapped back through the line
   (``HealthyReference.survival``); ``estimated_fpr_at_reference`` is the same for ``t_ref``, a
   measure of how far the scan is from the training data. ``ScanThreshold.warnings`` says when a
   fixed threshold's estimate is over ``WARN_FACTOR`` times off the asked rate, and when a per-scan
   threshold had to correct by more than ``SHIFT_FACTOR`` times (tumour scans of the training site
   itself sit at about 2.5x: their mass effect and the map's halo).

Assumptions and limits (measured on the phantom's shifted configs): lesions and their halo must
stay below ~20 % of the brain (above that the 80th percentile is lesion, and the threshold rises:
fewer false positives, less sensitivity); the scan's healthy scores must differ from the
reference's by a shift and a scale, which holds for the shifts measured (bias field, thick slices,
protocol, noise, resolution) to within a factor of about 1.5. A map whose reference bulk is tied
(e.g. a positive-part map with more than 20 % zeros) cannot be fitted: it keeps the reference
threshold (``fallback``), and localize says so.
"""

from __future__ import annotations

import dataclasses

import numpy as np

MODES = ("per_scan", "fixed")
BULK_QUANTILES = tuple(float(p) for p in np.round(np.linspace(0.2, 0.8, 9), 6))
# the false-positive rates whose thresholds describe a healthy distribution: its bulk (1 - p) and tail
TAIL_FPRS = (0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001)
REFERENCE_FPRS = tuple(sorted({round(1.0 - p, 6) for p in BULK_QUANTILES} | set(TAIL_FPRS), reverse=True))
MIN_SCAN_PIXELS = 100  # fewer brain pixels than this: no fit
WARN_FACTOR = 2.0  # a fixed threshold's estimated rate this many times above (or below) the asked one is warned
SHIFT_FACTOR = 5.0  # per scan: a calibrated threshold this far off on the scan is warned (a strong extrapolation)
MAX_LESION_SHARE = 0.2  # more of the brain flagged than this: the bulk assumption is warned


class HealthyReference:
    """The healthy (validation) distribution of one map's brain scores, as ``thresholds[fpr]``: the
    threshold that flags the share ``fpr`` of them (``tfvae.calibration.calibrate``)."""

    def __init__(self, thresholds: dict):
        self.thresholds = {float(f): float(t) for f, t in thresholds.items()}
        missing = [f for f in REFERENCE_FPRS if f not in self.thresholds]
        if missing:
            raise ValueError(f"a healthy reference needs the thresholds at {missing} as well")
        points = sorted(self.thresholds.items())  # by rate: thresholds fall as the rate grows
        self._fprs = np.array([f for f, _ in points])
        self._values = np.array([t for _, t in points])

    def threshold(self, fpr: float) -> float:
        """The calibrated threshold that flags ``fpr`` of the healthy brain pixels."""
        if float(fpr) not in self.thresholds:
            raise KeyError(f"no threshold calibrated at FPR {fpr:g}")
        return self.thresholds[float(fpr)]

    def bulk(self) -> np.ndarray:
        """The reference's quantiles at ``BULK_QUANTILES``."""
        return np.array([self.thresholds[round(1.0 - p, 6)] for p in BULK_QUANTILES])

    def survival(self, x: float) -> float:
        """Estimated share of healthy brain pixels scoring ``>= x``: the stored points, with
        log(rate) interpolated linearly in the score between them and extrapolated from the two
        most extreme tail points above the highest (capped at 1 below the lowest)."""
        rates, values = self._fprs, self._values  # values decrease as rates increase
        order = np.argsort(values)
        v, logr = values[order], np.log(rates[order])
        v, index = np.unique(v, return_index=True)  # ties (a tied tail): keep the largest rate
        logr = np.maximum.reduceat(logr, index) if len(index) else logr
        if len(v) == 1:
            return float(np.exp(logr[0])) if x <= v[0] else 0.0
        if x <= v[0]:
            return 1.0 if x < v[0] else float(np.exp(logr[0]))
        if x >= v[-1]:
            slope = (logr[-1] - logr[-2]) / (v[-1] - v[-2])
            return float(np.exp(logr[-1] + slope * (x - v[-1])))
        return float(np.exp(np.interp(x, v, logr)))


@dataclasses.dataclass(frozen=True)
class ScanThreshold:
    """The threshold one scan is cut at, and what is known of its false-positive rate."""

    threshold: float
    reference_threshold: float  # the calibrated one (validation, or the user's healthy scans)
    fpr: float  # the rate asked for
    mode: str  # "per_scan" or "fixed", as asked
    estimated_fpr: float  # label-free estimate at ``threshold`` (NaN without a fit)
    estimated_fpr_at_reference: float  # label-free estimate at ``reference_threshold`` (NaN without a fit)
    offset: float = 0.0  # the Q-Q line: scan scores = offset + scale * reference scores
    scale: float = 1.0
    fallback: bool = False  # per-scan asked for, but the scan could not be fitted: reference threshold

    def warnings(self, flagged_share: float | None = None) -> list[str]:
        """One-line warnings a user should read beside the scan's mask (empty when none):
        an estimated rate far from the asked one, a fit that failed, too much of the brain flagged."""
        out = []
        far = lambda rate, factor=WARN_FACTOR: rate > factor * self.fpr or rate < self.fpr / factor  # noqa: E731
        if self.fallback:
            out.append(f"the map's scores could not be matched to the healthy reference (its bulk is tied or the scan "
                       f"has too few brain pixels); the calibrated threshold {self.reference_threshold:.4g} is used "
                       "and its false-positive rate on this scan is unknown")
        elif self.mode == "fixed" and far(self.estimated_fpr):
            out.append(f"the calibrated threshold flags an estimated {100 * self.estimated_fpr:.1f}% of this scan's "
                       f"healthy tissue, not {100 * self.fpr:g}% (its scores are {self.scale:.2f}x the healthy "
                       "reference's); use the per-scan threshold (threshold.mode=per_scan) or calibrate on healthy "
                       "scans of this scanner (tfvae calibrate)")
        elif far(self.estimated_fpr_at_reference, SHIFT_FACTOR):
            out.append(f"this scan's healthy-looking scores are far from the healthy reference's ({self.scale:.2f}x; "
                       f"the calibrated threshold would flag an estimated {100 * self.estimated_fpr_at_reference:.1f}% "
                       f"of its healthy tissue); the per-scan threshold {self.threshold:.4g} corrects for it, assuming "
                       f"lesions are under {100 * MAX_LESION_SHARE:g}% of the brain: check the mask, or calibrate on "
                       "healthy scans of this scanner (tfvae calibrate)")
        if flagged_share is not None and flagged_share > MAX_LESION_SHARE and self.mode == "per_scan":
            out.append(f"{100 * flagged_share:.0f}% of the brain is flagged: the per-scan threshold assumes lesions "
                       f"are a minority (under {100 * MAX_LESION_SHARE:g}%); compare with threshold.mode=fixed")
        return out


def fit(reference: HealthyReference, scores) -> tuple[float, float] | None:
    """``(offset, scale)`` of the least-squares line through the Q-Q plot of ``scores`` (a scan's
    brain scores) against the reference over ``BULK_QUANTILES``; None when it cannot be fitted (the
    reference bulk is tied, too few scores, or a scale that is not positive)."""
    scores = np.asarray(scores, np.float64).ravel()
    ref = reference.bulk()
    if scores.size < MIN_SCAN_PIXELS or np.ptp(ref) <= 0 or not np.all(np.isfinite(scores)):
        return None
    scale, offset = np.polyfit(ref, np.quantile(scores, BULK_QUANTILES), 1)
    if not scale > 0:
        return None
    return float(offset), float(scale)


def for_scan(reference: HealthyReference, scores, fpr: float, mode: str = "per_scan") -> ScanThreshold:
    """The threshold at the nominal rate ``fpr`` for one scan whose brain scores are ``scores``
    (``mode``: "per_scan" moves it with the scan's bulk, "fixed" keeps the calibrated one)."""
    if mode not in MODES:
        raise ValueError(f"threshold mode {mode!r}: choose one of {', '.join(MODES)}")
    t_ref = reference.threshold(fpr)
    line = fit(reference, scores)
    if line is None:
        nan = float("nan")
        return ScanThreshold(t_ref, t_ref, float(fpr), mode, nan, nan, fallback=mode == "per_scan")
    offset, scale = line
    at_reference = reference.survival((t_ref - offset) / scale)
    if mode == "fixed":
        return ScanThreshold(t_ref, t_ref, float(fpr), mode, at_reference, at_reference, offset, scale)
    threshold = offset + scale * t_ref
    return ScanThreshold(float(threshold), t_ref, float(fpr), mode, reference.survival(t_ref), at_reference, offset,
                         scale)
