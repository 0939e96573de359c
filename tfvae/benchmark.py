"""Throughput of training, predictors, projection, input pipeline and metrics (``benchmark.run``,
what ``scripts/benchmark.py`` runs): prints a table as it measures and writes JSON.

Every figure is the median over repeats after a warm-up. ``quick`` (under 3 minutes on a 2-core
CPU) uses fewer repeats, shorter projections and the tiny phantom for the input pipeline. The CPU
model is recorded beside the figures: compare speeds only within one run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import roc_auc_score

from tfvae import data, files, metrics
from tfvae.model import BetaVAE
from tfvae.networks import forward_flops, layer_flops
from tfvae.predictors import PixelPredictors
from tfvae.projection import CompiledProjection, project
from tfvae.timing import median_time
from tfvae.training import bfloat16_convolutions, cpu_flags, native_bfloat16, onednn_enabled

BATCH = 64
SIZE = 64
# every augmentation on, at strengths a user would pick
AUGMENT = {"noise_std": 0.05, "rotation_deg": 10.0, "scale": 0.1, "flip": True, "brightness": 0.1,
           "contrast": 0.1, "gamma": 0.1}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class BatchTimer(keras.callbacks.Callback):
    """Records when each training batch ends."""

    def __init__(self):
        super().__init__()
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())


def layer_times(model, batch: int, repeats: int) -> dict:
    """Forward and forward+backward milliseconds per batch of each weighted layer, run alone."""
    print(f"  {'layer':14s} {'fwd ms':>8s} {'fwd+bwd ms':>11s} {'MFLOP/slice':>12s} {'GFLOP/s':>8s}  (batch {batch})")

    times = {}
    for part in (model.encoder, model.decoder):
        for layer in part.layers:
            if not layer.trainable_weights:
                continue
            x = tf.random.normal((batch, *layer.input.shape[1:]))

            @tf.function
            def forward(x, layer=layer):
                return layer(x)

            @tf.function
            def both(x, layer=layer):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    loss = tf.reduce_sum(layer(x) ** 2)
                return tape.gradient(loss, [x, *layer.trainable_weights])

            fwd = median_time(lambda: forward(x).numpy(), repeats, warmup=2) * 1e3
            fb = median_time(lambda: [g.numpy() for g in both(x)], repeats, warmup=2) * 1e3
            flops = layer_flops(layer)
            gflops = 3 * flops * batch / (fb / 1e3) / 1e9  # backward ~ 2x forward
            times[layer.name] = {"forward_ms": fwd, "forward_backward_ms": fb, "mflop_per_slice": flops / 1e6,
                                 "gflop_per_s": gflops}
            print(f"  {layer.name:14s} {fwd:8.2f} {fb:11.2f} {flops / 1e6:12.2f} {gflops:8.1f}", flush=True)
    return times


def quality(data_dir: str | None = None, workdir: str | None = None, log=print) -> dict:
    """Train the quick start's phantom run in float32 and in bfloat16 and evaluate both: every
    predictor's AUROC (all pixels and inside the brain) for each precision and the difference (a
    difference above 0.005 is a finding to report)."""
    import tempfile

    from tfvae import config as config_lib
    from tfvae.run import Run

    workdir = workdir or tempfile.mkdtemp(prefix="tfvae-quality-")
    found = {}
    for precision in ("float32", "mixed_bfloat16"):
        overrides = [f"train.precision={precision}", "evaluate.write_nifti=false", "evaluate.num_figures=1",
                     f"name=quality_{precision}"] + ([f"data.data_dir={data_dir}"] if data_dir else [])
        run = Run.create(os.path.join(workdir, precision), config_lib.load("quickstart", overrides), overwrite=True)
        run.train(verbose=0)
        found[precision] = run.evaluate(overwrite=True, verbose=False)
    table = {}
    for predictor, r32 in found["float32"].items():
        r16 = found["mixed_bfloat16"][predictor]
        row = {m: (r32[m], r16[m], r16[m] - r32[m]) for m in ("auroc", "auroc_brain")}
        table[predictor] = row
        flag = "  <- differs by more than 0.005" if any(abs(v[2]) > 0.005 for v in row.values()) else ""
        log(f"  {predictor:16s} AUROC float32 {row['auroc'][0]:.3f} bfloat16 {row['auroc'][1]:.3f} "
            f"({row['auroc'][2]:+.3f}); brain {row['auroc_brain'][0]:.3f} / {row['auroc_brain'][1]:.3f} "
            f"({row['auroc_brain'][2]:+.3f}){flag}")
    return table


def peer_figures(quick: bool, steps: int, projection_steps: int, repeats: int) -> dict | None:
    """``tfvae.benchmark_peer``'s figures (a plain PyTorch implementation of the same network), run
    in a subprocess with the same batch, size, latent size, steps and repeats; None without torch."""
    if importlib.util.find_spec("torch") is None:
        return None
    command = [sys.executable, "-m", "tfvae.benchmark_peer", "--batch", str(BATCH), "--size", str(SIZE),
               "--latent", "64", "--repeats", str(repeats), "--steps", str(steps),
               "--projection-steps", str(projection_steps)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the PyTorch peer failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni")  # what decides the kernels


def machine() -> dict:
    """What a figure was measured on: CPU, its flags that decide the kernels, cores, TensorFlow,
    whether its oneDNN kernels are on (TensorFlow's own rule turns them off on AVX2-only CPUs) and
    limited (``ONEDNN_MAX_CPU_ISA``), GPUs."""
    found = {"cpu": cpu_name(), "cores": os.cpu_count(), "tensorflow": tf.__version__,
             "gpu": [g.name for g in tf.config.list_physical_devices("GPU")] or None,
             "cpu_flags": [flag for flag in CPU_FLAGS if flag in cpu_flags()], "tensorflow_onednn": onednn_enabled()}
    if os.environ.get("ONEDNN_MAX_CPU_ISA"):
        found["onednn_max_cpu_isa"] = os.environ["ONEDNN_MAX_CPU_ISA"]
    return found


def print_machine(found: dict) -> None:
    limited = found.get("onednn_max_cpu_isa")
    print(f"{found['cpu']}, {found['cores']} cores, flags {' '.join(found['cpu_flags'])}"
          f", TensorFlow's oneDNN kernels {'on' if found['tensorflow_onednn'] else 'off'}"
          f"{', oneDNN limited to ' + limited if limited else ''}, TF {found['tensorflow']}, GPU: {bool(found['gpu'])}",
          flush=True)


def recorder(out: dict):
    """``record(key, value, unit, note="")``: puts a figure into ``out`` and prints it as a table row."""
    def record(key, value, unit, note=""):
        out[key] = value
        print(f"  {key:38s} {value:12.4g} {unit:14s} {note}", flush=True)
    return record


def evaluation(run_dir: str | None = None, checkpoint: str = "final", overrides=(),
               out_path: str | None = "benchmark_evaluation.json") -> dict:
    """The evaluation's set-up against its scoring of the test split, in seconds (one evaluation;
    ``evaluation.evaluate``'s ``stages``): the set-up is the KL-grad range and the filtered maps'
    sizes (``Scorer.fit``) plus the thresholds' calibration, all on healthy validation volumes (or
    the healthy scans of ``threshold.calibration``); the scoring is every test volume's maps, its
    metrics and NIfTI maps (the PNG figures and TensorBoard, which ``evaluate_run`` makes after
    that, are not made). Issue 21's target: the set-up under half of the scoring, on the quick start.

    ``run_dir``: a trained run, evaluated with its saved config and ``checkpoint`` into a temporary
    folder, from scratch (its stored thresholds are not reused) -- nothing in the run is written.
    Without it, the quick start (``configs/quickstart.json``) is trained first in a temporary folder
    (minutes). ``overrides``: ``KEY=VALUE`` items applied to the run's config (or the quick
    start's), e.g. ``recommended.synthetic_copies=2`` or ``data.data_dir=...``. Figures written as
    JSON to ``out_path``. Raises ``rundir.RunDirError`` for a folder that is not a trained run,
    ``config.ConfigError`` for a bad override and ``data.DataError`` for a test split without lesions
    (checked before anything is trained or scored)."""
    import tempfile

    from tfvae import config as config_lib
    from tfvae import evaluation as evaluation_lib
    from tfvae.run import Run
    from tfvae.timing import Stages

    out = {"machine": machine()}
    print_machine(out["machine"])
    record = recorder(out)
    with tempfile.TemporaryDirectory(prefix="tfvae-benchmark-") as scratch:
        run = Run(run_dir or os.path.join(scratch, "quickstart"))
        config = run.config(overrides) if run_dir else config_lib.load("quickstart", overrides)
        data.check_lesions(data.test_data_config(config["data"]), config["data"]["test_split"])
        if not run_dir:
            print(f"training the quick start ({config['train']['epochs']} epochs) to evaluate it", flush=True)
            run = Run.create(run.dir, config)
            run.train()
        out["run"] = {"dir": run_dir or "quick start", "checkpoint": checkpoint, "name": config["name"],
                      "overrides": list(overrides)}
        model, test, validation = evaluation_lib.run_inputs(run, config, checkpoint)
        stages = Stages()
        evaluation_lib.evaluate(model, config, test, validation, os.path.join(scratch, "eval"), stages=stages)
    seconds = stages.seconds
    setup = seconds["selection"] + seconds["calibration"]
    record("evaluation_selection_s", seconds["selection"], "s", "KL-grad range, filtered maps' sizes")
    record("evaluation_calibration_s", seconds["calibration"], "s", "thresholds on healthy slices")
    record("evaluation_setup_s", setup, "s", "both")
    record("evaluation_scoring_s", seconds["scoring"], "s", "the test split: maps, metrics, NIfTI maps")
    record("evaluation_setup_over_scoring", setup / seconds["scoring"], "x", "target < 0.5 (quick start)")
    if out_path:
        files.write_json(out_path, out)
        print(f"written: {out_path}")
    return out


def run(quick: bool = False, out_path: str | None = "benchmark.json", data_dir: str | None = None,
        layers: bool = False, check_quality: bool = False, peer: bool = False) -> dict:
    """Every figure (printed as a table as it is measured); written as JSON to ``out_path``.
    ``check_quality``: also ``quality`` (trains the quick start in both precisions); ``peer``: also
    a plain PyTorch implementation's training, maps and projection (``tfvae.benchmark_peer``), run
    between tfvae's, and the ratios (skipped with a line when torch is not installed)."""
    repeats = 3 if quick else 7
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, SIZE, SIZE, 1)).astype(np.float32)
    out = {"machine": {**machine(), "quick": quick}}
    record = recorder(out)

    print_machine(out["machine"])

    steps, proj_steps = (15, 10) if quick else (40, 50)  # training steps per fit, projection steps
    peer_before = peer_figures(quick, steps, proj_steps, repeats) if peer else None
    if peer and peer_before is None:
        print("  peer: PyTorch is not installed (pip install torch to compare); skipped", flush=True)

    # training: Keras fit on in-memory batches (the real training step, with its Keras overhead);
    # the time per batch is the median interval between batch ends, so the start of each fit call
    # (iterator creation, callbacks) does not count
    keras.utils.set_random_seed(0)
    images = tf.data.Dataset.from_tensor_slices(np.repeat(x, 4, axis=0)).batch(BATCH).cache().repeat()
    def train_rate(latent: int, policy: str = "float32") -> tuple[float, BetaVAE]:
        keras.mixed_precision.set_dtype_policy(policy)
        try:
            model = BetaVAE(image_size=SIZE, latent_dim=latent, seed=0)
        finally:
            keras.mixed_precision.set_dtype_policy("float32")
        model.compile(optimizer=keras.optimizers.Adam(1e-4))
        timer = BatchTimer()
        model.fit(images, steps_per_epoch=3, epochs=1, verbose=0, shuffle=False)  # warm-up: tracing
        model.fit(images, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[timer], shuffle=False)
        return BATCH / statistics.median(np.diff(timer.ends)), model

    for latent in (64, 256):
        rate, model = train_rate(latent)
        record(f"train_slices_per_s_latent{latent}", rate, "slices/s", "target >= 1400 at latent 64")
        if latent == 64:
            flops = forward_flops(model)
            float32_rate = rate
            record("forward_mflop_per_slice", flops / 1e6, "MFLOP")
            record("train_gflop_per_s", 3 * flops * rate / 1e9, "GFLOP/s", "3 x forward per slice")
    # bfloat16 beside float32, in the same run (speeds compare only within one run)
    native = native_bfloat16()
    out["machine"]["native_bfloat16"] = native
    print(f"  native bfloat16 on this CPU: {'yes' if native else 'no (auto picks float32)'}", flush=True)
    runs_bfloat16 = bool(out["machine"]["gpu"]) or bfloat16_convolutions()  # not with oneDNN limited below AVX-512 on an AVX-512 CPU
    if runs_bfloat16:
        bf16_rate, _ = train_rate(64, "mixed_bfloat16")
        record("train_slices_per_s_latent64_bfloat16", bf16_rate, "slices/s")
    again, _ = train_rate(64)  # float32 again: the spread of the machine within this run
    record("train_slices_per_s_latent64_float32_again", again, "slices/s", "the same as the first: the noise")
    if "train_slices_per_s_latent64_bfloat16" in out:
        record("bfloat16_over_float32", out["train_slices_per_s_latent64_bfloat16"] / ((float32_rate + again) / 2),
               "x", "target >= 1.8 (native bf16)")
    train_rate_ = float32_rate

    model = BetaVAE(image_size=SIZE, latent_dim=64, seed=0)
    predictors = PixelPredictors(model)
    seconds = median_time(lambda: predictors(x), repeats)
    record("predictor_maps_slices_per_s", BATCH / seconds, "slices/s", "all five maps; target >= 1200")

    compiled = CompiledProjection(model, steps=proj_steps)
    seconds_compiled = median_time(lambda: compiled(x), repeats)
    seconds_eager = median_time(lambda: project(model, x, proj_steps).numpy(), max(1, repeats // 2))
    record("projection_compiled_slice_steps_per_s", BATCH * proj_steps / seconds_compiled, "slice-steps/s")
    record("projection_eager_slice_steps_per_s", BATCH * proj_steps / seconds_eager, "slice-steps/s")
    record("projection_compiled_over_eager", seconds_eager / seconds_compiled, "x", "target >= 5")
    if peer and peer_before is not None:  # the peer again, after tfvae: the ratio against both rounds' mean
        peer_after = peer_figures(quick, steps, proj_steps, repeats)
        out["peer"] = {"before": peer_before, "after": peer_after}
        print(f"  peer: PyTorch {peer_after['torch']}, {peer_after['threads']} threads, kernels "
              f"{peer_after['cpu_capability']}, timed before and after tfvae", flush=True)
        for key, mine in (("train_slices_per_s", (float32_rate + again) / 2),
                          ("predictor_maps_slices_per_s", out["predictor_maps_slices_per_s"]),
                          ("projection_slice_steps_per_s", out["projection_compiled_slice_steps_per_s"])):
            theirs = (peer_before[key] + peer_after[key]) / 2
            record(f"peer_{key}", theirs, "per s", f"PyTorch, the same work ({peer_before[key]:.0f} then "
                                                     f"{peer_after[key]:.0f})")
            record(f"tfvae_over_peer_{key.rsplit('_per_s', 1)[0]}", mine / theirs, "x", "target >= 1.5")
    # what that means for a BraTS-sized test set: 285 volumes, ~120 kept slices each, 100 steps
    brats_slice_steps = 285 * 120 * 100
    record("projection_brats_hours", brats_slice_steps / (BATCH * proj_steps / seconds_compiled) / 3600, "h",
           "285 volumes x 120 slices x 100 steps")
    # the paper's training data: HCP's ~150,000 slices per epoch at the float32 rate measured above
    hcp_slices = 150_000
    record("hcp_epoch_minutes", hcp_slices / float32_rate / 60, "min", "150k slices at the latent-64 rate")
    record("hcp_cached_split_gb", hcp_slices * SIZE * SIZE * 4 / 1e9, "GB", "the training split cached in memory")

    data_config = {"name": "brain_phantom", "config": "tiny" if quick else "default", "image_size": SIZE,
                   "data_dir": data_dir}
    examples = data.load_split(data_config, "train")
    batches = 20 if quick else 100
    for label, augment in (("", None), ("_augmented", AUGMENT)):
        pipeline = data.images(examples, BATCH, shuffle_buffer=10000, seed=0, augment=augment).repeat()

        def read():
            for _ in pipeline.take(batches):
                pass
        rate = batches * BATCH / median_time(read, repeats)
        record(f"input_pipeline{label}_slices_per_s", rate, "slices/s",
               f"brain_phantom/{data_config['config']}, shuffle, batch" + (", augmentation" if augment else ""))
    record("input_over_training", rate / train_rate_, "x", "augmented; target >= 3")

    # metrics: the streaming histograms on 10^8 pixels, beside scikit-learn on 10^7
    chunk = 10**7
    scores = rng.random(chunk, dtype=np.float32)
    labels = rng.random(chunk) < 0.02
    tracemalloc.start()
    start = time.perf_counter()
    hist = metrics.PixelHistogram()
    for i in range(10):
        hist.update(np.roll(scores, i), labels)
    hist.auroc(), hist.auprc()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    record("metrics_1e8_pixels_s", seconds, "s", "target < 10 s")
    record("metrics_1e8_pixels_peak_mb", peak / 2**20, "MB", "target < 1024 MB")
    tracemalloc.start()
    start = time.perf_counter()
    roc_auc_score(labels, scores)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    record("sklearn_auroc_1e7_pixels_s", seconds, "s")
    record("sklearn_auroc_1e7_pixels_peak_mb", peak / 2**20, "MB")

    no_bf16 = "  bfloat16: TensorFlow cannot run bfloat16 convolutions here (oneDNN limited below AVX-512); skipped"
    if layers:
        out["layers_ms_per_batch"] = layer_times(model, BATCH, repeats)
    if layers and not runs_bfloat16:
        print(no_bf16, flush=True)
    elif layers:
        print("  the same layers in mixed_bfloat16:", flush=True)
        keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
        try:
            bf16_model = BetaVAE(image_size=SIZE, latent_dim=64, seed=0)
        finally:
            keras.mixed_precision.set_dtype_policy("float32")
        out["layers_ms_per_batch_bfloat16"] = layer_times(bf16_model, BATCH, repeats)
    if check_quality and not runs_bfloat16:
        print(no_bf16, flush=True)
    elif check_quality:
        print("quality of bfloat16 training (the quick start in both precisions):", flush=True)
        out["quality"] = quality(data_dir)

    if out_path:
        files.write_json(out_path, out)
        print(f"written: {out_path}")
    return out
