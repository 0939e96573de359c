"""Per-op CPU time of tfvae's training step, maps and projection (TF profiler, XSpace parsed)."""
import os, sys, glob, collections, shutil, tempfile, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tfvae  # noqa
import numpy as np, tensorflow as tf, keras
from tensorflow.tsl.profiler.protobuf import xplane_pb2
from tfvae.model.vae import BetaVAE
from tfvae.maps.predictors import PixelPredictors
from tfvae.maps.projection import CompiledProjection

what = sys.argv[1]
B = 64
x = np.random.default_rng(0).normal(size=(B, 64, 64, 1)).astype(np.float32)
keras.utils.set_random_seed(0)
if os.environ.get("POLICY"):
    keras.mixed_precision.set_dtype_policy(os.environ["POLICY"])
model = BetaVAE(image_size=64, latent_dim=64, seed=0)
if what == "train":
    from tfvae.model.optimizer import FusedAdam
    model.compile(optimizer=FusedAdam(1e-4))
    ds = tf.data.Dataset.from_tensor_slices(np.repeat(x, 4, 0)).batch(B).cache().repeat()
    model.fit(ds, steps_per_epoch=5, epochs=1, verbose=0)
    run = lambda: model.fit(ds, steps_per_epoch=20, epochs=1, verbose=0)
    n = 20
elif what == "maps":
    pp = PixelPredictors(model); pp(x); pp(x)
    run = lambda: [pp(x) for _ in range(20)]
    n = 20
else:
    proj = CompiledProjection(model, steps=10); proj(x)
    run = lambda: [proj(x) for _ in range(3)]
    n = 30
logdir = tempfile.mkdtemp(prefix=f"prof_{what}_")  # the system's temporary folder, removed below
t = time.perf_counter()
tf.profiler.experimental.start(logdir)
run()
tf.profiler.experimental.stop()
wall = time.perf_counter() - t
path = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0]
space = xplane_pb2.XSpace(); space.ParseFromString(open(path, "rb").read())
shutil.rmtree(logdir, ignore_errors=True)
by_type = collections.Counter(); by_name = collections.Counter(); count = collections.Counter()
for plane in space.planes:
    if "host" not in plane.name.lower():
        continue
    md = plane.event_metadata
    for line in plane.lines:
        for ev in line.events:
            name = md[ev.metadata_id].name
            if ":" in name and not name.startswith("tf"):  # "opname:OpType"
                op = name.rsplit(":", 1)[1]
                by_type[op] += ev.duration_ps / 1e9
                by_name[name] += ev.duration_ps / 1e9
                count[op] += 1
total = sum(by_type.values())
print(f"{what}: wall {wall*1000/n:.1f} ms per unit (profiled), op time {total/n:.1f} ms per unit")
for op, ms in by_type.most_common(25):
    print(f"  {op:34s} {ms/n:7.2f} ms  {count[op]/n:5.1f}/unit")
print("top nodes:")
for nm, ms in by_name.most_common(int(os.environ.get("TOP", 15))):
    print(f"  {nm[:70]:70s} {ms/n:7.2f} ms")
