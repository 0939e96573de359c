"""Training: Keras Adam vs a fused ResourceApplyAdam step; steps_per_execution 1 vs 4."""
import os, sys, time, statistics
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tfvae  # noqa
import numpy as np, tensorflow as tf, keras
from tfvae.model.vae import BetaVAE

from tfvae.model.optimizer import FusedAdam

B = 64
x = np.random.default_rng(0).normal(size=(B, 64, 64, 1)).astype(np.float32)
ds = tf.data.Dataset.from_tensor_slices(np.repeat(x, 4, 0)).batch(B).cache().repeat()

class Timer(keras.callbacks.Callback):
    def on_train_begin(self, logs=None): self.ends = []
    def on_train_batch_end(self, batch, logs=None): self.ends.append(time.perf_counter())

def setup(opt, spe):
    keras.utils.set_random_seed(0)
    m = BetaVAE(image_size=64, latent_dim=64, seed=0)
    m.compile(optimizer=opt, steps_per_execution=spe)
    m.fit(ds, steps_per_epoch=8, epochs=1, verbose=0)
    return m

variants = {"keras Adam, spe 1": (lambda: keras.optimizers.Adam(1e-4), 1),
            "fused Adam, spe 1": (lambda: FusedAdam(1e-4), 1),
            "keras Adam, spe 4": (lambda: keras.optimizers.Adam(1e-4), 4),
            "fused Adam, spe 4": (lambda: FusedAdam(1e-4), 4)}
models = {k: (setup(o(), s), s) for k, (o, s) in variants.items()}
# same numbers? one step each from the same weights
res = {k: [] for k in models}
for r in range(3):
    for k, (m, spe) in models.items():
        t = Timer()
        m.fit(ds, steps_per_epoch=40, epochs=1, verbose=0, callbacks=[t])
        res[k].append(B * spe / statistics.median(np.diff(t.ends)))
for k, v in res.items():
    print(f"{k:20s} {statistics.median(v):7.0f} slices/s  rounds {[round(a) for a in v]}")
# equivalence: 3 steps from the same start
a, b = setup(keras.optimizers.Adam(1e-3), 1), setup(FusedAdam(1e-3), 1)
d = max(float(np.abs(p - q).max() / (np.abs(p).max() + 1e-12)) for p, q in zip(a.get_weights(), b.get_weights()))
print("max relative weight difference after 8 steps (same seed):", d)
