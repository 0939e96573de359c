"""The one-channel transposed convolution: its 3x3 phase convolution with 4-32 output channels, depth_to_space against a transpose."""
import os, time, statistics
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tfvae  # noqa
import numpy as np, tensorflow as tf
from tfvae.model import networks
B, H, C = 64, 32, 16
rng = np.random.default_rng(0)
x = tf.constant(rng.normal(size=(B, H, H, C)).astype(np.float32))
k = tf.constant(rng.normal(size=(4, 4, 1, C)).astype(np.float32))
def med(f, n=31):
    for _ in range(3): f()
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1000
pk = networks.phase_kernel(k)
ref = networks.to_phases(x, k).numpy()
for n in (4, 8, 16, 32):
    kk = tf.concat([pk, tf.zeros((3, 3, C, n - 4))], -1) if n > 4 else pk
    f = tf.function(lambda v, kk=kk: tf.nn.conv2d(v, kk, 1, "SAME"))
    print(f"conv3x3 16->{n:2d}: {med(lambda: f(x)):6.2f} ms", flush=True)
y4 = tf.nn.conv2d(x, pk, 1, "SAME")
d2s = tf.function(lambda v: tf.nn.depth_to_space(v, 2))
def tr(v):
    v = tf.reshape(v, (B, H, H, 2, 2))
    return tf.reshape(tf.transpose(v, (0, 1, 3, 2, 4)), (B, 2 * H, 2 * H, 1))
trf = tf.function(tr)
print("d2s", med(lambda: d2s(y4)), "transpose", med(lambda: trf(y4)), np.abs(trf(y4).numpy() - d2s(y4).numpy()).max())
# NCHW conv for the phase conv?
try:
    xc = tf.transpose(x, (0, 3, 1, 2))
    fc = tf.function(lambda v: tf.nn.conv2d(v, pk, 1, "SAME", data_format="NCHW"))
    print("NCHW conv", med(lambda: fc(xc)))
except Exception as e:
    print("NCHW", type(e).__name__, str(e)[:100])
# full alternative: conv to 8 then slice + transpose
kk8 = tf.concat([pk, tf.zeros((3, 3, C, 4))], -1)
alt = tf.function(lambda v: tr(tf.nn.conv2d(v, kk8, 1, "SAME")[..., :4]))
alt4 = tf.function(lambda v: tr(tf.nn.conv2d(v, pk, 1, "SAME")))
now = tf.function(lambda v: tf.nn.depth_to_space(tf.nn.conv2d(v, networks.phase_kernel(k), 1, "SAME"), 2))  # before
print("now", med(lambda: now(x)), "conv4+transpose", med(lambda: alt4(x)), "conv8+slice+transpose", med(lambda: alt(x)), np.abs(alt(x).numpy() - ref).max())
