"""Which oneDNN primitives tfvae and the PyTorch peer run, and how long each takes (issue 35):
ONEDNN_VERBOSE=1's exec lines of one side's maps or training step, summed by primitive kind,
implementation and memory formats (every one, largest first), per batch of 64.

    python onednn_verbose.py tfvae maps      # or: peer maps, tfvae train, peer train

Each side runs WARM + N batches; the exec lines of the last N are summed (every batch runs the same
primitives). The times are oneDNN's own (wall time of each execution, in ms)."""
import collections
import os
import subprocess
import sys

WARM, N = 3, 10
HERE = os.path.dirname(os.path.abspath(__file__))


def child(side: str, what: str) -> None:
    sys.path.insert(0, os.path.join(HERE, "..", ".."))
    import numpy as np

    x = np.random.default_rng(0).normal(size=(64, 64, 64, 1)).astype(np.float32)
    if side == "tfvae":
        import tfvae  # noqa: F401  (oneDNN on)
        import keras
        import tensorflow as tf
        from tfvae.maps.predictors import PixelPredictors
        from tfvae.model.vae import BetaVAE

        keras.utils.set_random_seed(0)
        model = BetaVAE(image_size=64, latent_dim=64, seed=0)
        if what == "maps":
            pp = PixelPredictors(model)
            step = lambda: pp(x)
        else:
            from tfvae.model.optimizer import FusedAdam
            model.compile(optimizer=FusedAdam(1e-4))
            ds = iter(tf.data.Dataset.from_tensor_slices(np.repeat(x, 2, 0)).batch(64).repeat())
            model.make_train_function()
            step = lambda: model.train_function(ds)
    else:
        from tfvae.studies.benchmark_peer import Peer

        p = Peer(batch=64, size=64, latent=64, repeats=1, steps=1, projection_steps=1)
        step = {"maps": p.maps, "train": p.train}[what]
    for _ in range(WARM + N):
        step()


def _tag(descriptor: str) -> str:
    """``src:f32::blocked:acdb::f0`` (or ``src_f32::blocked:acdb:f0``) -> ``src:acdb``."""
    parts = descriptor.split(":")
    name = parts[0].split("_")[0]
    i = parts.index("blocked") if "blocked" in parts else None
    return f"{name}:{parts[i + 1]}" if i is not None and i + 1 < len(parts) else name


def summarise(lines: list[str]) -> None:
    execs = [l.split(",") for l in lines if l.startswith("onednn_verbose") and ",exec," in l]
    execs = execs[len(execs) * WARM // (WARM + N):]
    total, count = collections.Counter(), collections.Counter()
    for f in execs:
        # onednn_verbose,[timestamp,]primitive,exec,cpu,KIND,IMPL,PROP,MEMORY DESCRIPTORS,...,TIME
        i = f.index("exec")
        kind, impl, prop, mem = f[i + 2], f[i + 3], f[i + 4], f[i + 5]
        key = (kind, impl, prop, " ".join(_tag(m) for m in mem.split()))
        total[key] += float(f[-1])
        count[key] += 1
    all_ms = sum(total.values())
    print(f"{len(execs) / N:.0f} primitive executions, {all_ms / N:.2f} ms a batch (sum of oneDNN's times)")
    kinds = collections.Counter()
    for (kind, _, prop, _), ms in total.items():
        kinds[f"{kind} {prop}" if kind in ("convolution", "deconvolution") else kind] += ms
    print("  by kind: " + ", ".join(f"{k} {ms / N:.2f}" for k, ms in kinds.most_common()))
    for key, ms in total.most_common():  # every primitive, largest first
        kind, impl, prop, mem = key
        print(f"  {ms / N:6.2f} ms {count[key] / N:4.0f}x  {kind:12s} {impl:24s} {prop:17s} {mem}")


if __name__ == "__main__":
    side, what = sys.argv[1], sys.argv[2]
    if len(sys.argv) > 3:
        child(side, what)
    else:
        env = dict(os.environ, ONEDNN_VERBOSE="1", DNNL_VERBOSE="1", TF_CPP_MIN_LOG_LEVEL="2")
        out = subprocess.run([sys.executable, __file__, side, what, "child"], env=env, capture_output=True,
                             text=True, check=True).stdout
        summarise(out.splitlines())
