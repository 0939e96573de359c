"""A threshold for each scan, from its own score distribution: false-positive rates that hold on
scans from another site than the training data's, and on scans whose lesion is large, without labels.

A threshold calibrated on healthy validation scans (``tfvae.thresholds.calibration``) flags the asked share
of *their* healthy brain pixels. On a scan from another scanner, protocol or population the whole
score distribution moves (a stronger bias field, thick slices, a tumour's mass effect and the halo
the recommended map's 3D filters spread around it), and the same threshold flags several times
the promised share of healthy tissue (measured in ``docs/results_phantom.md``). So the threshold
is moved with the scan, by a two-component reading of its scores: healthy tissue, whose scores are
the healthy reference's under a straight line ``a + b * s``, and a minority that is not healthy
(lesions, their halo), at the top of the scores.

1. ``HealthyReference``: the healthy validation distribution of a map's brain scores, kept as the
   thresholds that flag each of ``REFERENCE_FPRS`` of it (its quantiles; stored in
   ``thresholds.json``).
2. ``fit``, in two stages:

   - **the healthy line and the lesion share** ``h``: a least-squares line through the Q-Q plot of
     the scan's quantiles at ``p * (1 - h)`` against the reference's at ``p``, over the lower
     quantiles ``LOW_QUANTILES`` (10th-70th: what a lesion of up to ~30 % of the brain leaves
     healthy; the 10th-50th read a strongly shifted site's heavier healthy tail as lesion), and
     ``h`` the share of scan pixels above that line's ``EXCESS_FPR`` level beyond the
     ``EXCESS_FPR`` healthy tissue puts there, ``h = (F - e) / (1 - e)``; iterated to a fixed point
     from each of ``SHARE_STARTS``, and the fixed point whose healthy line fits its points best
     kept (from 0 alone a 40 % lesion overlapping the healthy tail stopped at a false h near 0). With every lesion pixel above the healthy bulk the scan's ``p (1 - h)``
     quantile is its healthy part's ``p`` quantile exactly (the correction); ``h`` counts the
     lesion *and* the healthy pixels its halo lifts, so it is reported as the share of the brain
     that does not look healthy.
   - **the threshold's line**: the same Q-Q fit over the bulk ``BULK_QUANTILES`` (20th-80th),
     with the share discounted beyond ``HALO_SHARE``: quantile levels ``p * (1 - max(h -
     HALO_SHARE, 0))``. A lesion under ``HALO_SHARE`` of the brain stays in the bulk and lifts the
     threshold a little -- what keeps the map's halo around it (about the lesion's own volume,
     measured: ``docs/threshold_study.md``) from doubling the false-positive rate of tumour scans;
     a larger one no longer does, so a 300 ml glioma is cut where a 30 ml one is.

3. ``for_scan``: with ``mode="per_scan"`` (the default, ``threshold.mode``) the threshold is the
   threshold's line at the reference threshold, ``a + b * t_ref``; with ``mode="fixed"`` it is
   ``t_ref``. ``lesion_share`` is ``h``. Two label-free estimates, each from the line that reads
   it best (measured per scan against the labels: ``docs/threshold_study.md``):

   - ``estimated_fpr``: the share of the tissue the fit reads as healthy that the threshold flags,
     off the *healthy* line (``HealthyReference.survival`` of the threshold mapped back through
     it). Never the asked rate by construction: it falls when a lesion lifts the threshold, rises
     when the threshold sits low. It does not count the healthy pixels a lesion's halo lifts (they
     are part of ``h``), so on tumour scans it is below the rate measured with labels, which
     counts them;
   - ``estimated_fpr_at_reference``: the share the calibrated threshold ``t_ref`` would flag, off
     the *threshold's* line (the whole bulk, mass effect and halo of a lesion under
     ``HALO_SHARE`` included): how far the scan is from the training data, what a fixed threshold
     really flags there.

Degenerate fits are refused, not used (``NoFit``; the scan keeps the calibrated threshold, its
estimated rate is NaN and ``ScanThreshold.warnings`` names why): too few brain pixels
(``MIN_SCAN_PIXELS``), non-finite scores, a reference whose quantiles at the fitted levels are tied
(e.g. a positive-part map with many exact zeros), a scan whose quantiles there are tied (any two
equal: a partly tied bulk bends the line), a line that does not describe the points (``MIN_R2``), and a
scale of either line outside ``SCALE_RANGE`` (of the threshold's line with a large lesion share:
named as a likely large lesion) -- wider than any healthy scan of another site needs (0.6-1.9x
measured on the phantom's sites), as a scan of another voxel size or contrast than the training
data's gives (its scale ~0 once flagged 15 % of a healthy brain at a nominal 1 %).

Assumptions and limits (measured on the phantom's design sites, ``docs/threshold_study.md``):
lesions sit at the top of the scores and cover under ~50 % of the brain; the scan's healthy scores
differ from the reference's by a shift and a scale; the halo of a lesion above ``HALO_SHARE`` of
the brain is flagged with it. A lesion that lowers the whole scan's scores (a large bright lesion
changes the per-scan intensity normalisation) loses sensitivity with any threshold.
"""

