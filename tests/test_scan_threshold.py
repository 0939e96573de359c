"""Per-scan thresholds (tfvae.scan_threshold) against closed forms and direct counts."""

import math

import numpy as np
import pytest
from scipy import stats

from tfvae import metrics, scan_threshold
from tfvae.scan_threshold import REFERENCE_FPRS, HealthyReference, for_scan


def reference_of(samples) -> HealthyReference:
    """A reference calibrated as evaluation calibrates: thresholds from a ``PixelHistogram``."""
    hist = metrics.PixelHistogram()
    hist.update(samples, np.zeros(len(samples)))
    return HealthyReference({rate: hist.threshold_at_fpr(rate) for rate in set(REFERENCE_FPRS) | {0.01, 0.05}})


@pytest.fixture(scope="module")
def healthy():
    return np.random.default_rng(0).standard_normal(400_000).astype(np.float32)


def test_survival_is_exact_for_an_exponential_tail():
    # thresholds of Exp(1): t = -ln(rate); log-linear interpolation and extrapolation are exact
    reference = HealthyReference({rate: -math.log(rate) for rate in REFERENCE_FPRS})
    for x in (0.5, 1.0, 2.0, 4.0, 6.9, 9.0):
        assert reference.survival(x) == pytest.approx(math.exp(-x), rel=1e-9)
    assert reference.survival(0.0) == 1.0  # below the lowest stored threshold: capped at 1


def test_a_scan_shifted_and_scaled_gets_the_rate_asked_for(healthy):
    reference = reference_of(healthy)
    rng = np.random.default_rng(1)
    scan_healthy = 1.0 + 2.0 * rng.standard_normal(200_000)  # another site: N(1, 2)
    lesion = rng.uniform(8.0, 12.0, 10_000)  # 5 % of the brain, far above
    scores = np.concatenate([scan_healthy, lesion])
    # with every lesion pixel above the bulk, the scan's p-quantile is its healthy part's p / h-quantile
    # (h: the healthy share): the line the fit must find, in closed form
    h, bulk = len(scan_healthy) / len(scores), np.asarray(scan_threshold.BULK_QUANTILES)
    scale, offset = np.polyfit(stats.norm.ppf(bulk), 1.0 + 2.0 * stats.norm.ppf(bulk / h), 1)
    for fpr in (0.01, 0.05):
        chosen = for_scan(reference, scores, fpr, "per_scan")
        assert chosen.scale == pytest.approx(scale, rel=0.01) and chosen.offset == pytest.approx(offset, abs=0.02)
        expected = stats.norm.sf((offset + scale * stats.norm.isf(fpr) - 1.0) / 2.0)  # slightly under fpr
        assert fpr / 2 < expected < fpr
        assert np.mean(scan_healthy >= chosen.threshold) == pytest.approx(expected, rel=0.1)
        assert chosen.estimated_fpr == pytest.approx(fpr, rel=1e-6)
        # the calibrated threshold would flag P(N(1, 2) >= z_(1-fpr)): estimated without labels
        closed_form = stats.norm.sf((stats.norm.isf(fpr) - 1.0) / 2.0)
        assert np.mean(scan_healthy >= chosen.reference_threshold) == pytest.approx(closed_form, rel=0.05)
        assert chosen.estimated_fpr_at_reference == pytest.approx(closed_form, rel=0.15)
        fixed = for_scan(reference, scores, fpr, "fixed")
        assert fixed.threshold == chosen.reference_threshold == reference.threshold(fpr)
        assert fixed.estimated_fpr == chosen.estimated_fpr_at_reference


def test_the_fit_is_the_least_squares_line_of_the_bulk_quantiles(healthy):
    reference = reference_of(healthy)
    scores = np.random.default_rng(2).gamma(2.0, size=50_000)
    offset, scale = scan_threshold.fit(reference, scores)
    expected_scale, expected_offset = np.polyfit(
        np.quantile(healthy, scan_threshold.BULK_QUANTILES), np.quantile(scores, scan_threshold.BULK_QUANTILES), 1)
    assert scale == pytest.approx(expected_scale, rel=1e-3) and offset == pytest.approx(expected_offset, abs=1e-3)


def test_an_unshifted_scan_keeps_about_the_calibrated_threshold(healthy):
    reference = reference_of(healthy)
    scan = np.random.default_rng(3).standard_normal(100_000)
    chosen = for_scan(reference, scan, 0.01)
    assert chosen.threshold == pytest.approx(reference.threshold(0.01), rel=0.03)
    assert chosen.estimated_fpr_at_reference == pytest.approx(0.01, rel=0.2)
    assert chosen.warnings(flagged_share=0.012) == []


def test_a_tied_bulk_falls_back_to_the_calibrated_threshold_and_says_so():
    # a positive-part map: 90 % of the healthy pixels score exactly 0
    samples = np.where(np.random.default_rng(4).random(100_000) < 0.9, 0.0, 1.0 + np.arange(100_000) * 1e-5)
    reference = reference_of(samples)
    chosen = for_scan(reference, samples, 0.01)
    assert chosen.fallback and chosen.threshold == reference.threshold(0.01) and math.isnan(chosen.estimated_fpr)
    assert "could not be matched" in chosen.warnings()[0]
    assert not for_scan(reference, samples, 0.01, "fixed").fallback
    assert scan_threshold.fit(reference, samples[:50]) is None  # too few brain pixels, whatever the map


def test_warnings_name_the_estimated_rate_and_the_remedy(healthy):
    reference = reference_of(healthy)
    shifted = 1.0 + 2.0 * np.random.default_rng(5).standard_normal(100_000)
    fixed = for_scan(reference, shifted, 0.01, "fixed")
    (warning,) = fixed.warnings()
    assert f"{100 * fixed.estimated_fpr:.1f}%" in warning and "not 1%" in warning and "per_scan" in warning
    per_scan = for_scan(reference, shifted, 0.01)
    (warning,) = per_scan.warnings(flagged_share=0.02)
    assert "corrects for it" in warning and f"{per_scan.scale:.2f}x" in warning  # ~25x off: warned
    mild = for_scan(reference, 0.2 + 1.1 * np.random.default_rng(6).standard_normal(100_000), 0.01)
    assert 0.02 < mild.estimated_fpr_at_reference < 0.05 and mild.warnings(flagged_share=0.02) == []  # 2-5x: not
    assert any("minority" in w for w in per_scan.warnings(flagged_share=0.35))
    with pytest.raises(ValueError, match="mode"):
        for_scan(reference, shifted, 0.01, "adaptive")


def test_a_reference_without_its_bulk_is_refused():
    with pytest.raises(ValueError, match="needs the thresholds"):
        HealthyReference({0.01: 1.0, 0.05: 0.5})
