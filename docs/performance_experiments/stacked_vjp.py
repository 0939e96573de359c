"""Experiment (issue 35): the encoder's two input-gradient passes of the maps (rec, KL) as one
vectorized VJP (pfor over the stacked cotangents, one backward pass of batch 2B) against the two
passes of ``PixelPredictors.signed_maps``; both at z = mu, batch 64. The run's folder is the argument
(a trained quick-start run: runs/design/s0)."""
import os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tfvae  # noqa: F401  (oneDNN on)
import numpy as np
import tensorflow as tf
from tfvae.runs.run import Run
import tensorflow_probability as tfp
tfd = tfp.distributions

run = Run(sys.argv[1] if len(sys.argv) > 1 else "../../runs/design/s0")
model = run.model()
B = 64
x = tf.constant(np.random.default_rng(0).random((B, 64, 64, 1)).astype(np.float32))

def terms_from_h(h, x):
    mu, log_sigma = tf.split(tf.cast(h, tf.float32), 2, axis=-1)
    q = tfd.Independent(tfd.Normal(mu, tf.exp(log_sigma)), reinterpreted_batch_ndims=1)
    p_x = model.likelihood(q.mean())
    return -p_x.log_prob(x), tfd.kl_divergence(q, model.prior()), p_x.mean()

@tf.function
def two_pass(x):
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        t = model.loss_terms(x, sample=False)
        rec, kl = tf.reduce_sum(t["rec"]), tf.reduce_sum(t["kl"])
    return tape.gradient(rec, x), tape.gradient(kl, x)

@tf.function
def stacked(x):
    with tf.GradientTape(persistent=True) as tape:
        x_lik = tf.identity(x)  # the likelihood's own copy of x: its direct term apart from the encoder's
        tape.watch([x, x_lik])
        h = model.encoder(x)
        rec, kl, _ = terms_from_h(h, x_lik)
        rec, kl = tf.reduce_sum(rec), tf.reduce_sum(kl)
    g_rec_h, d_rec_direct = tape.gradient(rec, [h, x_lik])  # x enters rec directly too (the likelihood)
    g_kl_h = tape.gradient(kl, h)
    d = tf.vectorized_map(lambda g: tape.gradient(h, x, output_gradients=g), tf.stack([g_rec_h, g_kl_h]))
    return d[0] + d_rec_direct, d[1]

def check_posterior():
    # the posterior the model uses must equal what terms_from_h builds
    q = model.posterior(x)
    print("posterior type", type(q).__name__)

check_posterior()
a = two_pass(x); b = stacked(x)
for u, v, n in zip(a, b, ("rec", "kl")):
    u, v = u.numpy(), v.numpy()
    print(n, "max abs diff / range", np.abs(u - v).max() / (np.ptp(u) + 1e-30))

def timeit(f, n=20):
    for _ in range(3): f(x)
    ts = []
    for _ in range(n):
        t0 = time.perf_counter(); r = f(x); [t.numpy() for t in r]; ts.append(time.perf_counter() - t0)
    return np.median(ts) * 1e3

for r in range(3):
    print(f"round {r}: two passes {timeit(two_pass):.2f} ms   stacked {timeit(stacked):.2f} ms", flush=True)
