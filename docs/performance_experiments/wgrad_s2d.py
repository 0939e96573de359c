"""Weight gradient of a 4x4 stride-2 SAME convolution: oneDNN's Conv2DBackpropFilter against the same
gradient as a 2x2 stride-1 convolution's on the space-to-depth of the padded input (then rearranged)."""
import os, time, statistics
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tfvae  # noqa: F401  (oneDNN on)
import numpy as np, tensorflow as tf

def med(f, n=31):
    for _ in range(3): f()
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1000

rng = np.random.default_rng(0)
for (H, C, K) in ((8, 64, 256), (16, 32, 64), (32, 16, 32), (64, 1, 16)):
    x = tf.constant(rng.normal(size=(64, H, H, C)).astype(np.float32))
    dy = tf.constant(rng.normal(size=(64, H // 2, H // 2, K)).astype(np.float32))
    direct = tf.function(lambda a, b: tf.raw_ops.Conv2DBackpropFilter(
        input=a, filter_sizes=[4, 4, C, K], out_backprop=b, strides=[1, 2, 2, 1], padding="SAME"))

    @tf.function
    def s2d(a, b):
        # SAME, k4 s2, even H: pad 1 before, 1 after (output H/2); pad to H+2, space-to-depth -> (H/2+1)^2 x 4C
        p = tf.pad(a, [[0, 0], [1, 1], [1, 1], [0, 0]])
        p = tf.nn.space_to_depth(p, 2)  # channel order (dy, dx, c)
        g = tf.raw_ops.Conv2DBackpropFilter(input=p, filter_sizes=[2, 2, 4 * C, K], out_backprop=b,
                                            strides=[1, 1, 1, 1], padding="VALID")
        g = tf.reshape(g, (2, 2, 2, 2, C, K))          # (i, j, dy, dx, c, k): kernel tap (2i+dy, 2j+dx)
        g = tf.transpose(g, (0, 2, 1, 3, 4, 5))          # (i, dy, j, dx, c, k)
        return tf.reshape(g, (4, 4, C, K))

    ref = direct(x, dy).numpy()
    err = np.abs(s2d(x, dy).numpy() - ref).max() / np.abs(ref).max()
    for r in range(2):
        a, b = med(lambda: direct(x, dy)), med(lambda: s2d(x, dy))
        print(f"H={H} C={C} K={K}: 4x4 stride 2 {a:5.2f} ms   space-to-depth 2x2 {b:5.2f} ms ({a / b:4.2f} x)   rel err {err:.1e}",
              flush=True)
