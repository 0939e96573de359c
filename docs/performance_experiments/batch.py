"""The maps core and the projection at batches of 32-256 slices (with INTEROP=1: one inter-op thread)."""
import os, sys, time, statistics
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tfvae  # noqa
import numpy as np, tensorflow as tf
if os.environ.get("INTEROP"):
    tf.config.threading.set_inter_op_parallelism_threads(int(os.environ["INTEROP"]))
from tfvae.model.vae import BetaVAE
from tfvae.maps.predictors import PixelPredictors
from tfvae.maps.projection import CompiledProjection
model = BetaVAE(image_size=64, latent_dim=64, seed=0)
pp = PixelPredictors(model)
def med(f, n=9):
    f(); f()
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)
for B in (32, 64, 128, 256):
    x = tf.convert_to_tensor(np.random.default_rng(0).normal(size=(B, 64, 64, 1)).astype(np.float32))
    s = med(lambda: pp._compiled(x))
    proj = CompiledProjection(model, steps=5)
    p = med(lambda: proj(x.numpy()), 5)
    print(f"B={B:4d} maps core {B/s:7.0f} slices/s   projection {B*5/p:7.0f} slice-steps/s", flush=True)
