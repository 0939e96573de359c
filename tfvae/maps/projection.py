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
"""

from __future__ import annotations

import tensorflow as tf

ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON = 0.9, 0.999, 1e-7


def energy(model, x, x0, lam):
    """E(x) of each slice, shape (B,)."""
    l1 = tf.reduce_sum(tf.abs(x - x0), axis=[1, 2, 3])
    return model.loss_terms(x, sample=False)["rec"] + lam * l1


def project(model, x0, steps, lam=1.0, lr=0.03):
    """x_T after ``steps`` Adam steps on E, starting at x0 (eager or inside a tf.function)."""
    x0 = tf.convert_to_tensor(x0, tf.float32)
    steps = tf.convert_to_tensor(steps, tf.int32)
    lam = tf.convert_to_tensor(lam, tf.float32)
    lr = tf.convert_to_tensor(lr, tf.float32)
    x, m, v = x0, tf.zeros_like(x0), tf.zeros_like(x0)
    for t in tf.range(1, steps + 1):
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(energy(model, x, x0, lam))
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

    def _graph(self, x0, steps, lam, lr):
        x = project(self.model, x0, steps, lam, lr)
        reconstruction = self.model(x, training=False)
        return x, (x0 - reconstruction) ** 2, reconstruction

    def __call__(self, x0):
        x, score, reconstruction = self._run(tf.convert_to_tensor(x0, tf.float32), tf.constant(self.steps),
                                             tf.constant(self.lam), tf.constant(self.lr))
        return x.numpy(), score.numpy(), reconstruction.numpy()
