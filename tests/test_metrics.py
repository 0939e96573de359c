"""Tests of tfvae.metrics against scikit-learn and brute-force numpy."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from tfvae import metrics
from tfvae.metrics import PixelHistogram, VolumeDice, dice

TOL = 1e-6  # required agreement with scikit-learn


def _imbalanced(seed, n=100_000, frac_pos=0.02, shift=1.0):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < frac_pos
    scores = (rng.standard_normal(n) + shift * labels).astype(np.float32)
    return scores, labels


def _hist(scores, labels, mask=None, **kw):
    h = PixelHistogram(**kw)
    h.update(scores, labels, mask)
    return h


def _assert_like_sklearn(h, scores, labels, tol=TOL):
    assert abs(h.auroc() - roc_auc_score(labels, scores)) <= tol
    assert abs(h.auprc() - average_precision_score(labels, scores)) <= tol


def _brute_best_dice(scores, labels):
    best = -1.0
    for t in np.unique(scores):
        best = max(best, dice(scores >= t, labels))
    return best


def _ties_data(seed, n=50_000):
    """Rounded, mostly zero scores: few distinct values, each in its own bin."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.03
    scores = np.round(rng.exponential(size=n) * (1 + 2 * labels), 1).astype(np.float32)
    scores[rng.random(n) < 0.6] = 0.0
    return scores, labels


# --------------------------------------------------------------- AUROC / AUPRC vs sklearn
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_continuous_scores_match_sklearn(seed):
    scores, labels = _imbalanced(seed)
    assert 0.01 < labels.mean() < 0.03
    h = _hist(scores, labels)
    assert h.exact
    _assert_like_sklearn(h, scores, labels)
    assert (h.n_pos, h.n_neg) == (labels.sum(), (~labels).sum())


@pytest.mark.parametrize("exact_limit", [1 << 22, 0])
def test_many_ties_match_sklearn(exact_limit):
    scores, labels = _ties_data(5)
    assert np.unique(scores).size < 200 and (scores == 0).mean() > 0.5
    h = _hist(scores, labels, exact_limit=exact_limit)
    assert h.exact == (exact_limit > 0)
    _assert_like_sklearn(h, scores, labels, tol=1e-12)


@pytest.mark.parametrize("exact_limit", [1 << 22, 0])
def test_negative_and_signed_zero_scores_match_sklearn(exact_limit):
    rng = np.random.default_rng(7)
    n = 20_000
    labels = rng.random(n) < 0.05
    scores = np.round(rng.standard_normal(n) - 3.0 + labels, 2).astype(np.float32)
    assert (scores < 0).mean() > 0.95
    scores[:500] = -0.0  # must tie with +0.0
    scores[500:1000] = 0.0
    h = _hist(scores, labels, exact_limit=exact_limit)
    _assert_like_sklearn(h, scores, labels, tol=1e-12)
    # all-negative continuous scores, exact mode
    s2, y2 = _imbalanced(8, n=30_000, shift=0.5)
    s2 = s2 - np.float32(10.0)
    assert s2.max() < 0
    _assert_like_sklearn(_hist(s2, y2), s2, y2)


def test_signed_zeros_are_one_tie():
    scores = np.array([-0.0, 0.0, -0.0, 0.0], dtype=np.float32)
    labels = np.array([1, 0, 0, 1])
    for limit in (1 << 22, 0):
        h = _hist(scores, labels, exact_limit=limit)
        assert h.auroc() == 0.5
        assert h.auprc() == 0.5


def test_infinite_scores_rank_like_extremes():
    rng = np.random.default_rng(3)
    scores = rng.standard_normal(1000).astype(np.float32)
    labels = rng.random(1000) < 0.2
    scores[:20] = np.inf
    scores[20:40] = -np.inf
    finite = scores.copy()
    finite[:20] = 1e6
    finite[20:40] = -1e6
    for limit in (1 << 22, 0):
        h = _hist(scores, labels, exact_limit=limit)
        _assert_like_sklearn(h, finite, labels)
        assert h.best_dice()[0] == pytest.approx(_brute_best_dice(finite, labels), abs=1e-12)


