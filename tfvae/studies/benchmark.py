"""Throughput of training, predictors, projection, input pipeline and metrics (``benchmark.run``,
what ``scripts/benchmark.py`` runs): prints a table as it measures and writes JSON.

Every figure is the median over repeats after a warm-up. ``quick`` (under 3 minutes on a 2-core
CPU) uses fewer repeats, shorter projections and the tiny phantom for the input pipeline. The CPU
model is recorded beside the figures: compare speeds only within one run.

``rounds`` (``scripts/benchmark.py --peer --rounds N --isa native,avx2``) times tfvae against the
PyTorch peer in interleaved rounds, one subprocess per kernel class (the class's environment must be
set before TensorFlow and PyTorch load): each figure's median ratio and its spread over the rounds.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import roc_auc_score

from tfvae import metrics
from tfvae.data import pipelines as data
from tfvae.utils import files
from tfvae.studies.benchmark_peer import KERNEL_CLASSES, KERNEL_VARIABLES
from tfvae.model.vae import BetaVAE
from tfvae.model.networks import forward_flops, layer_flops
from tfvae.maps.predictors import PixelPredictors
from tfvae.maps.projection import CompiledProjection, project
from tfvae.utils.timing import median_time
from tfvae.runs.training import bfloat16_convolutions, cpu_flags, native_bfloat16, onednn_enabled

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
    from tfvae.runs.run import Run

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
    """``tfvae.studies.benchmark_peer``'s figures (a plain PyTorch implementation of the same network), run
    in a subprocess with the same batch, size, latent size, steps and repeats; None without torch."""
    if importlib.util.find_spec("torch") is None:
        return None
    command = [sys.executable, "-m", "tfvae.studies.benchmark_peer", "--batch", str(BATCH), "--size", str(SIZE),
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
    from tfvae.evaluation import evaluate as evaluation_lib
    from tfvae.runs.run import Run
    from tfvae.utils.timing import Stages

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
    a plain PyTorch implementation's training, maps and projection (``tfvae.studies.benchmark_peer``), run
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



# ---- interleaved rounds against the PyTorch peer, one subprocess per kernel class ----

ROUND_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")  # printed and recorded beside the figures
FIGURES = (("train_slices_per_s", "training, slices"), ("predictor_maps_slices_per_s", "all maps, slices"),
           ("projection_slice_steps_per_s", "projection, slice-steps"))
SHORT = {"train_slices_per_s": "train", "predictor_maps_slices_per_s": "maps",
         "projection_slice_steps_per_s": "proj"}
TARGET, FLOOR, MIN_ROUNDS = 1.5, 1.2, 3  # issue 35: median of >= 3 rounds >= 1.5x the peer, none below 1.2x
# other processes' cores while PyTorch runs beyond which the ratios are starred: its OpenMP threads
# slow down far more than TensorFlow's on shared cores (2026-12-06, 2 cores, ~5 cores' worth of other
# work: PyTorch at 2 threads 36 training slices/s, at 1 thread 252; tfvae ~600). Other work in
# tfvae's halves can only lower tfvae's figures: shown, not starred
OTHER_WORK_LIMIT = 0.25


def class_environment(name: str, base=None) -> dict:
    """The environment a kernel class's subprocess runs in: ``base`` (default ``os.environ``) with
    the class's variables set and the others of ``KERNEL_VARIABLES`` removed (native: both unset)."""
    if name not in KERNEL_CLASSES:
        raise ValueError(f"unknown kernel class {name!r} (known: {', '.join(KERNEL_CLASSES)})")
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in KERNEL_VARIABLES}
    env.update(KERNEL_CLASSES[name])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def cpu_record() -> dict:
    """The CPU model, cores and whether it has each of ``ROUND_FLAGS``."""
    flags = cpu_flags()
    return {"model": cpu_name(), "cores": os.cpu_count(), "flags": {f: f in flags for f in ROUND_FLAGS}}


def flags_text(flags: dict) -> str:
    return " ".join(f if present else f"no {f}" for f, present in flags.items())


