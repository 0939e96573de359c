"""The transposed 4x4 stride-2 convolution 16 -> 1 channel, (64, 32, 32, 16) -> (64, 64, 64, 1): variants."""
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
stock = tf.function(lambda v: tf.nn.conv2d_transpose(v, k, (B, 2*H, 2*H, 1), 2, "SAME"))
phases_before = tf.function(lambda v: tf.nn.depth_to_space(tf.nn.conv2d(v, networks.phase_kernel(k), 1, "SAME"), 2))
phases = tf.function(lambda v: networks.to_phases(v, k))
pk = networks.phase_kernel(k)  # (3,3,C,4)
conv_only = tf.function(lambda v: tf.nn.conv2d(v, pk, 1, "SAME"))
d2s = tf.function(lambda v: tf.nn.depth_to_space(v, 2))
y4 = conv_only(x)
# matmul then shifted sum: (B*H*H, C) @ (C, 36) -> (B, H, H, 9, 4); out[i,j] = sum_t P[i+dy, j+dx, t]
K36 = tf.reshape(tf.transpose(pk, (2, 0, 1, 3)), (C, 36))  # taps (dy, dx) row-major, then phase
def mm_shift(v):
    p = tf.reshape(tf.matmul(tf.reshape(v, (-1, C)), K36), (B, H, H, 9, 4))
    p = tf.pad(p, [[0, 0], [1, 1], [1, 1], [0, 0], [0, 0]])
    out = 0
    for t in range(9):
        dy, dx = divmod(t, 3)
        out = out + p[:, dy:dy + H, dx:dx + H, t, :]
    return tf.nn.depth_to_space(out, 2)
mms = tf.function(mm_shift)
# NCHW-free: conv2d with the 4 phases computed as 4 separate 2x2 convs? use conv2d with "VALID" on padded
def einsum_patch(v):
    pt = tf.image.extract_patches(v, [1, 3, 3, 1], [1, 1, 1, 1], [1, 1, 1, 1], "SAME")  # (B,H,H,9C)
    return tf.nn.depth_to_space(tf.reshape(tf.matmul(tf.reshape(pt, (-1, 9 * C)), tf.reshape(pk, (9 * C, 4))), (B, H, H, 4)), 2)
ep = tf.function(einsum_patch)
ref = stock(x).numpy()
for name, f in [("stock conv2d_transpose", stock), ("phases + depth_to_space (before)", phases_before),
                ("to_phases (now: interleave)", phases), ("  its conv2d 3x3 C->4", conv_only),
                ("matmul + 9 shifted adds", mms), ("extract_patches + matmul", ep)]:
    arg = x
    t = med(lambda: f(arg))
    err = "" if "its" in name else f"max err {np.abs(f(arg).numpy() - ref).max():.1e}"
    print(f"{name:28s} {t:6.2f} ms  {err}", flush=True)
print(f"{'  depth_to_space alone':28s} {med(lambda: d2s(y4)):6.2f} ms")
ident = tf.function(lambda v: v + 0.0)
print(f"{'  v + 0 (4 MB)':28s} {med(lambda: ident(x)):6.2f} ms")