def test_chunked_feeding_is_identical(monkeypatch):
    scores, labels = _imbalanced(11, n=60_000)
    whole = _hist(scores, labels)
    # uneven external pieces, and a tiny internal chunk size (many pending tables)
    monkeypatch.setattr(metrics, "CHUNK", 997)
    pieces = PixelHistogram()
    for part in np.array_split(np.arange(scores.size), 7):
        pieces.update(scores[part], labels[part])
    assert pieces.n_pos == whole.n_pos and pieces.n_neg == whole.n_neg
    assert pieces.auroc() == whole.auroc()
    assert pieces.auprc() == whole.auprc()
    assert pieces.best_dice() == whole.best_dice()
    assert pieces.threshold_at_fpr(0.01) == whole.threshold_at_fpr(0.01)
    _assert_like_sklearn(pieces, scores, labels)


def test_tied_scores_fed_in_many_pieces_are_counted_per_class(monkeypatch):
    """Few distinct values recurring in every piece, in both classes: each consolidation sums the
    counts of a key met in the store and in many pending tables, positives and negatives apart."""
    scores, labels = _ties_data(13, n=40_000)
    monkeypatch.setattr(metrics, "CHUNK", 611)  # ~65 pending tables per class, merged many times
    pieces = PixelHistogram()
    for part in np.array_split(np.arange(scores.size), 9):
        pieces.update(scores[part], labels[part])
    assert pieces.exact
    values = np.unique(scores)
    assert pieces._keys.size == values.size  # one row per distinct score
    order = np.argsort(values)[::-1]
    table = pieces._table()
    assert table[1].tolist() == [int(np.sum(labels & (scores == v))) for v in values[order]]
    assert table[2].tolist() == [int(np.sum(~labels & (scores == v))) for v in values[order]]
    _assert_like_sklearn(pieces, scores, labels, tol=1e-12)
    assert pieces.best_dice()[0] == pytest.approx(_brute_best_dice(scores, labels), abs=1e-12)


def test_chunked_feeding_is_identical_binned(monkeypatch):
    scores, labels = _imbalanced(12, n=60_000)
    whole = _hist(scores, labels, exact_limit=0)
    monkeypatch.setattr(metrics, "CHUNK", 1 << 12)
    pieces = PixelHistogram(exact_limit=0)
    for part in np.array_split(np.arange(scores.size), 5):
        pieces.update(scores[part].reshape(-1, 4), labels[part].reshape(-1, 4))
    assert pieces.auroc() == whole.auroc()
    assert pieces.auprc() == whole.auprc()
    assert pieces.best_dice() == whole.best_dice()


def test_mask_and_shapes():
    scores, labels = _imbalanced(4, n=64 * 64 * 20)
    mask = np.random.default_rng(4).random(scores.size) < 0.7
    shape = (20, 64, 64)
    h = _hist(scores.reshape(shape), labels.reshape(shape).astype(np.uint8), mask.reshape(shape))
    _assert_like_sklearn(h, scores[mask], labels[mask])
    assert h.n_pos + h.n_neg == mask.sum()
    assert h.auroc() != pytest.approx(roc_auc_score(labels, scores), abs=1e-9)


def test_labels_above_zero_are_positive_and_float64_is_cast():
    rng = np.random.default_rng(9)
    seg = rng.choice([0, 1, 2, 4], size=5000, p=[0.9, 0.04, 0.03, 0.03])
    scores64 = rng.standard_normal(5000) + (seg > 0)
    h = _hist(scores64, seg)
    s32 = scores64.astype(np.float32)
    _assert_like_sklearn(h, s32, seg > 0)
    assert h.n_pos == np.count_nonzero(seg)


