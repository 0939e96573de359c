"""TensorFlow / oneDNN environment settings against the default: the maps, the projection and the
training step, each setting in a fresh process, interleaved rounds (medians of repeated calls)."""
import json, os, statistics, subprocess, sys, time

SETTINGS = {"default": {},
            "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1 (inference only)": {"TF_ONEDNN_ASSUME_FROZEN_WEIGHTS": "1"},
            "TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1": {"TF_ONEDNN_USE_SYSTEM_ALLOCATOR": "1"},
            "TF_NUM_INTEROP_THREADS=1": {"TF_NUM_INTEROP_THREADS": "1"},
            "TF_MKL_OPTIMIZE_PRIMITIVE_MEMUSE=false": {"TF_MKL_OPTIMIZE_PRIMITIVE_MEMUSE": "false"}}

if len(sys.argv) > 1 and sys.argv[1] == "child":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    import tfvae  # noqa
    import numpy as np, tensorflow as tf, keras
    from tfvae.model.vae import BetaVAE
    from tfvae.model.optimizer import FusedAdam
    from tfvae.maps.predictors import PixelPredictors
    from tfvae.maps.projection import CompiledProjection
    x = np.random.default_rng(0).normal(size=(64, 64, 64, 1)).astype(np.float32)
    def med(f, n=9):
        f(); f()
        ts = []
        for _ in range(n):
            t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
        return statistics.median(ts)
    keras.utils.set_random_seed(0)
    model = BetaVAE(image_size=64, latent_dim=64, seed=0)
    pp, proj = PixelPredictors(model), CompiledProjection(model, steps=10)
    out = {"maps": 64 / med(lambda: pp(x)), "projection": 640 / med(lambda: proj(x), 5)}
    if not os.environ.get("TF_ONEDNN_ASSUME_FROZEN_WEIGHTS"):
        trained = BetaVAE(image_size=64, latent_dim=64, seed=0)
        trained.compile(optimizer=FusedAdam(1e-4))
        ds = tf.data.Dataset.from_tensor_slices(np.repeat(x, 4, 0)).batch(64).cache().repeat()
        trained.fit(ds, steps_per_epoch=3, epochs=1, verbose=0)
        ends = []
        cb = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: ends.append(time.perf_counter()))
        trained.fit(ds, steps_per_epoch=30, epochs=1, verbose=0, callbacks=[cb])
        out["training"] = 64 / statistics.median(np.diff(ends))
    print(json.dumps(out))
    sys.exit()

results = {k: [] for k in SETTINGS}
for r in range(2):
    for name, env in SETTINGS.items():
        done = subprocess.run([sys.executable, __file__, "child"], env={**os.environ, **env}, capture_output=True,
                              text=True)
        results[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
for name, rounds in results.items():
    line = "  ".join(f"{k} {statistics.median([r[k] for r in rounds]):6.0f} ({'/'.join(str(round(r[k])) for r in rounds)})"
                     for k in rounds[0])
    print(f"{name:52s} {line}")
