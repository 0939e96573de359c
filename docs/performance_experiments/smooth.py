"""The reference smoothing of three (64, 64, 64, 1) maps: one-channel convolutions (before), batched matmuls with a banded matrix (now), GEMM + transposes, depthwise."""
import os, time, statistics
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tfvae  # noqa
import numpy as np, tensorflow as tf
from tfvae.maps.predictors import smooth_reference_tensor, reference_kernel
B, S = 64, 64
rng = np.random.default_rng(0)
maps = [tf.constant(np.abs(rng.normal(size=(B, S, S, 1))).astype(np.float32)) for _ in range(3)]
def med(f, n=41):
    for _ in range(3): f()
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1000
profile = reference_kernel().sum(axis=1).astype(np.float32)
r = len(profile) // 2
def band(s):
    idx = tf.range(s)
    d = idx[None, :] - idx[:, None] + r
    return tf.where((d >= 0) & (d < 2 * r + 1), tf.gather(tf.constant(profile), tf.clip_by_value(d, 0, 2 * r)), 0.0)
def conv_smooth(m):  # the code before 2026-12-07 05:20: a 7-tap column pass and a row pass, one channel
    m = tf.nn.conv2d(m, tf.constant(profile[:, None, None, None]), strides=1, padding="SAME")
    return tf.nn.conv2d(m, tf.constant(profile[None, :, None, None]), strides=1, padding="SAME")
now = tf.function(lambda a, b, c: [conv_smooth(m) for m in (a, b, c)])
tfvae_now = tf.function(lambda a, b, c: tf.split(smooth_reference_tensor(tf.concat([a, b, c], 0)), 3))
def bmm(a, b, c):
    x = tf.concat([a, b, c], 0)[..., 0]
    t = band(tf.shape(x)[1])
    y = tf.matmul(tf.matmul(t, x), t, transpose_b=True)
    return tf.split(y[..., None], 3)
bm = tf.function(bmm)
def gemm(a, b, c):
    x = tf.concat([a, b, c], 0)[..., 0]
    n, s = tf.shape(x)[0], tf.shape(x)[1]
    t = band(s)
    y = tf.reshape(tf.matmul(tf.reshape(x, (-1, s)), t, transpose_b=True), (n, s, s))  # row pass
    y = tf.transpose(y, (0, 2, 1))
    y = tf.reshape(tf.matmul(tf.reshape(y, (-1, s)), t, transpose_b=True), (n, s, s))  # column pass, transposed
    return tf.split(tf.transpose(y, (0, 2, 1))[..., None], 3)
gm = tf.function(gemm)
def dw(a, b, c):
    x = tf.concat([a, b, c], -1)
    k1 = tf.constant(np.tile(profile[:, None, None, None], (1, 1, 3, 1)))
    k2 = tf.constant(np.tile(profile[None, :, None, None], (1, 1, 3, 1)))
    y = tf.nn.depthwise_conv2d(tf.nn.depthwise_conv2d(x, k1, [1, 1, 1, 1], "SAME"), k2, [1, 1, 1, 1], "SAME")
    return tf.split(y, 3, axis=-1)
dwf = tf.function(dw)
ref = [m.numpy() for m in now(*maps)]
for name, f in [("before: 6 convs", now), ("batch matmul", bm), ("GEMM + transposes", gm), ("depthwise", dwf),
                ("tfvae now (stacked, banded)", tfvae_now)]:
    out = f(*maps)
    err = max(float(np.abs(o.numpy() - r_).max() / np.abs(r_).max()) for o, r_ in zip(out, ref))
    print(f"{name:22s} {med(lambda: f(*maps)):6.2f} ms   max rel err {err:.1e}", flush=True)
