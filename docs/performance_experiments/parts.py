"""Where the maps' and projection's time goes: component timings, medians of repeated calls."""
import os, sys, time, statistics, json
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tfvae  # noqa
import numpy as np, tensorflow as tf, keras
from tfvae.model.vae import BetaVAE
from tfvae.maps.predictors import PixelPredictors, zimmerer_combi
from tfvae.maps.projection import CompiledProjection

B = int(os.environ.get("B", 64))
x = np.random.default_rng(0).normal(size=(B, 64, 64, 1)).astype(np.float32)
model = BetaVAE(image_size=64, latent_dim=64, seed=0)
pp = PixelPredictors(model)
xt = tf.convert_to_tensor(x)

def med(f, n=15):
    f(); f()
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1000

fwd = tf.function(lambda v: model(v, training=False))
terms = tf.function(lambda v: model.loss_terms(v, sample=False)["rec"])
def grad_rec(v):
    with tf.GradientTape() as tape:
        tape.watch(v); r = tf.reduce_sum(model.loss_terms(v, sample=False)["rec"])
    return tape.gradient(r, v)
grec = tf.function(grad_rec)
sig = tf.function(pp.signed_maps)
t = pp.network(x)
out = {}
out["maps total (predictors(x))"] = med(lambda: pp(x))
out["network_maps compiled + numpy"] = med(lambda: pp.network(x))
out["network_maps compiled, no numpy"] = med(lambda: pp._compiled(xt))
out["signed_maps compiled"] = med(lambda: sig(xt))
out["numpy post (maps(x,t))"] = med(lambda: pp.maps(x, t))
out["zimmerer_combi numpy+eager"] = med(lambda: zimmerer_combi(t["kl_grad_raw"], t["rec_error"], None))
out["forward g(mu(x))"] = med(lambda: fwd(xt))
out["loss_terms rec"] = med(lambda: terms(xt))
out["grad rec only (1 backward)"] = med(lambda: grec(xt))
proj = CompiledProjection(model, steps=10)
out["projection 10 steps"] = med(lambda: proj(x), 7)
for k, v in out.items():
    print(f"{k:40s} {v:8.2f} ms")