from __future__ import annotations

import dataclasses

import numpy as np

MODES = ("per_scan", "fixed")
LOW_QUANTILES = tuple(float(p) for p in np.round(np.linspace(0.1, 0.7, 13), 6))  # the healthy line's levels
BULK_QUANTILES = tuple(float(p) for p in np.round(np.linspace(0.2, 0.8, 9), 6))  # the threshold line's levels
EXCESS_FPR = 0.05  # the healthy line's level above which the pixels beyond this share count as not healthy
HALO_SHARE = 0.15  # the share of the brain a lesion (and its halo) may lift the threshold's line with
MAX_SHARE = 0.6  # the lesion share the fit assumes at most (the healthy line needs the lower half)
# the lesion shares the fixed-point iteration starts from: from 0 alone a lesion that reaches the
# healthy line's upper levels (30-40 % of the brain, scores overlapping the healthy tail) keeps it
# at a false fixed point near 0; the fixed point whose Q-Q plot is straightest is kept
SHARE_STARTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
# the false-positive rates whose thresholds describe a healthy distribution: its quantiles at both
# lines' levels (1 - p) and its tail
TAIL_FPRS = (0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001)
REFERENCE_FPRS = tuple(sorted({round(1.0 - p, 6) for p in LOW_QUANTILES + BULK_QUANTILES} | set(TAIL_FPRS),
                              reverse=True))
MIN_SCAN_PIXELS = 100  # fewer brain pixels than this: no fit
MIN_R2 = 0.9  # a line explaining less of its Q-Q points than this: no fit
SCALE_RANGE = (0.25, 4.0)  # the threshold line's scale outside it: no fit (another grid, contrast or map)
WARN_FACTOR = 2.0  # a fixed threshold's estimated rate this many times above (or below) the asked one is warned
SHIFT_FACTOR = 5.0  # per scan: a calibrated threshold this far off on the scan is warned (a strong extrapolation)
MAX_LESION_SHARE = 0.2  # an estimated lesion share above this is warned


class NoFit(ValueError):
    """A scan's scores cannot be matched to the healthy reference; the message says why (one line)."""


class HealthyReference:
    """The healthy (validation) distribution of one map's brain scores, as ``thresholds[fpr]``: the
    threshold that flags the share ``fpr`` of them (``tfvae.thresholds.calibration.calibrate``)."""

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

    def quantiles(self, levels) -> np.ndarray:
        """The reference's quantiles at ``levels`` (each ``1 - rate`` of a stored rate; between stored
        rates, linear interpolation)."""
        levels = np.asarray(levels, np.float64)
        q = 1.0 - self._fprs[::-1]  # increasing levels, their thresholds increasing
        return np.interp(levels, q, self._values[::-1])

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
class Fit:
    """The two lines of a scan's Q-Q plot against the healthy reference (``fit``): scan scores =
    ``offset + scale * reference scores``."""

    offset: float  # the threshold's line (bulk, lesion share beyond HALO_SHARE discounted)
    scale: float
    healthy_offset: float  # the healthy tissue's line (lower quantiles, lesion share discounted)
    healthy_scale: float
    lesion_share: float  # h: the share of the brain's pixels that do not look healthy