def test_switch_from_exact_to_binned(monkeypatch):
    monkeypatch.setattr(metrics, "CHUNK", 1000)
    # distinct values in distinct bins: still equal to sklearn after the switch
    rng = np.random.default_rng(6)
    labels = rng.random(20_000) < 0.05
    scores = ((rng.integers(0, 1000, labels.size) + 300 * labels) / 4 - 50).astype(np.float32)
    n_distinct = np.unique(scores).size
    assert n_distinct > 300
    h = _hist(scores, labels, exact_limit=300)
    assert not h.exact
    _assert_like_sklearn(h, scores, labels, tol=1e-12)
    # continuous scores: binned, close to sklearn (ties inside bins)
    s2, y2 = _imbalanced(13, n=50_000)
    h2 = _hist(s2, y2, exact_limit=1000)
    assert not h2.exact
    assert abs(h2.auroc() - roc_auc_score(y2, s2)) <= 1e-5
    assert abs(h2.auprc() - average_precision_score(y2, s2)) <= 1e-3


def test_binned_continuous_is_close_to_sklearn():
    scores, labels = _imbalanced(21)
    h = _hist(scores, labels, exact_limit=0)
    assert not h.exact
    assert abs(h.auroc() - roc_auc_score(labels, scores)) <= 2e-6
    assert abs(h.auprc() - average_precision_score(labels, scores)) <= 1e-4


def test_order_keys_are_monotone():
    x = np.array(
        [-np.inf, -3.4e38, -2.5, -1.0, -1e-30, -1e-45, -0.0]
        + [0.0, 1e-45, 1e-30, 1.0, 2.5, 3.4e38, np.inf],
        dtype=np.float32,
    )
    n = x.size
    key = np.empty(n, np.uint32)
    metrics._order_keys(x, np.empty(n, np.float32), np.empty(n, np.int32), key)
    d = np.diff(key.astype(np.int64))
    assert d[6] == 0  # -0.0 and 0.0
    assert (np.delete(d, 6) > 0).all()
    # lower edges decode back to the value itself at full resolution
    for v, k in zip(x, key):
        assert metrics._decode_lower_edge(int(k), 0) == float(v) + 0.0


# --------------------------------------------------------------- best Dice
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("exact_limit", [1 << 22, 0])
def test_best_dice_matches_brute_force(seed, exact_limit):
    rng = np.random.default_rng(seed)
    n = 3000
    labels = rng.random(n) < 0.1
    scores = np.round(rng.standard_normal(n) + 1.5 * labels, 2).astype(np.float32)
    h = _hist(scores, labels, exact_limit=exact_limit, bits=20)
    best, thr = h.best_dice()
    assert best == pytest.approx(_brute_best_dice(scores, labels), abs=1e-12)
    assert dice(scores >= thr, labels) == pytest.approx(best, abs=1e-12)
    assert thr in set(np.unique(scores).tolist()) or exact_limit == 0


def test_best_dice_threshold_reproduces_dice_when_binned():
    scores, labels = _imbalanced(30, n=20_000, frac_pos=0.1, shift=2.0)
    h = _hist(scores, labels, exact_limit=0)
    best, thr = h.best_dice()
    assert dice(scores >= thr, labels) == pytest.approx(best, abs=1e-12)
    assert abs(best - _brute_best_dice(scores, labels)) < 1e-3


# --------------------------------------------------------------- threshold at FPR
def _brute_threshold(neg, fpr):
    u = np.unique(neg)
    ok = [t for t in u if np.mean(neg >= t) <= fpr]
    return min(ok) if ok else None


@pytest.mark.parametrize("exact_limit", [1 << 22, 0])
@pytest.mark.parametrize("fpr", [0.0, 0.001, 0.01, 0.05, 0.3, 1.0])
def test_threshold_at_fpr(exact_limit, fpr):
    rng = np.random.default_rng(17)
    neg = np.round(rng.gamma(2.0, size=20_000), 2).astype(np.float32) - np.float32(1.0)
    neg[:3000] = 0.0
    h = _hist(neg, np.zeros(neg.size, bool), exact_limit=exact_limit, bits=20)
    t = h.threshold_at_fpr(fpr)
    assert np.mean(neg >= t) <= fpr
    lower = neg[neg < t]
    if lower.size:
        assert np.mean(neg >= lower.max()) > fpr
    brute = _brute_threshold(neg, fpr)
    if brute is None:
        assert t > neg.max()
    else:
        assert np.mean(neg >= t) == np.mean(neg >= brute)
        if exact_limit:
            assert t == brute


