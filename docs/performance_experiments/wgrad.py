"""Weight gradients of the 16-256 channel layers: oneDNN Conv2DBackpropFilter against extract_patches + one GEMM."""
import os, time, statistics
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tfvae  # noqa
import numpy as np, tensorflow as tf
def med(f, n=31):
    for _ in range(3): f()
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1000
rng = np.random.default_rng(0)
for (H, C, K) in ((8, 64, 256), (16, 32, 64), (32, 16, 32)):
    x = tf.constant(rng.normal(size=(64, H, H, C)).astype(np.float32))
    dy = tf.constant(rng.normal(size=(64, H // 2, H // 2, K)).astype(np.float32))
    onednn = tf.function(lambda a, b: tf.raw_ops.Conv2DBackpropFilter(input=a, filter_sizes=[4, 4, C, K], out_backprop=b, strides=[1, 2, 2, 1], padding="SAME"))
    def gemm(a, b):
        # SAME padding for 4x4 stride 2 on even H: pad 1 before, 2 after
        p = tf.image.extract_patches(tf.pad(a, [[0, 0], [1, 2], [1, 2], [0, 0]]), [1, 4, 4, 1], [1, 2, 2, 1], [1, 1, 1, 1], "VALID")
        p = tf.reshape(p, (-1, 16 * C))
        return tf.reshape(tf.matmul(p, tf.reshape(b, (-1, K)), transpose_a=True), (4, 4, C, K))
    g = tf.function(gemm)
    err = np.abs(g(x, dy).numpy() - onednn(x, dy).numpy()).max() / np.abs(onednn(x, dy).numpy()).max()
    fl = 2 * 64 * (H // 2) ** 2 * 16 * C * K / 1e9
    a, b = med(lambda: onednn(x, dy)), med(lambda: g(x, dy))
    print(f"H={H} C={C} K={K}: oneDNN {a:5.2f} ms ({fl/a*1e3:4.0f} GF/s)  patches+GEMM {b:5.2f} ms ({fl/b*1e3:4.0f} GF/s)  rel err {err:.1e}", flush=True)