@dataclasses.dataclass(frozen=True)
class ScanThreshold:
    """The threshold one scan is cut at, and what is known of its false-positive rate."""

    threshold: float
    reference_threshold: float  # the calibrated one (validation, or the user's healthy scans)
    fpr: float  # the rate asked for
    mode: str  # "per_scan" or "fixed", as asked
    estimated_fpr: float  # label-free estimate at ``threshold`` (NaN without a fit)
    estimated_fpr_at_reference: float  # label-free estimate at ``reference_threshold`` (NaN without a fit)
    offset: float = 0.0  # the threshold's line: scan scores = offset + scale * reference scores
    scale: float = 1.0
    fallback: bool = False  # per-scan asked for, but the scan could not be fitted: reference threshold
    lesion_share: float = float("nan")  # estimated share of the brain that does not look healthy (NaN: no fit)
    healthy_scale: float = 1.0  # the healthy line's scale
    reason: str = ""  # why the scan could not be fitted (NoFit's message), empty when it was

    def warnings(self, flagged_share: float | None = None) -> list[str]:
        """One-line warnings a user should read beside the scan's mask (empty when none):
        a fit refused (and why), a large lesion share, an estimated rate far from the asked one."""
        out = []
        far = lambda rate, factor=WARN_FACTOR: rate > factor * self.fpr or rate < self.fpr / factor  # noqa: E731
        if self.reason:
            out.append(f"the map's scores could not be matched to the healthy reference ({self.reason}); the "
                       f"calibrated threshold {self.reference_threshold:.4g} is used and its false-positive rate "
                       "on this scan is not estimated")
            return out
        if self.lesion_share > MAX_LESION_SHARE:
            out.append(f"an estimated {100 * self.lesion_share:.0f}% of the brain scores above its healthy tissue: "
                       "most likely a large lesion (with the halo the map spreads around it); "
                       + ("the per-scan threshold discounts it" if self.mode == "per_scan" else
                          "the calibrated threshold is kept") + " -- check the mask against the scan")
        elif self.mode == "fixed" and far(self.estimated_fpr_at_reference):
            out.append(f"the calibrated threshold flags an estimated {100 * self.estimated_fpr_at_reference:.1f}% of "
                       f"this scan's healthy tissue, not {100 * self.fpr:g}% (its scores are {self.scale:.2f}x the "
                       "healthy reference's); use the per-scan threshold (threshold.mode=per_scan) or calibrate on "
                       "healthy scans of this scanner (tfvae calibrate)")
        elif self.mode == "per_scan" and far(self.estimated_fpr_at_reference, SHIFT_FACTOR):
            # short, and the likeliest cause first: on a scan of the training site a lesion's mass effect and
            # oedema lift the healthy tissue's scores too (another scanner does the same)
            out.append(f"healthy tissue scores {self.healthy_scale:.2f}x the reference's (the calibrated threshold "
                       f"would flag ~{100 * self.estimated_fpr_at_reference:.1f}%): a lesion's mass effect or another "
                       f"scanner; adapted to (threshold {self.threshold:.4g}) -- check the mask")
        if (flagged_share is not None and flagged_share > MAX_LESION_SHARE and self.mode == "per_scan"
                and not self.lesion_share > MAX_LESION_SHARE):
            out.append(f"{100 * flagged_share:.0f}% of the brain is flagged, more than the {100 * self.lesion_share:.0f}% "
                       "estimated not to look healthy: compare with threshold.mode=fixed")
        return out


def _line(reference: HealthyReference, sorted_scores: np.ndarray, levels, discount: float) -> tuple[float, float, float]:
    """``(offset, scale, r2)`` of the least-squares line through the points (reference quantile
    at ``p``, scan quantile at ``p * (1 - discount)``) for ``p`` in ``levels``; ``NoFit`` when the
    reference's or the scan's quantiles there are tied."""
    ref = reference.quantiles(levels)
    if np.unique(ref).size < len(levels):
        raise NoFit(f"the healthy reference's quantiles {levels[0]:.0%}-{levels[-1]:.0%} are tied: many equal "
                    "scores, as a positive-part map's zeros")
    used = np.asarray(levels) * (1.0 - discount)
    scan = np.quantile(sorted_scores, used, method="linear")
    tolerance = 1e-9 * max(float(sorted_scores[-1] - sorted_scores[0]), 1e-300)
    tied = int(np.sum(np.diff(scan) <= tolerance))
    if tied:  # a partly tied bulk (many exact zeros) bends the line: 4.3 % measured at a nominal 1 %
        raise NoFit(f"its scores between the {used[0]:.0%} and {used[-1]:.0%} quantiles are tied ({tied + 1} of "
                    f"{len(used)} points share a value, as a positive-part map's zeros)")
    scale, offset = np.polyfit(ref, scan, 1)
    residual = scan - (offset + scale * ref)
    r2 = 1.0 - float(np.sum(residual**2)) / max(float(np.sum((scan - scan.mean()) ** 2)), 1e-300)
    return float(offset), float(scale), r2


