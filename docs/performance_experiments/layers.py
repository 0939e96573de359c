"""Per-layer forward and input-gradient times at batch 64 (ms) and GFLOP/s."""
import os, time, statistics
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tfvae  # noqa
import numpy as np, tensorflow as tf
from tfvae.model.vae import BetaVAE
from tfvae.model.networks import layer_flops
B = 64
model = BetaVAE(image_size=64, latent_dim=64, seed=0)
def med(f, n=21):
    for _ in range(3): f()
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1000
rows = []
for net in (model.encoder, model.decoder):
    for layer in net.layers:
        fl = layer_flops(layer)
        if not fl and "act" not in layer.name:
            continue
        shape = (B,) + tuple(layer.input.shape[1:])
        x = tf.random.normal(shape)
        fwd = tf.function(lambda v, l=layer: l(v))
        def bwd_(v, l=layer):
            with tf.GradientTape() as t:
                t.watch(v); y = l(v)
            return t.gradient(y, v, output_gradients=tf.ones_like(y))
        bwd = tf.function(bwd_)
        f = med(lambda: fwd(x)); b = med(lambda: bwd(x))
        g = fl * B / 1e9
        print(f"{net.name[:3]} {layer.name:10s} {str(shape[1:]):16s} fwd {f:6.2f} ms {g/f*1e3 if fl else 0:6.0f} GF/s | fwd+bwd_in {b:6.2f} ms {2*g/b*1e3 if fl else 0:6.0f} GF/s", flush=True)