def test_threshold_at_fpr_ignores_positives():
    rng = np.random.default_rng(18)
    neg = rng.standard_normal(10_000).astype(np.float32)
    h = _hist(neg, np.zeros(neg.size, bool))
    t = h.threshold_at_fpr(0.02)
    h.update(rng.standard_normal(2000).astype(np.float32) + 3, np.ones(2000, bool))
    assert h.threshold_at_fpr(0.02) == t


# --------------------------------------------------------------- merge
@pytest.mark.parametrize("limits", [(1 << 22, 1 << 22), (1 << 22, 0), (0, 1 << 22), (0, 0)])
def test_merge_equals_single_histogram(limits):
    s1, y1 = _imbalanced(40, n=30_000)
    s2, y2 = _imbalanced(41, n=20_000)
    a = _hist(s1, y1, exact_limit=limits[0], bits=20)
    b = _hist(s2, y2, exact_limit=limits[1], bits=20)
    b_auroc = b.auroc()
    both = PixelHistogram(exact_limit=min(limits), bits=20)
    both.update(s1, y1)
    both.update(s2, y2)
    a.merge(b)
    assert b.auroc() == b_auroc  # other unchanged
    assert (a.n_pos, a.n_neg) == (both.n_pos, both.n_neg)
    assert a.auroc() == pytest.approx(both.auroc(), abs=1e-12)
    assert a.auprc() == pytest.approx(both.auprc(), abs=1e-12)
    assert a.best_dice() == pytest.approx(both.best_dice(), abs=1e-12)
    assert a.threshold_at_fpr(0.01) == both.threshold_at_fpr(0.01)
    if limits == (1 << 22, 1 << 22):
        assert a.exact
        s, y = np.concatenate([s1, s2]), np.concatenate([y1, y2])
        _assert_like_sklearn(a, s, y)


def test_merge_rejects_other_bits():
    with pytest.raises(ValueError, match="bits"):
        PixelHistogram(bits=20).merge(PixelHistogram(bits=24))


# --------------------------------------------------------------- dice, VolumeDice
def test_dice_hand_computed():
    assert dice([1, 1, 0, 0], [1, 0, 1, 0]) == 0.5  # 2*1 / (2+2)
    assert dice([1, 1, 1, 0], [1, 0, 0, 0]) == 0.5  # 2*1 / (3+1)
    assert dice([1, 1, 0], [1, 1, 0]) == 1.0
    assert dice([0, 0, 0], [0, 0, 0]) == 1.0  # both empty
    assert dice([0, 0, 0], [0, 1, 0]) == 0.0
    assert dice([1, 0, 0], [0, 0, 0]) == 0.0
    p = np.zeros((4, 4), bool)
    t = np.zeros((4, 4), bool)
    p[:2] = True  # 8 pixels
    t[1:3, :2] = True  # 4 pixels, 2 shared
    assert dice(p, t) == pytest.approx(2 * 2 / 12)


def test_volume_dice_mean_std():
    rng = np.random.default_rng(50)
    thresholds = {"low": 0.5, "high": 1.5}
    vd = VolumeDice(thresholds)
    expected = {k: [] for k in thresholds}
    for _ in range(6):
        labels = rng.random((8, 16, 16)) < rng.uniform(0.0, 0.2)
        scores = (rng.standard_normal(labels.shape) + 2 * labels).astype(np.float32)
        mask = rng.random(labels.shape) < 0.9
        vd.update(scores, labels.astype(np.int64) * 2, mask)
        for k, t in thresholds.items():
            p, g = (scores >= t)[mask], labels[mask]
            den = p.sum() + g.sum()
            expected[k].append(1.0 if den == 0 else 2.0 * (p & g).sum() / den)
    summary = vd.summary()
    for k in thresholds:
        assert summary[k]["n"] == 6
        assert summary[k]["mean"] == pytest.approx(np.mean(expected[k]), abs=1e-12)
        assert summary[k]["std"] == pytest.approx(np.std(expected[k]), abs=1e-12)
    assert summary["low"]["mean"] != pytest.approx(summary["high"]["mean"], abs=1e-6)
    empty = VolumeDice({"x": 0.0}).summary()["x"]
    assert empty["n"] == 0 and np.isnan(empty["mean"])