class TfvaeFigures:
    """tfvae's three figures of a round, from models built once: training (Keras ``fit``, the
    median interval between batch ends), all five predictor maps, the compiled projection."""

    def __init__(self, batch: int = BATCH, latent: int = 64, steps: int = 15, projection_steps: int = 10,
                 repeats: int = 3):
        self.batch, self.steps, self.repeats = batch, max(2, steps), repeats  # 2 batch ends make one interval
        self.projection_steps = projection_steps
        keras.utils.set_random_seed(0)
        self.x = np.random.default_rng(0).normal(size=(batch, SIZE, SIZE, 1)).astype(np.float32)
        self.images = (tf.data.Dataset.from_tensor_slices(np.repeat(self.x, 4, axis=0)).batch(batch).cache()
                       .repeat())
        self.trained = BetaVAE(image_size=SIZE, latent_dim=latent, seed=0)
        self.trained.compile(optimizer=keras.optimizers.Adam(1e-4))
        self.trained.fit(self.images, steps_per_epoch=3, epochs=1, verbose=0, shuffle=False)  # tracing
        model = BetaVAE(image_size=SIZE, latent_dim=latent, seed=0)
        self.predictors = PixelPredictors(model)
        self.projection = CompiledProjection(model, steps=projection_steps)

    def figures(self) -> dict:
        timer = BatchTimer()
        self.trained.fit(self.images, steps_per_epoch=self.steps, epochs=1, verbose=0, callbacks=[timer],
                         shuffle=False)
        out = {"train_slices_per_s": self.batch / statistics.median(np.diff(timer.ends))}
        out["predictor_maps_slices_per_s"] = self.batch / median_time(lambda: self.predictors(self.x), self.repeats)
        seconds = median_time(lambda: self.projection(self.x), self.repeats)
        out["projection_slice_steps_per_s"] = self.batch * self.projection_steps / seconds
        return out


def _cpu_seconds(pids) -> tuple[float, float] | None:
    """(CPU seconds the whole machine has been busy, those of the processes ``pids``), from /proc;
    None where there is none."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        busy = sum(v) - v[3] - v[4]
        own = 0
        for pid in pids:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            own += int(fields[11]) + int(fields[12])  # utime, stime (all threads)
    except (OSError, ValueError, IndexError):
        return None
    return busy / ticks, own / ticks


class OtherWork:
    """How many cores other processes kept busy (on average) between ``start()`` and ``stop()``: the
    machine's busy CPU time less that of ``pids`` (this benchmark's), over the wall time; and how
    many ``pids`` kept busy (``own``, set by ``stop``). The load average cannot say it: it counts
    the benchmark itself."""

    def __init__(self, pids):
        self.pids = list(pids)
        self.own = None

    def start(self):
        self.begun, self.wall = _cpu_seconds(self.pids), time.perf_counter()

    def stop(self) -> float | None:
        end, wall = _cpu_seconds(self.pids), time.perf_counter() - self.wall
        self.own = None
        if end is None or self.begun is None or wall <= 0:
            return None
        self.own = (end[1] - self.begun[1]) / wall
        return max(0.0, ((end[0] - self.begun[0]) - (end[1] - self.begun[1])) / wall)


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def class_rounds(name: str, rounds: int, batch: int = BATCH, latent: int = 64, steps: int = 15,
                 projection_steps: int = 10, repeats: int = 3, log=print) -> dict:
    """Inside a kernel class's subprocess: ``rounds`` rounds of tfvae's figures then the peer's (a
    PyTorch process started once, ``benchmark_peer --serve``, which inherits this environment),
    with the 1-minute load average before each round and the cores other processes and this
    benchmark's kept busy during each half (``OtherWork``); what this process and the peer's saw of ``KERNEL_VARIABLES`` and the
    kernels each library runs."""
    seen = {v: os.environ.get(v) for v in KERNEL_VARIABLES}
    command = [sys.executable, "-m", "tfvae.studies.benchmark_peer", "--serve", "--batch", str(batch), "--size", str(SIZE),
               "--latent", str(latent), "--repeats", str(repeats), "--steps", str(steps),
               "--projection-steps", str(projection_steps)]
    peer = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    other = OtherWork([os.getpid(), peer.pid])

    def shown(figures, busy):
        return "  ".join(f"{SHORT[key]} {_rate(figures[key]):>6s}" for key, _ in FIGURES) + (
            f"  own {other.own:.1f} others {busy:.1f}" if busy is not None else "")

    try:
        mine = TfvaeFigures(batch, latent, steps, projection_steps, repeats)
        found = []
        for i in range(rounds):
            load = os.getloadavg()[0]
            other.start()
            ours = mine.figures()
            ours_other, ours_own = other.stop(), other.own
            log(f"  {name:6s} {i + 1}/{rounds} tfvae {shown(ours, ours_other)}  load {load:.1f}", flush=True)
            other.start()
            peer.stdin.write("round\n")
            peer.stdin.flush()
            line = peer.stdout.readline()
            theirs_other, theirs_own = other.stop(), other.own
            if not line:
                raise RuntimeError(f"the PyTorch peer stopped (exit {peer.wait()})")
            theirs = json.loads(line)
            log(f"  {name:6s} {i + 1}/{rounds} peer  {shown(theirs, theirs_other)}", flush=True)
            found.append({"load": load, "other_cores": {"tfvae": ours_other, "peer": theirs_other},
                          "own_cores": {"tfvae": ours_own, "peer": theirs_own},
                          "tfvae": ours, "peer": {key: theirs[key] for key, _ in FIGURES},
                          "ratio": {key: ours[key] / theirs[key] for key, _ in FIGURES}})
    finally:
        peer.stdin.close()
        peer.wait()
    return {"environment_seen": {"tfvae": seen, "peer": theirs["environment"]},
            "kernels": {"tensorflow": tf.__version__, "tensorflow_onednn": onednn_enabled(),
                        "torch": theirs["torch"], "torch_threads": theirs["threads"],
                        "torch_cpu_capability": theirs["cpu_capability"]},
            "load_end": os.getloadavg()[0], "rounds": found}


def summarise(rounds_found: list) -> dict:
    """Each figure's medians (tfvae's, the peer's, the per-round ratios') and the ratios' spread, and
    whether it meets issue 35's target (None with fewer than ``MIN_ROUNDS`` rounds: not judged)."""
    out = {}
    for key, _ in FIGURES:
        ratios = [r["ratio"][key] for r in rounds_found]
        median = statistics.median(ratios)
        out[key] = {"tfvae_median": statistics.median(r["tfvae"][key] for r in rounds_found),
                    "peer_median": statistics.median(r["peer"][key] for r in rounds_found),
                    "ratio_median": median, "ratio_min": min(ratios), "ratio_max": max(ratios),
                    "ratios": ratios,
                    "target_met": (median >= TARGET and min(ratios) >= FLOOR) if len(ratios) >= MIN_ROUNDS else None}
    return out


