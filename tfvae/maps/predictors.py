"""Pixel-wise anomaly maps from a trained (beta-)VAE (Zhou et al., Sec. 2.2), made the way the
code the paper builds on makes them (Zimmerer et al., ``MIC-DKFZ/vae-anomaly-experiments``,
``brats_script.py::test_pixel`` and ``utils/util.py``).

For a batch of slices x (B, S, S, 1), with L = Lrec + beta * KL the model's per-slice loss:

- ``rec_error``  (x - g(mu(x)))^2, the pixel-wise squared reconstruction error (never smoothed);
- ``elbo_grad``  |dL/dx|, the gradient of the slice's own loss: with beta, as trained
  (``elbo_grad="beta"``, the default), or without it as the reference code's ELBO has no beta
  weight (``elbo_grad="reference"``: |d(Lrec + KL)/dx|); the two agree at beta = 1;
- ``kl_grad``    |dKL/dx|;
- ``rec_grad``   |dLrec/dx|;
- ``combi``      two variants (``predictors.combi``):
  ``"zimmerer"`` (the reference): ``smooth(normalise(|dKL/dx|)) * nll``, where ``normalise`` is
  min-max scaling and ``nll = 0.5 (x - g)^2 + 0.5 log(2 pi)`` is the per-pixel negative
  log-likelihood, constant included (it makes the map rank by KL-grad where the residual is
  small). The reference normalises with the minimum and maximum of the *batch*, which makes a
  pixel's score depend on the other slices it is scored with; we use a fixed range instead
  (``kl_range``), taken from the healthy validation maps (``tfvae.thresholds.calibration``); without one the
  batch's own range is used, exactly as the reference does.
  ``"paper"``: |dKL/dx| * rec_error, the product as the paper writes it;
- ``intensity``  the input itself: the plain-threshold baseline (Meissen et al.);
- ``proj_rec_error``, ``ensemble`` and ``recommended`` come from ``tfvae.maps.projection``,
  ``tfvae.maps.ensemble`` and ``tfvae.maps.recommended``.

Smoothing. ``smooth_gradients`` (on by default, as in the reference) smooths ELBO-grad, KL-grad and
Rec-grad -- not Rec-Error -- with the reference's kernel (``reference_kernel``: a normalised 7x7
Gaussian, sigma 3 px, zero padding). ``smooth_sigma`` > 0 additionally smooths every map with a
Gaussian of that many pixels (``scipy.ndimage``, reflecting borders; off by default).

All gradient maps come from one forward pass under one ``tf.GradientTape``: the gradients of the
batch sums of Lrec and KL (slices do not interact, so these are each slice's own gradients; the
reference differentiates the batch *mean*, i.e. the same maps divided by the batch size), and
dL/dx = dLrec/dx + beta * dKL/dx. With ``n_samples=0`` z = mu (the paper); with n > 0 every map
is averaged over n reparameterised samples of z (the KL term does not depend on z).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
from scipy import ndimage

from tfvae.config.predictor_names import ALL_PREDICTORS, GRADIENT_MAPS  # noqa: F401  (the names, without TensorFlow)

SMOOTHED_GRADIENTS = ("elbo_grad", "kl_grad", "rec_grad")
COMBI_VARIANTS = ("zimmerer", "paper")
ELBO_GRAD_VARIANTS = ("beta", "reference")  # dL/dx with L = Lrec + beta * KL, or Lrec + KL (Zimmerer et al.)
# utils/util.py::smooth_tensor(kernel_size=8, sigma=3): an even size is decremented, so 7x7
REFERENCE_KERNEL_SIZE, REFERENCE_SIGMA = 8, 3.0
HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def smooth(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of (B, S, S, 1) maps within each slice (reflecting borders)."""
    return ndimage.gaussian_filter(maps, sigma=(0, sigma, sigma, 0)) if sigma > 0 else maps


def reference_kernel(kernel_size: int = REFERENCE_KERNEL_SIZE, sigma: float = REFERENCE_SIGMA) -> np.ndarray:
    """The reference's 2D Gaussian: an odd size (even sizes lose one), centred, normalised to sum 1."""
    size = kernel_size - 1 if kernel_size % 2 == 0 else kernel_size
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    kernel = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2.0 * sigma ** 2))
    return kernel / kernel.sum()


def _band(n, profile: np.ndarray) -> tf.Tensor:
    """The (n, n) matrix T with T[i, j] = profile[j - i + r] where |j - i| <= r (r = len(profile) // 2),
    0 elsewhere: T @ m is m's columns convolved with the (symmetric) ``profile``, zero padding."""
    r = len(profile) // 2
    index = tf.range(n)
    offset = index[None, :] - index[:, None] + r
    inside = (offset >= 0) & (offset <= 2 * r)
    return tf.where(inside, tf.gather(tf.constant(profile, tf.float32), tf.clip_by_value(offset, 0, 2 * r)), 0.0)


def smooth_reference_tensor(maps: tf.Tensor) -> tf.Tensor:
    """(B, H, W, 1) float32 maps convolved slice by slice with ``reference_kernel()``, zero padding,
    same size (the reference's depthwise ``Conv2d(padding=kernel_size // 2)``), inside a graph.

    The 2D Gaussian is the outer product of its row sums (symmetric): a column pass then a row pass,
    each a product with a banded matrix (``_band``), T_H @ m @ T_W^T per slice -- the same sums as
    the 7x7 convolution to float rounding, and on the CPU several times faster than TensorFlow's
    convolution kernels for one channel (``docs/performance.md``). Stack maps along the batch axis
    to smooth them in one call."""
    profile = reference_kernel().sum(axis=1)
    m = maps[..., 0]
    shape = tf.shape(m)
    smoothed = tf.matmul(tf.matmul(_band(shape[1], profile), m), _band(shape[2], profile), transpose_b=True)
    return smoothed[..., None]


