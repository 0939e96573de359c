"""Per-scan thresholds (tfvae.thresholds.scan_threshold) against closed forms and direct counts."""

import math

import numpy as np
import pytest
from scipy import stats

from tfvae import metrics
from tfvae.thresholds import scan_threshold
from tfvae.thresholds.scan_threshold import HALO_SHARE, REFERENCE_FPRS, HealthyReference, for_scan


def reference_of(samples) -> HealthyReference:
    """A reference calibrated as evaluation calibrates: thresholds from a ``PixelHistogram``."""
    hist = metrics.PixelHistogram()
    hist.update(samples, np.zeros(len(samples)))
    return HealthyReference({rate: hist.threshold_at_fpr(rate) for rate in set(REFERENCE_FPRS) | {0.01, 0.05}})


@pytest.fixture(scope="module")
def healthy():
    return np.random.default_rng(0).standard_normal(400_000).astype(np.float32)


def scan_with_lesion(share: float, n: int = 200_000, seed: int = 1, offset: float = 1.0, scale: float = 2.0):
    """Healthy scores N(offset, scale^2) and a lesion share of U(8, 12) * scale + offset above them."""
    rng = np.random.default_rng(seed)
    n_lesion = int(round(share * n))
    healthy = offset + scale * rng.standard_normal(n - n_lesion)
    lesion = offset + scale * rng.uniform(8.0, 12.0, n_lesion)
    return healthy, lesion


def closed_form_line(levels, discount: float, healthy_share: float, offset: float, scale: float):
    """(scale, offset) of the least-squares line through (z_p, scan quantile at p (1 - discount))
    when the scan is N(offset, scale^2) on ``healthy_share`` of its pixels and every other pixel
    lies above them: the scan's q-quantile is the healthy part's q / healthy_share quantile."""
    levels = np.asarray(levels)
    return np.polyfit(stats.norm.ppf(levels), offset + scale * stats.norm.ppf(levels * (1 - discount) / healthy_share), 1)


def test_survival_is_exact_for_an_exponential_tail():
    # thresholds of Exp(1): t = -ln(rate); log-linear interpolation and extrapolation are exact
    reference = HealthyReference({rate: -math.log(rate) for rate in REFERENCE_FPRS})
    for x in (0.5, 1.0, 2.0, 4.0, 6.9, 9.0):
        assert reference.survival(x) == pytest.approx(math.exp(-x), rel=1e-9)
    assert reference.survival(0.0) == 1.0  # below the lowest stored threshold: capped at 1
    assert reference.quantiles([0.5, 0.9]) == pytest.approx([math.log(2.0), math.log(10.0)])


@pytest.mark.parametrize("share", [0.05, 0.3])
def test_both_lines_and_the_lesion_share_match_the_closed_form(healthy, share):
    reference = reference_of(healthy)
    scan_healthy, lesion = scan_with_lesion(share)
    scores = np.concatenate([scan_healthy, lesion])
    h = len(scan_healthy) / len(scores)
    fitted = scan_threshold.fit(reference, scores)
    # the healthy line: the lower quantiles at p (1 - share) are the healthy part's p-quantiles
    assert fitted.healthy_scale == pytest.approx(2.0, rel=0.02) and fitted.healthy_offset == pytest.approx(1.0, abs=0.03)
    assert fitted.lesion_share == pytest.approx(1 - h, abs=0.005)
    # the threshold's line: the share beyond HALO_SHARE discounted
    scale, offset = closed_form_line(scan_threshold.BULK_QUANTILES, max(fitted.lesion_share - HALO_SHARE, 0.0), h,
                                     1.0, 2.0)
    assert fitted.scale == pytest.approx(scale, rel=0.02) and fitted.offset == pytest.approx(offset, abs=0.03)
    chosen = for_scan(reference, scores, 0.01)
    assert chosen.threshold == pytest.approx(offset + scale * reference.threshold(0.01), rel=0.02)
    # the estimate is read off the healthy line: the share of the healthy part above the threshold
    truth = np.mean(scan_healthy >= chosen.threshold)
    assert chosen.estimated_fpr == pytest.approx(truth, rel=0.2)
    assert chosen.lesion_share == fitted.lesion_share


