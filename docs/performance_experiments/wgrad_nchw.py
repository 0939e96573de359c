"""Weight gradients of each layer (1-256 channels): oneDNN Conv2DBackpropFilter on NHWC tensors against the
same op on NCHW ones (the transposes counted), both through TensorFlow's oneDNN kernels."""
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
    nhwc = tf.function(lambda a, b: tf.raw_ops.Conv2DBackpropFilter(input=a, filter_sizes=[4, 4, C, K], out_backprop=b, strides=[1, 2, 2, 1], padding="SAME"))
    @tf.function
    def nchw(a, b):
        return tf.raw_ops.Conv2DBackpropFilter(input=tf.transpose(a, [0, 3, 1, 2]), filter_sizes=[4, 4, C, K],
                                               out_backprop=tf.transpose(b, [0, 3, 1, 2]), strides=[1, 1, 2, 2],
                                               padding="SAME", data_format="NCHW")
    ref = nhwc(x, dy).numpy()
    err = np.abs(nchw(x, dy).numpy() - ref).max() / np.abs(ref).max()
    fl = 2 * 64 * (H // 2) ** 2 * 16 * C * K / 1e9
    for r in range(2):
        a, b = med(lambda: nhwc(x, dy)), med(lambda: nchw(x, dy))
        print(f"H={H} C={C} K={K}: NHWC {a:5.2f} ms ({fl/a*1e3:4.0f} GF/s)  NCHW+transposes {b:5.2f} ms ({fl/b*1e3:4.0f} GF/s)  rel err {err:.1e}", flush=True)
