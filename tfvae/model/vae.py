"""``BetaVAE``: the paper's (beta-)VAE as a Keras subclassed model with a TFP evidence lower bound.

The loss of one slice x (Zhou et al., Eq. 2) is

    L(x) = Lrec(x) + beta * KL(x),
    Lrec(x) = -E_{q(z|x)} log p(x|z),        p(x|z) = Normal(g(z), 1) per pixel,
    KL(x)   = KL(q(z|x) || p(z)),            q(z|x) = Normal(mu(x), sigma(x)^2) diagonal, p(z) = N(0, I).

Lrec is the full Gaussian negative log-likelihood, 0.5 * ||x - g(z)||^2 + 0.5 * D * log(2 pi) for
D pixels; the constant does not change any gradient. During training the expectation is estimated
with one reparameterised sample of z; ``loss_terms(x, sample=False)`` uses z = mu, the paper's
inference setting, which the pixel-wise predictors differentiate with respect to x.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfvae.model import networks
from tfvae.model import optimizer  # noqa: F401  (registers FusedAdam, which runs save as their optimizer)

tfd = tfp.distributions


@keras.saving.register_keras_serializable(package="tfvae")
class BetaVAE(keras.Model):
    def __init__(self, image_size=64, latent_dim=64, beta=1.0, filters=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.image_size = int(image_size)
        self.latent_dim = int(latent_dim)
        self.beta = float(beta)
        self.filters = networks.resolve_filters(self.image_size, filters)
        self.seed = seed
        self.encoder = networks.build_encoder(self.image_size, self.latent_dim, self.filters)
        self.decoder = networks.build_decoder(self.image_size, self.latent_dim, self.filters)
        self.sampler = keras.random.SeedGenerator(seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.rec_tracker = keras.metrics.Mean(name="rec")
        self.kl_tracker = keras.metrics.Mean(name="kl")
        # the reconstruction term without its constant 0.5 * D * log(2 pi): 0.5 x the squared error
        self.rec_sq_tracker = keras.metrics.Mean(name="rec_sq")
        # The encoder and decoder are built functional models, so the model is built too; saying
        # so lets .keras saving store (and loading restore) the optimizer state with the weights.
        self.built = True

    # --- distributions -------------------------------------------------------------------------
    def posterior(self, x, training=False) -> tfd.Distribution:
        """q(z|x): diagonal Normal, batch shape (B,), event shape (latent_dim,)."""
        # float32 whatever the layers compute in (mixed precision keeps the distributions in float32)
        mu, log_sigma = tf.split(tf.cast(self.encoder(x, training=training), tf.float32), 2, axis=-1)
        return tfd.Independent(tfd.Normal(mu, tf.exp(log_sigma)), reinterpreted_batch_ndims=1)

    def prior(self) -> tfd.Distribution:
        """p(z) = N(0, I)."""
        zeros = tf.zeros((self.latent_dim,))
        return tfd.Independent(tfd.Normal(zeros, tf.ones_like(zeros)), reinterpreted_batch_ndims=1)

    def likelihood(self, z, training=False) -> tfd.Distribution:
        """p(x|z) = Normal(g(z), 1) per pixel, event shape (S, S, 1)."""
        mean = tf.cast(self.decoder(z, training=training), tf.float32)
        return tfd.Independent(tfd.Normal(mean, 1.0), reinterpreted_batch_ndims=3)

    # --- the ELBO ------------------------------------------------------------------------------
    def loss_terms(self, x, sample=True, training=False) -> dict:
        """Per-slice terms of the loss: ``rec``, ``kl``, ``loss`` (= rec + beta * kl), each (B,),
        plus ``reconstruction`` (the mean g(z), (B, S, S, 1)), ``mu`` and ``sigma`` of q(z|x).

        ``sample=False`` decodes z = mu (inference); ``sample=True`` draws one reparameterised z.
        """
        x = tf.convert_to_tensor(x, tf.float32)
        q = self.posterior(x, training=training)
        if sample:
            eps = keras.random.normal(tf.shape(q.mean()), seed=self.sampler)
            z = q.mean() + q.stddev() * eps
        else:
            z = q.mean()
        p_x = self.likelihood(z, training=training)
        rec = -p_x.log_prob(x)
        kl = tfd.kl_divergence(q, self.prior())
        return {"rec": rec, "kl": kl, "loss": rec + self.beta * kl,
                "reconstruction": p_x.mean(), "mu": q.mean(), "sigma": q.stddev()}

    def call(self, x, training=False):
        """The reconstruction g(mu(x)), float32."""
        return tf.cast(self.decoder(self.posterior(x, training=training).mean(), training=training), tf.float32)

    def sample_prior(self, n: int, seed=None):
        """Decoded means of ``n`` draws from p(z)."""
        z = self.prior().sample(n, seed=seed)
        return tf.cast(self.decoder(z, training=False), tf.float32)

    # --- Keras training loop -------------------------------------------------------------------
    @property
    def metrics(self):
        return [self.loss_tracker, self.rec_tracker, self.kl_tracker, self.rec_sq_tracker]

    def _update_trackers(self, terms):
        self.loss_tracker.update_state(terms["loss"])
        self.rec_tracker.update_state(terms["rec"])
        self.kl_tracker.update_state(terms["kl"])
        self.rec_sq_tracker.update_state(terms["rec"] - 0.5 * self.image_size ** 2 * math.log(2.0 * math.pi))
        results = {m.name: m.result() for m in self.metrics}
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras 3 reduces a multi-worker step's outputs with reduce(MEAN, axis=0): give it an axis
            results = {k: tf.reshape(v, [1]) for k, v in results.items()}
        return results

    def train_step(self, data):
        # Under tf.distribute each replica sees its share of the batch and the replicas' gradients are
        # summed: dividing each replica's summed loss by the global batch size makes that the gradient
        # of the global mean, also for a last batch split unevenly between replicas.
        context = tf.distribute.get_replica_context()
        local = tf.cast(tf.shape(data)[0], tf.float32)
        global_batch = context.all_reduce(tf.distribute.ReduceOp.SUM, local) if context.num_replicas_in_sync > 1 else local
        with tf.GradientTape() as tape:
            terms = self.loss_terms(data, sample=True, training=True)
            loss = tf.reduce_sum(terms["loss"]) / global_batch
            scaled = self.optimizer.scale_loss(loss)  # mixed precision: the LossScaleOptimizer's scale
        grads = tape.gradient(scaled, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
        return self._update_trackers(terms)

    def test_step(self, data):
        return self._update_trackers(self.loss_terms(data, sample=True, training=False))

    def get_config(self):
        config = super().get_config()
        config.update(image_size=self.image_size, latent_dim=self.latent_dim, beta=self.beta,
                      filters=list(self.filters), seed=self.seed)
        return config


def in_float32(model: BetaVAE) -> BetaVAE:
    """``model`` itself when every layer computes in float32, else a float32 copy with its weights.

    A model trained with mixed precision computes in float16, whose input gradients underflow:
    anomaly maps are always made in float32."""
    layers = model.encoder.layers + model.decoder.layers
    if all(layer.compute_dtype == "float32" for layer in layers):
        return model
    policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("float32")
    try:
        copy = BetaVAE(image_size=model.image_size, latent_dim=model.latent_dim, beta=model.beta,
                       filters=model.filters, seed=model.seed)
    finally:
        keras.mixed_precision.set_dtype_policy(policy)
    copy.encoder.set_weights(model.encoder.get_weights())
    copy.decoder.set_weights(model.decoder.get_weights())
    return copy


def load(path: str) -> BetaVAE:
    """A saved ``.keras`` model (importing this module registers ``BetaVAE`` for Keras), its layers
    in float32 whatever precision it was trained in."""
    return in_float32(keras.models.load_model(path))