def test_sensitivity_does_not_collapse_as_the_lesion_grows(healthy):
    # lesions partly overlapping the healthy tail (as a map's lesion edges do), 5-30 % of the brain;
    # the rule before issue 30 -- one least-squares line through the scan's 20th-80th percentiles,
    # written out here -- lifts its threshold with the lesion and misses most of a 30 % one
    reference = reference_of(healthy)
    bulk = np.asarray(scan_threshold.BULK_QUANTILES)

    def found(share):
        rng = np.random.default_rng(7)
        n = 100_000
        lesion = rng.normal(5.0, 1.5, int(share * n))
        scores = np.concatenate([rng.standard_normal(n - len(lesion)), lesion])
        now = for_scan(reference, scores, 0.01).threshold
        scale, offset = np.polyfit(np.quantile(healthy, bulk), np.quantile(scores, bulk), 1)
        before = offset + scale * reference.threshold(0.01)
        return float(np.mean(lesion >= now)), float(np.mean(lesion >= before))

    (now_5, before_5), (now_30, before_30) = found(0.05), found(0.3)
    assert now_30 >= 0.8 * now_5
    assert before_30 < 0.5 * before_5  # the test tells the two rules apart


def lesioned(share, mean, sd, seed=11, n=100_000):
    """``(scores, lesion)``: N(0, 1) healthy pixels and a ``share`` of N(mean, sd) lesion pixels."""
    rng = np.random.default_rng(seed)
    lesion = rng.normal(mean, sd, int(share * n))
    return np.concatenate([rng.standard_normal(n - len(lesion)), lesion]), lesion


@pytest.mark.parametrize("mean, sd", [(3.0, 1.0), (4.0, 1.0), (5.0, 1.5)])
def test_the_lesion_share_is_read_at_every_size(healthy, mean, sd):
    """Lesions of 5-40 % of the brain, some overlapping the healthy tail (N(3, 1): a quarter below
    the healthy 1 % threshold): the estimated share follows the lesion pixels above the healthy 95th
    percentile (what ``h`` counts). From h = 0 alone the fixed point stopped near 0 at 40 % of
    N(4, 1) and the rule found none of the lesion (issue 30's review); now about half."""
    reference = reference_of(healthy)
    for share in (0.05, 0.1, 0.2, 0.3, 0.4):
        scores, lesion = lesioned(share, mean, sd)
        chosen = for_scan(reference, scores, 0.01)
        above = share * np.mean(lesion >= np.quantile(healthy, 0.95))
        assert 0.8 * above <= chosen.lesion_share <= share + 0.01
    scores, lesion = lesioned(0.4, 4.0, 1.0)
    assert np.mean(lesion >= for_scan(reference, scores, 0.01).threshold) > 0.4


@pytest.mark.xfail(strict=True, reason="open (issue 30): a lesion of 15-40 % of the brain whose scores overlap the "
                   "healthy tail still lifts the threshold's line (HALO_SHARE lets 15 % in): 0.68 of a 5 % lesion "
                   "found, 0.20 of a 30 % one, where the calibrated threshold finds 0.75 of both")
def test_an_overlapping_lesion_is_found_alike_at_5_and_30_percent(healthy):
    reference = reference_of(healthy)
    found = []
    for share in (0.05, 0.3):
        scores, lesion = lesioned(share, 3.0, 1.0)
        found.append(np.mean(lesion >= for_scan(reference, scores, 0.01).threshold))
    assert found[1] >= 0.8 * found[0]


def test_an_unshifted_healthy_scan_keeps_about_the_calibrated_threshold(healthy):
    reference = reference_of(healthy)
    scan = np.random.default_rng(3).standard_normal(100_000)
    chosen = for_scan(reference, scan, 0.01)
    assert chosen.threshold == pytest.approx(reference.threshold(0.01), rel=0.03)
    assert chosen.estimated_fpr_at_reference == pytest.approx(0.01, rel=0.2)
    assert chosen.lesion_share < 0.01
    assert chosen.warnings(flagged_share=0.012) == []


def test_the_estimate_follows_the_scan_not_the_asked_rate(healthy):
    # a shifted site's healthy scan with a small lesion: the lesion lifts the threshold's line, so the
    # healthy tissue flagged is under the asked rate; the estimate says so and matches the count
    reference = reference_of(healthy)
    scan_healthy, lesion = scan_with_lesion(0.06, seed=11, offset=0.5, scale=1.5)
    chosen = for_scan(reference, np.concatenate([scan_healthy, lesion]), 0.01)
    measured = np.mean(scan_healthy >= chosen.threshold)
    assert measured < 0.008 and chosen.estimated_fpr == pytest.approx(measured, rel=0.2)
    assert chosen.estimated_fpr < 0.8 * chosen.fpr
    fixed = for_scan(reference, np.concatenate([scan_healthy, lesion]), 0.01, "fixed")
    assert fixed.estimated_fpr == pytest.approx(np.mean(scan_healthy >= reference.threshold(0.01)), rel=0.15)