def class_table(name: str, found: dict, cpu: dict) -> list[str]:
    """A kernel class's block of the rounds' table, every line under 80 columns: its kernel
    settings, CPU and flags, load, then one row per figure."""
    env = KERNEL_CLASSES[name]
    settings = ", ".join(f"{k}={v}" for k, v in env.items()) or ", ".join(KERNEL_VARIABLES) + " unset"
    k = found["kernels"]
    loads = [r["load"] for r in found["rounds"]] + [found["load_end"]]
    others = {side: [r["other_cores"][side] for r in found["rounds"]
                     if r.get("other_cores", {}).get(side) is not None] for side in ("tfvae", "peer")}
    own = [r["own_cores"]["tfvae"] for r in found["rounds"] if r.get("own_cores", {}).get("tfvae") is not None]
    lines = [f"{name} kernels: {settings}",
             f"  TF {k['tensorflow']} oneDNN {'on' if k['tensorflow_onednn'] else 'OFF'}; PyTorch {k['torch']}, "
             f"{k['torch_threads']} threads, kernels {k['torch_cpu_capability']}",
             f"  CPU: {cpu['model'][:60]}, {cpu['cores']} cores",
             f"  flags: {flags_text(cpu['flags'])}",
             f"  load (1 min) {min(loads):.1f}-{max(loads):.1f} over {len(found['rounds'])} round(s)"]
    if others["peer"] and others["tfvae"]:
        lines.append(f"  other work, cores: {_span(others['peer'])} in PyTorch's halves, "
                     f"{_span(others['tfvae'])} in tfvae's")
    if own:
        lines.append(f"  tfvae itself kept {_span(own)} cores busy")
    lines += [
             f"  {'figure (per s)':24s} {'tfvae':>7s} {'PyTorch':>7s} {'ratio':>6s} {'min':>6s} {'max':>6s}  target"]
    shared = bool(others["peer"]) and max(others["peer"]) > OTHER_WORK_LIMIT
    for key, label in FIGURES:
        f = found["figures"][key]
        verdict = {True: "met", False: "NOT met", None: f"<{MIN_ROUNDS} rounds"}[f["target_met"]] + "*" * shared
        lines.append(f"  {label:24s} {_rate(f['tfvae_median']):>7s} {_rate(f['peer_median']):>7s} "
                     f"{f['ratio_median']:5.2f}x {f['ratio_min']:5.2f}x {f['ratio_max']:5.2f}x  {verdict}")
    if shared:
        lines += [f"  * other work kept up to {max(others['peer']):.1f} cores busy while PyTorch ran: its",
                  "    OpenMP threads wait for descheduled ones and slow down far more than",
                  "    TensorFlow's, so these ratios overstate tfvae. Measure on a quiet machine."]
    return lines


def _span(values) -> str:
    low, high = f"{min(values):.1f}", f"{max(values):.1f}"
    return low if low == high else f"{low}-{high}"


