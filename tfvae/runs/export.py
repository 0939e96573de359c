"""A run's model as a TensorFlow SavedModel, for TF Serving and ``tf.saved_model.load``.

Serving signatures, each on a batch of *preprocessed* slices (``x``: float32, (batch, S, S, 1),
z-scored as ``tfvae.data.preprocessing`` makes them):

- ``reconstruct``: ``reconstruction`` = g(mu(x));
- ``maps``: ``reconstruction``, ``rec_error`` = (x - g)^2, and the gradient maps ``elbo_grad``,
  ``kl_grad``, ``rec_grad`` = |dL/dx|, |dKL/dx|, |dLrec/dx| of each slice's own loss, smoothed with
  the reference's 7x7 Gaussian when the run's ``predictors.smooth_gradients`` is on -- the maps
  ``tfvae.maps.predictors.PixelPredictors`` makes (z = mu).

The maps needing a whole volume or healthy-validation statistics (``recommended``, ``combi``,
``proj_rec_error``) and the thresholds stay with the library (``Run.localize``).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from tfvae.maps.predictors import PixelPredictors, reference_kernel
from tfvae.utils.rundir import sibling

SIGNATURES = ("reconstruct", "maps")


class ServingModule(tf.Module):
    """The model and its map-making as ``tf.function`` s with fixed input signatures."""

    def __init__(self, model, smooth_gradients: bool = True):
        super().__init__()
        self.model = model
        self.predictors = PixelPredictors(model)
        self.smooth_gradients = bool(smooth_gradients)
        self.kernel = tf.constant(reference_kernel()[:, :, None, None], tf.float32)
        spec = tf.TensorSpec([None, model.image_size, model.image_size, 1], tf.float32, name="x")
        self.reconstruct = tf.function(self._reconstruct, input_signature=[spec])
        self.maps = tf.function(self._maps, input_signature=[spec])

    def _reconstruct(self, x):
        return {"reconstruction": self.model(x, training=False)}

    def _smooth(self, maps):
        # the reference's depthwise convolution with zero padding ("SAME" pads with zeros)
        return tf.nn.conv2d(maps, self.kernel, strides=1, padding="SAME") if self.smooth_gradients else maps

    def _maps(self, x):
        t = self.predictors.signed_maps(x)
        return {"reconstruction": t["reconstruction"], "rec_error": t["rec_error"],
                "elbo_grad": self._smooth(tf.abs(t["d_loss"])), "kl_grad": self._smooth(tf.abs(t["d_kl"])),
                "rec_grad": self._smooth(tf.abs(t["d_rec"]))}


def export(model, out_dir: str, *, smooth_gradients: bool = True) -> str:
    """Write the SavedModel of ``model`` to ``out_dir`` (a new folder, written whole: a temporary
    sibling renamed into place); returns ``out_dir``."""
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"{out_dir} already exists and is not empty; choose another --out")
    module = ServingModule(model, smooth_gradients)
    module.maps(tf.zeros([1, model.image_size, model.image_size, 1]))  # trace once: fail here, not at load
    tmp = sibling(out_dir, "partial")
    tf.saved_model.save(module, tmp, signatures={"reconstruct": module.reconstruct, "maps": module.maps})
    if os.path.isdir(out_dir):
        os.rmdir(out_dir)  # empty
    os.replace(tmp, out_dir)
    return out_dir


def serve(saved_dir: str, x: np.ndarray, signature: str = "maps") -> dict[str, np.ndarray]:
    """Call a signature of an exported SavedModel on a batch, as TF Serving would."""
    loaded = tf.saved_model.load(saved_dir)
    out = loaded.signatures[signature](x=tf.convert_to_tensor(x, tf.float32))
    return {k: v.numpy() for k, v in out.items()}