def fit(reference: HealthyReference, scores, *, halo_share: float = HALO_SHARE, low=LOW_QUANTILES,
        bulk=BULK_QUANTILES, excess: float = EXCESS_FPR, iterations: int = 50, starts=SHARE_STARTS) -> Fit:
    """The two lines of ``scores`` (a scan's brain scores, any shape) against ``reference``
    (module docstring); ``NoFit`` (one line) when they cannot be fitted or are degenerate. The
    keyword arguments are the module's constants, to measure alternatives
    (``tfvae.studies.threshold_study``)."""
    scores = np.sort(np.asarray(scores, np.float64).ravel())
    if scores.size < MIN_SCAN_PIXELS:
        raise NoFit(f"{scores.size} brain pixels, fewer than {MIN_SCAN_PIXELS}")
    if not np.all(np.isfinite(scores)):
        raise NoFit("its scores are not all finite")
    t_excess = reference.quantiles([1.0 - excess])[0]
    found = {}  # fixed point -> the r2 of its healthy line
    for start in starts:
        share = start
        for _ in range(iterations):
            offset, scale, r2 = _line(reference, scores, low, share)
            above = 1.0 - np.searchsorted(scores, offset + scale * t_excess, side="left") / scores.size
            new = min(max((above - excess) / (1.0 - excess), 0.0), MAX_SHARE)
            converged = abs(new - share) < 1e-4
            share = new
            if converged:
                break
        if round(share, 4) not in found:  # most starts reach the same fixed point: fitted once
            found[round(share, 4)] = _line(reference, scores, low, share)[2]
    # the fixed point whose corrected quantiles lie best on a line (a false one near 0, left when a
    # lesion reaches the lower quantiles, bends the Q-Q plot); equal fits: the smaller share
    share = max(found, key=lambda h: (round(found[h], 6), -h))
    healthy_offset, healthy_scale, r2 = _line(reference, scores, low, share)
    offset, scale, r2_bulk = _line(reference, scores, bulk, max(share - halo_share, 0.0))
    for name, value in (("", healthy_scale), ("bulk ", scale)):
        if not SCALE_RANGE[0] <= value <= SCALE_RANGE[1]:
            cause = (f"most likely a large lesion (an estimated {100 * share:.0f}% of the brain above its healthy "
                     "tissue)" if name and share > MAX_LESION_SHARE else
                     "another voxel size or contrast than the training data's, or a map that is not this one's")
            raise NoFit(f"its {name}scores are {value:.3g}x the healthy reference's, outside {SCALE_RANGE[0]:.2g}-"
                        f"{SCALE_RANGE[1]:.2g}x: {cause}")
    if min(r2, r2_bulk) < MIN_R2:
        cause = (f": most likely a large lesion (an estimated {100 * share:.0f}% of the brain above its healthy "
                 "tissue)" if r2 >= MIN_R2 and share > MAX_LESION_SHARE else "")
        raise NoFit(f"a straight line explains {min(r2, r2_bulk):.2f} of its Q-Q plot against the healthy "
                    f"reference (under {MIN_R2:g}){cause}")
    return Fit(offset, scale, healthy_offset, healthy_scale, float(share))


def for_scan(reference: HealthyReference, scores, fpr: float, mode: str = "per_scan", **fit_options) -> ScanThreshold:
    """The threshold at the nominal rate ``fpr`` for one scan whose brain scores are ``scores``
    (``mode``: "per_scan" moves it with the scan, "fixed" keeps the calibrated one); ``fit_options``
    go to ``fit``."""
    if mode not in MODES:
        raise ValueError(f"threshold mode {mode!r}: choose one of {', '.join(MODES)}")
    t_ref = reference.threshold(fpr)
    try:
        lines = fit(reference, scores, **fit_options)
    except NoFit as e:
        nan = float("nan")
        return ScanThreshold(t_ref, t_ref, float(fpr), mode, nan, nan, fallback=mode == "per_scan", reason=str(e))
    threshold = lines.offset + lines.scale * t_ref if mode == "per_scan" else t_ref
    healthy = reference.survival((threshold - lines.healthy_offset) / lines.healthy_scale)
    bulk_at_reference = reference.survival((t_ref - lines.offset) / lines.scale)
    return ScanThreshold(float(threshold), t_ref, float(fpr), mode, healthy, bulk_at_reference, lines.offset,
                         lines.scale, lesion_share=lines.lesion_share, healthy_scale=lines.healthy_scale)