_smooth_reference_compiled = tf.function(smooth_reference_tensor, reduce_retracing=True)


def smooth_reference(maps: np.ndarray) -> np.ndarray:
    """``smooth_reference_tensor`` of numpy maps (B, H, W, 1), float32 (compiled)."""
    return _smooth_reference_compiled(tf.convert_to_tensor(maps, tf.float32)).numpy()


def min_max(maps: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """(maps - lo) / (hi - lo) with ``value_range`` = (lo, hi), or the maps' own extremes when None
    (the reference's ``normalize``, over the whole batch)."""
    lo, hi = (float(maps.min()), float(maps.max())) if value_range is None else map(float, value_range)
    return ((maps - lo) / max(hi - lo, 1e-30)).astype(np.float32)


def zimmerer_combi(kl_grad: np.ndarray, rec_error: np.ndarray, kl_range=None) -> np.ndarray:
    """``smooth_reference(min_max(|dKL/dx|)) * (0.5 * rec_error + 0.5 log 2 pi)``; ``kl_grad`` unsmoothed."""
    return smooth_reference(min_max(kl_grad, kl_range)) * (0.5 * rec_error + HALF_LOG_2PI)


class PixelPredictors:
    """Computes the gradient / reconstruction maps of a model, compiled once per input shape."""

    def __init__(self, model, *, n_samples: int = 0, combi: str = "zimmerer", smooth_gradients: bool = True,
                 smooth_sigma: float = 0.0, kl_range: tuple[float, float] | None = None, elbo_grad: str = "beta"):
        if combi not in COMBI_VARIANTS:
            raise ValueError(f"combi must be one of {', '.join(COMBI_VARIANTS)}, got {combi!r}")
        if elbo_grad not in ELBO_GRAD_VARIANTS:
            raise ValueError(f"elbo_grad must be one of {', '.join(ELBO_GRAD_VARIANTS)}, got {elbo_grad!r}")
        self.elbo_weight = float(model.beta) if elbo_grad == "beta" else 1.0  # the weight of dKL/dx in dL/dx
        self.model = model
        self.n_samples = int(n_samples)
        self.combi = combi
        self.smooth_gradients = bool(smooth_gradients)
        self.smooth_sigma = float(smooth_sigma)
        self.kl_range = kl_range
        self._compiled = tf.function(self.network_maps, reduce_retracing=True)

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
                "d_rec": d_rec, "d_kl": d_kl, "d_loss": d_rec + self.elbo_weight * d_kl}

    def network_maps(self, x):
        """Tensors: ``rec_error``, ``reconstruction``, the gradient maps ``elbo_grad``, ``kl_grad``,
        ``rec_grad`` (absolute values, smoothed with the reference's kernel when
        ``smooth_gradients``) and ``kl_grad_raw`` (|dKL/dx| unsmoothed: what the Combi and
        ``kl_range`` are made of) -- everything of the maps that needs the network, in one graph."""
        t = self.signed_maps(x)
        kl_raw = tf.abs(t["d_kl"])
        grads = {"elbo_grad": tf.abs(t["d_loss"]), "kl_grad": kl_raw, "rec_grad": tf.abs(t["d_rec"])}
        if self.smooth_gradients:  # the three maps stacked along the batch axis: one smoothing call
            smoothed = smooth_reference_tensor(tf.concat([grads[k] for k in SMOOTHED_GRADIENTS], axis=0))
            grads.update(zip(SMOOTHED_GRADIENTS, tf.split(smoothed, len(SMOOTHED_GRADIENTS), axis=0)))
        return {"rec_error": t["rec_error"], "reconstruction": t["reconstruction"], **grads, "kl_grad_raw": kl_raw}

    def network(self, x) -> dict[str, np.ndarray]:
        """``network_maps`` of a batch, compiled, as numpy arrays."""
        return {k: v.numpy() for k, v in self._compiled(tf.convert_to_tensor(x, tf.float32)).items()}

    def raw_kl_grad(self, x) -> np.ndarray:
        """|dKL/dx| before any smoothing: what ``kl_range`` is taken from."""
        return self.network(x)["kl_grad_raw"]

    def __call__(self, x) -> dict[str, np.ndarray]:
        """numpy maps of ``GRADIENT_MAPS`` plus ``intensity`` and ``reconstruction``."""
        return self.maps(x, self.network(x))

    def maps(self, x, t: dict) -> dict[str, np.ndarray]:
        """The maps of the batch ``x`` from its ``network`` arrays ``t``."""
        maps = {k: t[k] for k in ("rec_error", "elbo_grad", "kl_grad", "rec_grad")}
        if self.combi == "zimmerer":
            maps["combi"] = zimmerer_combi(t["kl_grad_raw"], t["rec_error"], self.kl_range)
        else:
            maps["combi"] = t["kl_grad_raw"] * t["rec_error"]
        maps = {k: smooth(v, self.smooth_sigma) for k, v in maps.items()}
        maps["intensity"] = np.asarray(x, np.float32)
        maps["reconstruction"] = t["reconstruction"]
        return maps