def test_volume_fpr_known_answer_fixed_and_per_volume_thresholds():
    # volume 1: 10 negatives (scores 0..9) and 2 positives; at 7 three negatives flagged -> 0.3
    # volume 2: 4 negatives (scores 0, 1, 2, 3), one masked out; at 7 none flagged -> 0.0
    vd = VolumeDice({"t": 7.0})
    vd.update(np.r_[np.arange(10.0), 8.0, 9.0], np.r_[np.zeros(10), 1, 1])
    vd.update(np.array([0.0, 1.0, 2.0, 30.0]), np.zeros(4), mask=np.array([True, True, True, False]))
    fpr = vd.fpr_summary()["t"]
    assert vd.fprs["t"] == [pytest.approx(0.3), 0.0]
    assert fpr["pooled"] == pytest.approx(3 / 13) and fpr["mean"] == pytest.approx(0.15)
    assert fpr["std"] == pytest.approx(0.15) and fpr["max"] == pytest.approx(0.3) and fpr["n"] == 2
    # the volumes' distribution: median 0.15, 90th percentile 0 + 0.9 * (0.3 - 0) (linear interpolation)
    assert fpr["median"] == pytest.approx(0.15) and fpr["p90"] == pytest.approx(0.27)
    # the same volumes, each at its own threshold: 5 flags 5 of volume 1's negatives, 1 two of volume 2's
    own = VolumeDice({"t": 0.0})
    own.update(np.r_[np.arange(10.0), 8.0, 9.0], np.r_[np.zeros(10), 1, 1], thresholds={"t": 5.0})
    own.update(np.array([0.0, 1.0, 2.0, 30.0]), np.zeros(4), mask=np.array([True, True, True, False]),
               thresholds={"t": 1.0})
    assert own.fprs["t"] == [pytest.approx(0.5), pytest.approx(2 / 3)]
    assert own.fpr_summary()["t"]["pooled"] == pytest.approx(7 / 13)
    assert own.values["t"][0] == pytest.approx(2 * 2 / (7 + 2))  # 5 negatives + 2 positives flagged
    # negatives marked far are also counted apart: volume 1's negatives 0..4, 8 and 9 (2 of 7 flagged; its
    # far positives never count); volume 2's 0 and 30, with 30 masked out (0 of 1)
    far = VolumeDice({"t": 7.0})
    far.update(np.r_[np.arange(10.0), 8.0, 9.0], np.r_[np.zeros(10), 1, 1],
               far=np.r_[np.ones(5), 0, 0, 0, 1, 1, 1, 1].astype(bool))
    far.update(np.array([0.0, 1.0, 2.0, 30.0]), np.zeros(4), mask=np.array([True, True, True, False]),
               far=np.array([True, False, False, True]))
    assert far.fpr_summary()["t"]["far_pooled"] == pytest.approx(2 / 8)
    assert far.fpr_summary()["t"]["pooled"] == pytest.approx(3 / 13)
    assert np.isnan(vd.fpr_summary()["t"]["far_pooled"])  # none given
    with pytest.raises(ValueError, match="far has shape"):
        far.update(np.zeros(4), np.zeros(4), far=np.zeros(3, bool))
    # a volume without negatives has no false-positive rate
    lesion_only = VolumeDice({"t": 0.5})
    lesion_only.update(np.ones(3), np.ones(3))
    assert np.isnan(lesion_only.fprs["t"][0]) and lesion_only.fpr_summary()["t"]["n"] == 0


