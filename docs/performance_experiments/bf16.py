"""bfloat16 training: tfvae (mixed_bfloat16) against the peer's torch.autocast(bfloat16), interleaved."""
import os, sys, time, statistics, json, subprocess
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
what = sys.argv[1] if len(sys.argv) > 1 else "driver"
if what == "peer":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    import torch, numpy as np
    from tfvae.studies.benchmark_peer import Peer
    p = Peer(batch=64, size=64, latent=64, repeats=3, steps=15, projection_steps=10)
    def train16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            p.train()
    for line in sys.stdin:
        train16()
        ts = []
        for _ in range(5):
            t = time.perf_counter(); train16(); ts.append(time.perf_counter() - t)
        print(json.dumps({"bf16": 64 * 15 / statistics.median(ts)}), flush=True)
    sys.exit()
import tfvae  # noqa
import numpy as np, tensorflow as tf, keras
from tfvae.model.vae import BetaVAE
from tfvae.model.optimizer import FusedAdam
x = np.random.default_rng(0).normal(size=(64, 64, 64, 1)).astype(np.float32)
ds = tf.data.Dataset.from_tensor_slices(np.repeat(x, 4, 0)).batch(64).cache().repeat()
class Timer(keras.callbacks.Callback):
    def on_train_begin(self, logs=None): self.ends = []
    def on_train_batch_end(self, batch, logs=None): self.ends.append(time.perf_counter())
def make(policy):
    keras.mixed_precision.set_dtype_policy(policy)
    m = BetaVAE(image_size=64, latent_dim=64, seed=0)
    m.compile(optimizer=FusedAdam(1e-4))
    keras.mixed_precision.set_dtype_policy("float32")
    m.fit(ds, steps_per_epoch=5, epochs=1, verbose=0)
    return m
models = {"float32": make("float32"), "bfloat16": make("mixed_bfloat16")}
peer = subprocess.Popen([sys.executable, __file__, "peer"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
res = {"tfvae float32": [], "tfvae bfloat16": [], "peer bfloat16": []}
for r in range(3):
    for k, m in models.items():
        t = Timer(); m.fit(ds, steps_per_epoch=40, epochs=1, verbose=0, callbacks=[t])
        res[f"tfvae {k}"].append(64 / statistics.median(np.diff(t.ends)))
    peer.stdin.write("go\n"); peer.stdin.flush()
    res["peer bfloat16"].append(json.loads(peer.stdout.readline())["bf16"])
peer.stdin.close()
for k, v in res.items():
    print(f"{k:16s} {statistics.median(v):7.0f} slices/s  rounds {[round(a) for a in v]}")
print("tfvae bf16 / peer bf16, per round:", [round(a / b, 2) for a, b in zip(res["tfvae bfloat16"], res["peer bfloat16"])])
