"""Pixel-wise anomaly maps from a trained (beta-)VAE (Zhou et al., Sec. 2.2).

For a batch of slices x (B, S, S, 1), with L = Lrec + beta * KL the model's per-slice loss:

- ``rec_error``  (x - g(mu(x)))^2, the pixel-wise squared reconstruction error;
- ``elbo_grad``  |dL/dx|, the gradient of the slice's own loss (with beta, as trained);
- ``kl_grad``    |dKL/dx|;
- ``rec_grad``   |dLrec/dx|;
- ``combi``      |dKL/dx| * rec_error (the paper); ``combi="zimmerer"`` smooths KL-grad
  (sigma ``ZIMMERER_SIGMA`` px) and min-max normalises it per slice before the product;
- ``intensity``  the input itself: the plain-threshold baseline (Meissen et al.);
- ``proj_rec_error`` and ``ensemble`` come from ``tfvae.projection`` and ``tfvae.ensemble``.

All gradient maps come from one forward pass under one ``tf.GradientTape``: the gradients of the
batch sums of Lrec and KL (slices do not interact, so these are each slice's own gradients), and
dL/dx = dLrec/dx + beta * dKL/dx. With ``n_samples=0`` z = mu (the paper); with n > 0 every map
is averaged over n reparameterised samples of z (the KL term does not depend on z).
``smooth_sigma`` > 0 smooths every map with a Gaussian of that many pixels (off in the paper).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from scipy import ndimage

GRADIENT_MAPS = ("rec_error", "elbo_grad", "kl_grad", "rec_grad", "combi")
ALL_PREDICTORS = GRADIENT_MAPS + ("proj_rec_error", "ensemble", "intensity")
ZIMMERER_SIGMA = 3.0


def smooth(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of (B, S, S, 1) maps within each slice."""
    return ndimage.gaussian_filter(maps, sigma=(0, sigma, sigma, 0)) if sigma > 0 else maps


def _normalise_per_slice(maps: np.ndarray) -> np.ndarray:
    lo = maps.min(axis=(1, 2, 3), keepdims=True)
    hi = maps.max(axis=(1, 2, 3), keepdims=True)
    return (maps - lo) / np.maximum(hi - lo, 1e-12)


class PixelPredictors:
    """Computes the gradient / reconstruction maps of a model, compiled once per input shape."""

    def __init__(self, model, *, n_samples: int = 0, combi: str = "paper", smooth_sigma: float = 0.0):
        if combi not in ("paper", "zimmerer"):
            raise ValueError(f"combi must be 'paper' or 'zimmerer', got {combi!r}")
        self.model = model
        self.n_samples = int(n_samples)
        self.combi = combi
        self.smooth_sigma = float(smooth_sigma)
        self._compiled = tf.function(self.signed_maps, reduce_retracing=True)

    def signed_maps(self, x):
        """Tensors: ``rec_error``, ``reconstruction``, and the signed gradients ``d_rec``, ``d_kl``,
        ``d_loss`` of each slice's terms with respect to its pixels."""
        x = tf.convert_to_tensor(x, tf.float32)
        n = max(self.n_samples, 1)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            inputs = tf.tile(x, [n, 1, 1, 1]) if self.n_samples else x
            terms = self.model.loss_terms(inputs, sample=bool(self.n_samples))
            rec = tf.reduce_sum(terms["rec"]) / n
            kl = tf.reduce_sum(terms["kl"]) / n
        d_rec = tape.gradient(rec, x)
        d_kl = tape.gradient(kl, x)
        del tape
        shape = tf.concat([[n], tf.shape(x)], axis=0)
        reconstruction = tf.reduce_mean(tf.reshape(terms["reconstruction"], shape), axis=0)
        rec_error = tf.reduce_mean(tf.reshape((inputs - terms["reconstruction"]) ** 2, shape), axis=0)
        return {"rec_error": rec_error, "reconstruction": reconstruction,
                "d_rec": d_rec, "d_kl": d_kl, "d_loss": d_rec + self.model.beta * d_kl}

    def __call__(self, x) -> dict[str, np.ndarray]:
        """numpy maps of ``GRADIENT_MAPS`` plus ``intensity`` and ``reconstruction``."""
        t = {k: v.numpy() for k, v in self._compiled(tf.convert_to_tensor(x, tf.float32)).items()}
        kl_grad = np.abs(t["d_kl"])
        maps = {"rec_error": t["rec_error"], "elbo_grad": np.abs(t["d_loss"]), "kl_grad": kl_grad,
                "rec_grad": np.abs(t["d_rec"]), "intensity": np.asarray(x, np.float32)}
        if self.combi == "zimmerer":
            kl_grad = _normalise_per_slice(smooth(kl_grad, ZIMMERER_SIGMA))
        maps["combi"] = kl_grad * t["rec_error"]
        maps = {k: smooth(v, self.smooth_sigma) if k != "intensity" else v for k, v in maps.items()}
        maps["reconstruction"] = t["reconstruction"]
        return maps