def test_volume_fpr_distribution_over_volumes_is_numpys_and_skips_volumes_without_negatives():
    """median and p90 of fpr_summary are np.percentile of the volumes' own rates, not of the pixels:
    five volumes of 10 negatives each flag 0, 1, 2, 3 and 9 of them at 0.5 -- pooled 15/50, median
    0.2, 90th percentile 0.3 + 0.6 * 0.6 -- and a volume of lesion only (no rate) is left out."""
    vd = VolumeDice({"t": 0.5})
    for flagged in (3, 0, 9, 1, 2):
        vd.update((np.arange(10) < flagged).astype(float), np.zeros(10))
    vd.update(np.ones(4), np.ones(4))  # lesion only: no false-positive rate
    fpr = vd.fpr_summary()["t"]
    rates = np.array([0.3, 0.0, 0.9, 0.1, 0.2])
    assert fpr["n"] == 5 and fpr["pooled"] == pytest.approx(15 / 50)
    assert fpr["median"] == pytest.approx(np.percentile(rates, 50)) == pytest.approx(0.2)
    assert fpr["p90"] == pytest.approx(np.percentile(rates, 90)) == pytest.approx(0.66)
    assert fpr["max"] == pytest.approx(0.9) and fpr["mean"] == pytest.approx(0.3)
    empty = VolumeDice({"t": 0.5}).fpr_summary()["t"]
    assert empty["n"] == 0 and np.isnan(empty["median"]) and np.isnan(empty["p90"])


def test_volume_fpr_matches_sklearn_roc_curve():
    from sklearn.metrics import roc_curve

    scores, labels = _imbalanced(61, n=4000, frac_pos=0.1, shift=1.5)
    fpr_curve, _, thresholds = roc_curve(labels, scores)
    for k in (5, len(thresholds) // 3, len(thresholds) // 2):
        vd = VolumeDice({"t": float(thresholds[k])})
        vd.update(scores, labels)
        assert vd.fprs["t"][0] == pytest.approx(fpr_curve[k], abs=1e-12)


def test_volume_dice_uses_histogram_thresholds_consistently():
    scores, labels = _imbalanced(60, n=5000, frac_pos=0.1, shift=2.0)
    best, thr = _hist(scores, labels, exact_limit=0).best_dice()
    vd = VolumeDice({"best": thr})
    vd.update(scores, labels)
    assert vd.summary()["best"]["mean"] == pytest.approx(best, abs=1e-12)


# --------------------------------------------------------------- errors
def test_auroc_requires_both_classes():
    h = _hist(np.arange(5.0), np.zeros(5))
    with pytest.raises(ValueError, match="no positive"):
        h.auroc()
    with pytest.raises(ValueError, match="no positive"):
        h.auprc()
    with pytest.raises(ValueError, match="no positive"):
        h.best_dice()
    h = _hist(np.arange(5.0), np.ones(5))
    with pytest.raises(ValueError, match="no negative"):
        h.auroc()
    with pytest.raises(ValueError, match="no negative"):
        h.threshold_at_fpr(0.1)
    assert h.auprc() == 1.0


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(4, 3\)"):
        PixelHistogram().update(np.zeros((3, 4)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(12,\)"):
        PixelHistogram().update(np.zeros((3, 4)), np.zeros((3, 4)), mask=np.ones(12, bool))
    with pytest.raises(ValueError, match=r"\(2,\).*\(3,\)"):
        dice([1, 0], [1, 0, 0])
    with pytest.raises(ValueError, match=r"\(2, 2\).*\(4,\)"):
        VolumeDice({"a": 0.0}).update(np.zeros((2, 2)), np.zeros(4))


def test_nan_and_bad_arguments():
    s = np.array([0.1, np.nan, 0.3], dtype=np.float32)
    with pytest.raises(ValueError, match="NaN"):
        PixelHistogram().update(s, [0, 1, 0])
    with pytest.raises(ValueError, match="NaN"):
        PixelHistogram(exact_limit=0).update(s, [0, 1, 0])
    with pytest.raises(ValueError, match="NaN"):
        VolumeDice({"a": 0.0}).update(s, [0, 1, 0])
    # a masked-out NaN is never read
    h = PixelHistogram()
    h.update(s, [0, 1, 1], mask=[True, False, True])
    assert h.auroc() == 1.0
    with pytest.raises(ValueError, match="fpr"):
        h.threshold_at_fpr(1.5)
    with pytest.raises(ValueError, match="bits"):
        PixelHistogram(bits=4)
