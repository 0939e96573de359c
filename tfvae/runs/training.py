"""Training: the model, the callbacks and ``model.fit``, writing into a run directory whose layout
``tfvae.utils.rundir`` defines (``tfvae.Run.create`` makes one; ``Run.train`` calls ``train``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import tempfile

import keras
import numpy as np
import tensorflow as tf

from tfvae.runs import callbacks as tfvae_callbacks
from tfvae import config as config_lib
from tfvae.data import pipelines as data
from tfvae.model.vae import BetaVAE
from tfvae.model.optimizer import FusedAdam
from tfvae.utils.rundir import RunDir, RunDirError


_STRATEGIES: dict = {}  # one MultiWorkerMirroredStrategy per process (it can be made only once)


def strategy(config: dict) -> tf.distribute.Strategy:
    """``train.distribute``: ``mirrored`` -- ``MirroredStrategy`` over all local GPUs;
    ``multi_worker`` -- ``MultiWorkerMirroredStrategy`` over the machines of the cluster in
    ``TF_CONFIG`` (or, under Slurm without ``TF_CONFIG``, TensorFlow's ``SlurmClusterResolver``);
    ``none`` -- the default strategy."""
    kind = config["train"]["distribute"]
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if kind == "multi_worker":
        if "multi_worker" not in _STRATEGIES:
            resolver = None
            if "TF_CONFIG" not in os.environ and "SLURM_JOB_ID" in os.environ:
                try:
                    resolver = tf.distribute.cluster_resolver.SlurmClusterResolver()
                except (OSError, RuntimeError, ValueError) as e:  # it counts GPUs with nvidia-smi, and needs one
                    raise config_lib.ConfigError(
                        "train.distribute=multi_worker under Slurm without TF_CONFIG: TensorFlow's "
                        f"SlurmClusterResolver failed ({type(e).__name__}: {e}); it needs GPUs on every node -- "
                        "on CPU nodes give each task a TF_CONFIG (docs/scale.md, 'train.distribute')") from e
            _STRATEGIES["multi_worker"] = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
        return _STRATEGIES["multi_worker"]
    return tf.distribute.get_strategy()


def is_chief(strategy_: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run (always, but for the non-chief workers of a cluster: the
    ``chief`` task, else worker 0)."""
    resolver = getattr(strategy_, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().jobs


PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "auto")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def onednn_enabled() -> bool:
    """Whether TensorFlow runs its oneDNN kernels in this process (decided once, when it loaded:
    ``TF_ENABLE_ONEDNN_OPTS``, which importing ``tfvae`` sets to 1 unless it was set)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:  # a TensorFlow without the probe: say nothing about it
        return True
    return bool(_pywrap_util_port.IsMklEnabled())


def onednn_warning() -> str | None:
    """A line for a CPU run on x86 without TensorFlow's oneDNN kernels, else None."""
    import tfvae

    if onednn_enabled() or not tfvae.X86 or tf.config.list_physical_devices("GPU"):
        return None
    setting = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "").strip().lower()
    if setting in ("0", "false"):
        why, remedy = "TF_ENABLE_ONEDNN_OPTS=0 is set", "; set TF_ENABLE_ONEDNN_OPTS=1 to turn them on"
    elif tfvae.TENSORFLOW_IMPORTED_FIRST:
        why, remedy = "TensorFlow was imported before tfvae", "; import tfvae first or set TF_ENABLE_ONEDNN_OPTS=1"
    else:
        why, remedy = "this TensorFlow build has none", ""
    return f"TensorFlow's oneDNN kernels are off ({why}): on this CPU training and the maps run about 2x slower{remedy}"


