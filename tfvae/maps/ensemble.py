"""The predictor ensemble (Zhou et al., Sec. 2.3): logistic regression over the pixel values of
several maps -- ``ensemble.features``, by default the paper's ``rec_error``, ``kl_grad`` and
``rec_grad``; any other predictor (``intensity``, ``recommended``, ...) may be one -- fitted on a
seeded share of the test volumes (``evaluate.ensemble_fraction``, split by volume, never by slice)
and scored on the others. Its numbers therefore use labels of the fit volumes.

Features are standardised before the fit (scikit-learn pipeline); ``coefficients()`` reports them
both on that scale and on the raw scale of each map (the paper reports the raw ones: 1e-1, 1e-1
and 1e2 for its beta = 10 model). A pixel's score is the fitted model's decision function (the
log-odds of tumour), which ranks pixels as the probability does but does not saturate at 1.0 in
float32 the way the probability of confident pixels does (ties that would distort AUROC).
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

FEATURES = ("rec_error", "kl_grad", "rec_grad")


def split_volumes(volume_ids, fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(fit volumes, scored volumes): ``fraction`` of the distinct ids (at least one) drawn with
    ``seed``, and the rest (at least one)."""
    ids = sorted(set(volume_ids))
    if len(ids) < 2:
        raise ValueError(f"the ensemble needs at least 2 test volumes (one to fit, one to score), got {len(ids)}")
    n_fit = min(max(1, int(round(fraction * len(ids)))), len(ids) - 1)
    fit = set(np.random.default_rng(seed).choice(len(ids), n_fit, replace=False).tolist())
    return [v for i, v in enumerate(ids) if i in fit], [v for i, v in enumerate(ids) if i not in fit]


def _features(maps: dict, features) -> np.ndarray:
    return np.stack([np.asarray(maps[f], np.float64).ravel() for f in features], axis=1)


class PredictorEnsemble:
    """Collects pixels of the fit volumes (at most ``pixels_per_volume`` each, drawn at random),
    fits, then scores maps."""

    def __init__(self, features=FEATURES, pixels_per_volume: int = 200_000, seed: int = 0):
        self.features = tuple(features)
        self.pixels_per_volume = pixels_per_volume
        self.rng = np.random.default_rng(seed)
        self._x, self._y = [], []
        self.fit_volumes: list[str] = []
        self.pipeline = None

    def add_volume(self, volume_id: str, maps: dict, label: np.ndarray) -> None:
        x, y = _features(maps, self.features), (np.asarray(label).ravel() > 0)
        if len(y) > self.pixels_per_volume:
            keep = self.rng.choice(len(y), self.pixels_per_volume, replace=False)
            x, y = x[keep], y[keep]
        self._x.append(x)
        self._y.append(y)
        self.fit_volumes.append(volume_id)

    def fit(self) -> None:
        y = np.concatenate(self._y)
        if y.all() or not y.any():
            raise ValueError(f"the ensemble's fit volumes {self.fit_volumes} hold only one class of pixel")
        self.pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        self.pipeline.fit(np.concatenate(self._x), y)
        self._x, self._y = [], []

    def score(self, maps: dict) -> np.ndarray:
        """The log-odds of tumour per pixel (the decision function), shaped like the maps."""
        shape = np.shape(maps[self.features[0]])
        return self.pipeline.decision_function(_features(maps, self.features)).reshape(shape).astype(np.float32)

    def coefficients(self) -> dict:
        scaler, logistic = self.pipeline[0], self.pipeline[1]
        standardised = logistic.coef_[0]
        raw = standardised / scaler.scale_
        return {"features": list(self.features), "standardised": standardised.tolist(), "raw": raw.tolist(),
                "intercept_raw": float(logistic.intercept_[0] - np.sum(raw * scaler.mean_)),
                "fit_volumes": list(self.fit_volumes)}