def test_a_tied_reference_falls_back_to_the_calibrated_threshold_and_says_why():
    # a positive-part map: 90 % of the healthy pixels score exactly 0
    samples = np.where(np.random.default_rng(4).random(100_000) < 0.9, 0.0, 1.0 + np.arange(100_000) * 1e-5)
    reference = reference_of(samples)
    chosen = for_scan(reference, samples, 0.01)
    assert chosen.fallback and chosen.threshold == reference.threshold(0.01) and math.isnan(chosen.estimated_fpr)
    assert "tied" in chosen.reason and "not estimated" in chosen.warnings()[0]
    assert not for_scan(reference, samples, 0.01, "fixed").fallback


@pytest.mark.parametrize("scores, why", [
    (np.random.default_rng(5).standard_normal(50), "fewer than"),
    (np.where(np.random.default_rng(6).random(50_000) < 0.85, 0.0, 3.0), "tied"),
    # partly tied: a healthy scan with 20 % exact zeros where the reference has none (fitted before
    # the review: 0.06 % estimated where 1 % is flagged)
    (np.where(np.random.default_rng(4).random(50_000) < 0.2, 0.0, np.random.default_rng(3).standard_normal(50_000)),
     "tied"),
    (0.01 * np.random.default_rng(8).standard_normal(50_000), "outside"),  # finer voxels: a scale of ~0
    (np.r_[np.random.default_rng(9).standard_normal(50_000), np.nan], "finite"),
])
def test_degenerate_scans_fall_back_with_a_reason(healthy, scores, why):
    reference = reference_of(healthy)
    chosen = for_scan(reference, scores, 0.01)
    assert chosen.fallback and why in chosen.reason and math.isnan(chosen.estimated_fpr)
    assert chosen.threshold == reference.threshold(0.01) and math.isnan(chosen.lesion_share)
    with pytest.raises(scan_threshold.NoFit, match=why):
        scan_threshold.fit(reference, scores)


def test_warnings_name_a_large_lesion_the_estimated_rate_and_the_remedy(healthy):
    reference = reference_of(healthy)
    shifted = 1.0 + 2.0 * np.random.default_rng(5).standard_normal(100_000)
    fixed = for_scan(reference, shifted, 0.01, "fixed")
    (warning,) = fixed.warnings()
    # the estimate that tracks what a fixed threshold flags (threshold_study.md): the threshold line's
    assert f"{100 * fixed.estimated_fpr_at_reference:.1f}%" in warning and "not 1%" in warning and "per_scan" in warning
    per_scan = for_scan(reference, shifted, 0.01)
    (warning,) = per_scan.warnings(flagged_share=0.02)
    assert "mass effect" in warning and f"{per_scan.healthy_scale:.2f}x" in warning  # ~25x off: warned
    assert len(warning) <= 200  # one short line, not a paragraph
    mild = for_scan(reference, 0.2 + 1.1 * np.random.default_rng(6).standard_normal(100_000), 0.01)
    assert 0.02 < mild.estimated_fpr_at_reference < 0.05 and mild.warnings(flagged_share=0.02) == []  # 2-5x: not
    large = for_scan(reference, np.concatenate(scan_with_lesion(0.3, offset=0.0, scale=1.0)), 0.01)
    (warning,) = large.warnings(flagged_share=0.3)
    assert "large lesion" in warning and f"{100 * large.lesion_share:.0f}%" in warning and "scanner" not in warning
    with pytest.raises(ValueError, match="mode"):
        for_scan(reference, shifted, 0.01, "adaptive")


def test_a_reference_without_its_quantiles_is_refused():
    with pytest.raises(ValueError, match="needs the thresholds"):
        HealthyReference({0.01: 1.0, 0.05: 0.5})


def test_a_separated_lesion_of_half_the_brain_is_named_not_called_another_contrast(healthy):
    """A 50 % lesion far above the healthy scores pulls the threshold's line beyond the scale range:
    the refusal names a large lesion (review of issue 30: it said 'another voxel size or contrast')."""
    reference = reference_of(healthy)
    rng = np.random.default_rng(2)
    scores = np.r_[rng.standard_normal(50_000), rng.normal(8.0, 1.0, 50_000)]
    chosen = for_scan(reference, scores, 0.01)
    assert chosen.fallback and "most likely a large lesion (an estimated 5" in chosen.reason
    assert "voxel size" not in chosen.reason
    assert np.mean(scores[50_000:] >= chosen.threshold) > 0.9  # the calibrated threshold finds it