def rounds(n_rounds: int = 3, isas=("native", "avx2"), quick: bool = False,
           out_path: str | None = "benchmark_rounds.json",
           batch: int = BATCH, latent: int = 64, steps: int | None = None, projection_steps: int | None = None,
           repeats: int | None = None, log=print) -> dict:
    """tfvae against the PyTorch peer (``tfvae.studies.benchmark_peer``): for each kernel class of ``isas``
    (``KERNEL_CLASSES``), one subprocess in the class's environment runs ``n_rounds`` interleaved
    rounds (tfvae's three figures, then the peer's, in its own process started once in that
    environment); each figure's per-round ratio tfvae / peer, their median and spread (the ratio
    cancels background load common to both halves of a round). Prints each round as measured and
    then a table (80 columns) with the CPU's flags, the kernel settings and the load beside every
    figure; writes it all as JSON to ``out_path``. Sizes as ``run``'s (``quick``: fewer steps and
    repeats) unless given. Raises RuntimeError without torch or when a class's subprocess fails or
    did not see its environment."""
    if n_rounds < 1:
        raise ValueError(f"at least one round, not {n_rounds}")
    if importlib.util.find_spec("torch") is None:
        raise RuntimeError("the rounds need the PyTorch peer: pip install torch (or pip install -e \".[peer]\")")
    for name in isas:
        class_environment(name, {})  # an unknown class: before anything runs
    default_steps, default_projection = (15, 10) if quick else (40, 50)
    settings = {"rounds": n_rounds, "batch": batch, "size": SIZE, "latent": latent,
                "steps": steps or default_steps, "projection_steps": projection_steps or default_projection,
                "repeats": repeats or (3 if quick else 7), "quick": quick,
                "order": "each round: tfvae's three figures, then the peer's"}
    cpu = cpu_record()
    out = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "cpu": cpu,
           "settings": settings, "classes": {}}
    log(f"{cpu['model'][:60]}, {cpu['cores']} cores; load {os.getloadavg()[0]:.1f}", flush=True)
    log(f"flags: {flags_text(cpu['flags'])}", flush=True)
    for name in isas:
        with tempfile.TemporaryDirectory(prefix="tfvae-rounds-") as scratch:
            result_path = os.path.join(scratch, "class.json")
            command = [sys.executable, "-c", CLASS_MAIN, "--class-rounds", name, "--result", result_path,
                       "--spec", json.dumps(settings)]
            done = subprocess.run(command, env=class_environment(name), check=False)
            if done.returncode != 0 or not os.path.exists(result_path):
                raise RuntimeError(f"the {name} kernel class's rounds failed (exit {done.returncode})")
            with open(result_path) as f:
                found = json.load(f)
        expected = {v: KERNEL_CLASSES[name].get(v) for v in KERNEL_VARIABLES}
        for side, seen in found["environment_seen"].items():
            if seen != expected:
                raise RuntimeError(f"the {name} class's {side} process saw {seen}, not {expected}")
        found["environment"] = expected
        found["figures"] = summarise(found["rounds"])
        others = [r["other_cores"]["peer"] for r in found["rounds"] if r["other_cores"]["peer"] is not None]
        found["other_cores_max"] = max(others) if others else None  # in PyTorch's halves; > OTHER_WORK_LIMIT: starred
        out["classes"][name] = found
    log("", flush=True)
    log(f"tfvae / PyTorch, {n_rounds} interleaved round{'s' if n_rounds > 1 else ''} per class, batch {batch}, "
        f"latent {latent}, {out['date'][:10]}", flush=True)
    log(f"target: median >= {TARGET}x, every round >= {FLOOR}x, at least {MIN_ROUNDS} rounds", flush=True)
    for name, found in out["classes"].items():
        for line in class_table(name, found, cpu):
            log(line, flush=True)
    if out_path:
        files.write_json(out_path, out)
        log(f"written: {out_path}")
    return out


# a kernel class's subprocess: tfvae first (it turns oneDNN on), TensorFlow without its start-up lines
CLASS_MAIN = ("import sys; from tfvae.utils.console import quiet_tensorflow; quiet_tensorflow(); "
              "from tfvae.studies.benchmark import _class_main; sys.exit(_class_main(sys.argv[1:]))")


def _class_main(argv=None) -> int:
    """A kernel class's subprocess (``CLASS_MAIN``: ``--class-rounds NAME --result FILE --spec
    JSON``, see ``rounds``); its environment is the class's, set by the parent before it started."""
    p = argparse.ArgumentParser()
    p.add_argument("--class-rounds", required=True)
    p.add_argument("--result", required=True)
    p.add_argument("--spec", required=True)
    args = p.parse_args(argv)
    spec = json.loads(args.spec)
    found = class_rounds(args.class_rounds, spec["rounds"], spec["batch"], spec["latent"], spec["steps"],
                         spec["projection_steps"], spec["repeats"])
    files.write_json(args.result, found)
    return 0

