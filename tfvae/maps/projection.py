"""Energy-based projection onto the normal manifold (Dehaene et al. 2020; Zhou et al. Eq. 4-5).

Starting from the input x0, minimise over the image

    E(x) = Lrec(x) + lambda * ||x - x0||_1,     Lrec(x) = -log p(x | z = mu(x)),

with Adam (learning rate 0.03 in the paper) for ``steps`` steps. Each slice has its own energy;
Adam's per-pixel scaling makes minimising the batch sum the same as minimising each slice's. The
whole loop of steps runs inside one ``tf.function`` per batch (``CompiledProjection``), with no
Python step loop at run time; ``project`` is the same maths, runnable eagerly.

The ``proj_rec_error`` score is the reconstruction error of the projected image against the input:

    proj_rec_error = (x0 - g(mu(x_T)))^2,

so with 0 steps it equals ``rec_error``. Defaults (``predictors.projection_*``): 100 steps,
lambda 1.0, learning rate 0.03 -- the paper gives neither the step count nor lambda.

**Masked projection** (``CompiledProjection.masked``, the recommended map's second restoration):
per-pixel weights w in the data term, E(x) = Lrec(x) + lambda * sum(w * |x - x0|), started from
x_init instead of x0. With w = 1 and x_init = x0 it is the projection above; where w = 0 only the
model's likelihood moves the pixels, so a region flagged as anomalous is restored from the model
alone instead of being held near the lesion it contains.
"""

from __future__ import annotations

import tensorflow as tf

ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON = 0.9, 0.999, 1e-7


def energy(model, x, x0, lam, weights=None):
    """E(x) of each slice, shape (B,); ``weights`` (like x0, default 1): the data term's per pixel."""
    distance = tf.abs(x - x0) if weights is None else weights * tf.abs(x - x0)
    return model.loss_terms(x, sample=False)["rec"] + lam * tf.reduce_sum(distance, axis=[1, 2, 3])


def project(model, x0, steps, lam=1.0, lr=0.03, x_init=None, weights=None):
    """x_T after ``steps`` Adam steps on E (with ``weights``), starting at ``x_init`` (default x0);
    eager or inside a tf.function."""
    x0 = tf.convert_to_tensor(x0, tf.float32)
    steps = tf.convert_to_tensor(steps, tf.int32)
    lam = tf.convert_to_tensor(lam, tf.float32)
    lr = tf.convert_to_tensor(lr, tf.float32)
    x = x0 if x_init is None else tf.convert_to_tensor(x_init, tf.float32)
    m, v = tf.zeros_like(x0), tf.zeros_like(x0)
    for t in tf.range(1, steps + 1):
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(energy(model, x, x0, lam, weights))
        g = tape.gradient(total, x)
        m = ADAM_BETA1 * m + (1 - ADAM_BETA1) * g
        v = ADAM_BETA2 * v + (1 - ADAM_BETA2) * g * g
        tf_t = tf.cast(t, tf.float32)
        m_hat = m / (1 - ADAM_BETA1 ** tf_t)
        v_hat = v / (1 - ADAM_BETA2 ** tf_t)
        x = x - lr * m_hat / (tf.sqrt(v_hat) + ADAM_EPSILON)
    return x


class CompiledProjection:
    """``(projected, proj_rec_error, projected_reconstruction)`` for a batch, the whole step loop
    compiled into one graph (traced once per batch shape; steps, lambda and lr are inputs)."""

    def __init__(self, model, steps: int = 100, lam: float = 1.0, lr: float = 0.03):
        self.model, self.steps, self.lam, self.lr = model, int(steps), float(lam), float(lr)
        self._run = tf.function(self._graph, reduce_retracing=True)
        self._run_masked = tf.function(self._masked_graph, reduce_retracing=True)

    def _masked_graph(self, x0, x_init, weights, steps, lam, lr):
        return self.model(project(self.model, x0, steps, lam, lr, x_init=x_init, weights=weights), training=False)

    def masked(self, x0, x_init, weights):
        """The reconstruction g(mu(x_T)) of the masked projection of a batch (see the module
        docstring): data-term ``weights`` per pixel, started at ``x_init``; arrays like ``x0``."""
        args = [tf.convert_to_tensor(a, tf.float32) for a in (x0, x_init, weights)]
        return self._run_masked(*args, tf.constant(self.steps), tf.constant(self.lam), tf.constant(self.lr)).numpy()

    def _graph(self, x0, steps, lam, lr):
        x = project(self.model, x0, steps, lam, lr)
        reconstruction = self.model(x, training=False)
        return x, (x0 - reconstruction) ** 2, reconstruction

    def __call__(self, x0):
        x, score, reconstruction = self._run(tf.convert_to_tensor(x0, tf.float32), tf.constant(self.steps),
                                             tf.constant(self.lam), tf.constant(self.lr))
        return x.numpy(), score.numpy(), reconstruction.numpy()