NATIVE_BFLOAT16_FLAGS = {"avx512_bf16", "amx_bf16"}  # /proc/cpuinfo flags of bfloat16 arithmetic
BFLOAT16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10", "ALL", "DEFAULT")


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX), and TensorFlow's oneDNN
    kernels are on and may use it:
    ``ONEDNN_MAX_CPU_ISA`` (e.g. ``AVX2``, how an AVX2-only machine is emulated) below
    ``AVX512_CORE_BF16`` leaves TensorFlow no bfloat16 kernels at all."""
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if limit and not limit.startswith(BFLOAT16_ISAS):
        return False
    return bool(cpu_flags() & NATIVE_BFLOAT16_FLAGS) and onednn_enabled()  # Eigen's bfloat16 is slow


@functools.lru_cache(maxsize=None)
def bfloat16_convolutions() -> bool:
    """Whether TensorFlow can run this network's bfloat16 convolutions on the CPU (tried once on a
    tiny input: a convolution, its gradients and a transposed convolution). On a CPU without AVX-512
    TensorFlow runs bfloat16 in its Eigen kernels (slowly); on an AVX-512 CPU it hands bfloat16 to
    oneDNN, which cannot make the primitive when ``ONEDNN_MAX_CPU_ISA`` limits it below AVX-512 (how
    an AVX2 machine is emulated): "could not create a primitive descriptor"."""
    try:
        with tf.device("/CPU:0"):
            x = tf.ones((1, 8, 8, 1), tf.bfloat16)
            kernel = tf.ones((4, 4, 1, 2), tf.bfloat16)
            with tf.GradientTape() as tape:
                tape.watch([x, kernel])
                y = tf.nn.conv2d(x, kernel, strides=2, padding="SAME")
                total = tf.reduce_sum(y)
            grads = tape.gradient(total, [x, kernel])
            up = tf.nn.conv2d_transpose(y, kernel, (1, 8, 8, 1), strides=2, padding="SAME")
            [t.numpy() for t in (y, up, *grads)]
    except (tf.errors.OpError, RuntimeError):
        return False
    return True


def resolve_precision(config: dict) -> tuple[str, str | None]:
    """``(policy, warning)``: the Keras dtype policy ``train.precision`` means on this machine.

    ``auto``: bfloat16 on CPUs with native bfloat16 and on GPUs of compute capability >= 8.0,
    float16 on older GPUs, else float32. ``mixed_float16`` without a GPU trains in float32 (with a
    warning), and so does ``mixed_bfloat16`` on a CPU where TensorFlow has no bfloat16 convolutions
    (``bfloat16_convolutions``). ``train.mixed_precision: true`` is the old spelling of ``mixed_float16``."""
    t = config["train"]
    precision = t.get("precision", "float32")
    if t.get("mixed_precision") and precision == "float32":
        precision = "mixed_float16"
    gpus = tf.config.list_physical_devices("GPU")
    if precision == "auto":
        if gpus:
            capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability", (0, 0))
            return ("mixed_bfloat16" if tuple(capability) >= (8, 0) else "mixed_float16"), None
        return ("mixed_bfloat16" if native_bfloat16() else "float32"), None
    if precision == "mixed_float16" and not gpus:
        return "float32", "mixed float16 needs a GPU; training in float32"
    if precision == "mixed_bfloat16" and not gpus and not bfloat16_convolutions():
        return "float32", ("TensorFlow cannot run bfloat16 convolutions here (oneDNN limited below AVX-512, "
                           "e.g. by ONEDNN_MAX_CPU_ISA); training in float32")
    if precision == "mixed_bfloat16" and not gpus and not native_bfloat16():
        why = ("TensorFlow's oneDNN kernels are off" if cpu_flags() & NATIVE_BFLOAT16_FLAGS
               else "this CPU has no native bfloat16 (avx512_bf16 / amx_bf16)")
        return precision, f"{why}: expect bfloat16 to be slow"
    return precision, None


def build_model(config: dict) -> BetaVAE:
    """The compiled model, its layers in the precision ``train.precision`` resolves to (the
    distributions, the loss and every anomaly map stay float32; float16 gets Keras's loss scaling)."""
    precision, warning = resolve_precision(config)
    for line in (warning, onednn_warning()):
        if line:
            print(f"warning: {line}", file=sys.stderr)
    policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(precision)
    try:
        model = BetaVAE(image_size=config["data"]["image_size"], latent_dim=config["model"]["latent_dim"],
                        beta=config["model"]["beta"], filters=config["model"]["filters"], seed=config["seed"])
        model.compile(optimizer=FusedAdam(config["train"]["learning_rate"]))  # Keras's Adam, one kernel a variable
    finally:
        keras.mixed_precision.set_dtype_policy(policy)
    return model


def _preview_slices(validation, n: int) -> np.ndarray:
    """``n`` validation slices evenly spread over the first few hundred (fixed, for the images)."""
    pool = np.concatenate([batch for batch in data.images(validation.take(512), 256, cache=False).as_numpy_iterator()])
    return pool[np.linspace(0, len(pool) - 1, min(n, len(pool))).astype(int)]


def train(config: dict, run_dir: str, *, extra_callbacks=(), verbose="auto", model=None,
          hparam_keys=()) -> keras.callbacks.History:
    """Train the run in ``run_dir`` (made by ``Run.create``), continuing from its backup
    if it has one. Raises ``callbacks.NonFiniteLoss`` if the loss diverges. ``model``: the compiled
    model of ``config`` to train (as ``build_model`` makes it, under ``strategy(config).scope()``;
    e.g. a Keras Tuner HyperModel's ``build``), else one is built here. ``hparam_keys``: config keys
    shown in TensorBoard's HParams beside ``callbacks.KEY_HPARAMS`` (a search's varied keys)."""
    distribution = strategy(config)  # first: a multi-worker strategy must exist before any TensorFlow op runs
    keras.utils.set_random_seed(config["seed"])
    if verbose == "auto":  # progress bars on a terminal, one line per epoch in a log file
        from tfvae.utils.console import progress_verbosity

        verbose = progress_verbosity()
    t = config["train"]
    train_examples = data.load_split(config["data"], config["data"]["train_split"])
    validation_examples = data.load_split(config["data"], config["data"]["validation_split"])
    # augmentation (config section "augment", all off by default) for the training split only
    train_ds = data.images(train_examples, t["batch_size"], shuffle_buffer=t["shuffle_buffer"], seed=config["seed"],
                           augment=config.get("augment"))
    validation_ds = data.images(validation_examples, t["batch_size"])

    if model is None:
        with distribution.scope():
            model = build_model(config)
    run = RunDir(run_dir)
    chief = is_chief(distribution)
    with contextlib.ExitStack() as scratch:
        if not chief:  # every worker saves (the saves may need all of them); only the chief's land in the run,
            # the others' in a scratch folder deleted when training ends
            run = RunDir(scratch.enter_context(tempfile.TemporaryDirectory(prefix="tfvae-worker-")))
        if t["distribute"] == "multi_worker":  # each worker takes its share of every global batch
            train_ds, validation_ds = _shard_by_data(train_ds), _shard_by_data(validation_ds)
        with distribution.scope():  # the optimizer's slots are built for the replicas (a resumed cluster run)
            initial_epoch = resume(model, RunDir(run_dir), truncate=chief)
        logs = run.logs_dir
        tf.io.gfile.makedirs(run.checkpoints_dir)
        # the history row, the checkpoints, then the resume state (which marks the epoch done): see callbacks
        callbacks = [
            tfvae_callbacks.StopOnNaN(),
            keras.callbacks.CSVLogger(run.history_path, append=True),
            tfvae_callbacks.Checkpoints(run.model_path("best"), run.model_path("last"),
                                        best_so_far=_best_val_loss(run)),
            tfvae_callbacks.ResumeState(run.backup_dir),
            tfvae_callbacks.RunLog(logs, config, hparam_keys, resolve_precision(config)[0]),  # TensorBoard: curves, images, hparams
            tfvae_callbacks.ImageSummaries(logs,
                                           _preview_slices(validation_examples, t["num_images"]),
                                           every=t["image_every"], seed=config["seed"]),
            *extra_callbacks,
        ]
        if verbose and chief:  # a line per epoch that fits 80 columns (a bar on a terminal); how long the rest
            # will take, once the first epoch has shown the pace
            callbacks += [tfvae_callbacks.Progress(t["epochs"], bar=verbose == 1),
                          tfvae_callbacks.RemainingTime(t["epochs"], t["patience"])]
        if t["patience"]:  # train until the validation loss plateaus; keep the best epoch's weights
            callbacks.insert(1, keras.callbacks.EarlyStopping(monitor="val_loss", patience=t["patience"],
                                                              restore_best_weights=True, verbose=1))
        history = model.fit(train_ds, validation_data=validation_ds, epochs=t["epochs"], callbacks=callbacks,
                            shuffle=False, verbose=0, initial_epoch=initial_epoch)  # tf.data shuffles
        if t["patience"] and os.path.isfile(run.model_path("best")):
            model.load_weights(run.model_path("best"))  # the best epoch, also across a resume
        tfvae_callbacks.save_model(model, run.model_path("final"))
        return history


def _shard_by_data(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Shard a training dataset across workers by element (it is not read from files)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def resume(model, run: RunDir, truncate: bool = True) -> int:
    """Load the newest complete training state of ``run`` into ``model`` (weights and optimizer:
    the resume state, else ``checkpoints/last.keras``) and return the number of finished epochs;
    ``history.csv`` keeps exactly the rows of those epochs (``truncate``: the chief). 0 for a new run.

    Resume weights that cannot be read (cut short or damaged after they were written: a copy that
    stopped, a disk error) fall back to ``checkpoints/last.keras``, saved at the end of the same
    epoch just before them, with a warning naming both; when that cannot be read either, a one-line
    ``RunDirError`` names both files and what to do."""
    state = tfvae_callbacks.ResumeState.read(run.backup_dir)
    epochs, weights = (state["epoch"], state["weights"]) if state else (0, None)
    last = run.model_path("last")
    if state is None and os.path.isfile(last) and os.path.isfile(run.history_path):
        epochs, weights = tfvae_callbacks.history_epochs(run.history_path), last
    if weights is not None and epochs:
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        problem = _load_weights(model, weights)
        if problem is not None:
            from tfvae.utils.console import option

            fallback = _load_weights(model, last) if weights != last and os.path.isfile(last) else "not there"
            if fallback is not None:
                also = ("" if weights == last else f"; {last}, to fall back on, is not there" if fallback == "not there"
                        else f"; nor can the fall-back: {fallback}")
                raise RunDirError(f"{problem}{also}: the run cannot resume; start it again with "
                                  f"{option('--overwrite', 'overwrite=True')}")
            print(f"warning: {problem}; resuming from {last} instead, saved at the end of the same epoch ({epochs})",
                  file=sys.stderr)
    if truncate:
        tfvae_callbacks.truncate_history(run.history_path, epochs)
    return epochs


def _load_weights(model, path: str) -> str | None:
    """``model.load_weights(path)``: None when done, else one line naming the file and why it could
    not be read (h5py's "truncated file", a damaged zip, ...)."""
    try:
        model.load_weights(path)
    except Exception as e:  # noqa: BLE001 - h5py: OSError "truncated file"; Keras: BadZipFile, ValueError, ...
        reason = " ".join(str(e).split())[:160]
        return f"{path} cannot be read (cut short or damaged? {type(e).__name__}: {reason})"
    return None


def _best_val_loss(run: RunDir) -> float | None:
    """The lowest validation loss in the run's history.csv (a resumed run), else None."""
    import csv

    if not os.path.isfile(run.history_path):
        return None
    with open(run.history_path, newline="") as f:
        losses = [float(row["val_loss"]) for row in csv.DictReader(f) if row.get("val_loss")]
    return min(losses) if losses else None
