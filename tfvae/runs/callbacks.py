"""Keras callbacks of the training loop: TensorBoard images, a clear stop on a NaN loss, and the
run's checkpoints and resume state, each written whole or not at all.

At the end of an epoch the run's callbacks run in this order: the history row (``CSVLogger``),
``Checkpoints`` (``last.keras``, and ``best.keras`` when the validation loss improved), then
``ResumeState``, whose rename of ``state.json`` marks the epoch as finished. A kill at any moment
leaves either the previous epoch's state or this one's, never a half-written file; on resume,
history rows of epochs after the state are dropped (``truncate_history``), so every epoch is in
``history.csv`` exactly once.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from tfvae.utils import files
from tfvae.evaluation.reporting import (EVAL_METRICS, EVAL_PREDICTORS, EVALUATION_RUN, TRAIN_RUN, VALIDATION_RUN,  # noqa: F401
                             eval_tag, image_tag)


def image_grid(columns: list[np.ndarray]) -> np.ndarray:
    """Stack image columns (each (N, S, S, 1)) side by side into one (1, N*S, C*S, 1) image,
    each slice min-max scaled to [0, 1] for display."""
    def scale(a):
        lo = a.min(axis=(1, 2, 3), keepdims=True)
        hi = a.max(axis=(1, 2, 3), keepdims=True)
        return (a - lo) / np.maximum(hi - lo, 1e-8)
    stacked = np.concatenate([scale(np.asarray(c, np.float32)) for c in columns], axis=2)  # (N, S, C*S, 1)
    return np.concatenate(list(stacked), axis=0)[None]


class ImageSummaries(keras.callbacks.Callback):
    """Every ``every`` epochs (and after the last): validation inputs beside their reconstructions
    (z = mu), and decoded samples from the prior, as TensorBoard images under ``log_dir``."""

    def __init__(self, log_dir: str, inputs: np.ndarray, every: int, seed: int = 0):
        super().__init__()
        self.inputs = np.asarray(inputs, np.float32)
        self.every = every
        self.seed = seed
        self.writer = tf.summary.create_file_writer(log_dir)

    def write(self, epoch: int) -> None:
        reconstructions = self.model(self.inputs, training=False).numpy()
        samples = self.model.sample_prior(len(self.inputs), seed=self.seed).numpy()
        with self.writer.as_default(step=epoch):
            tf.summary.image(image_tag("inputs | reconstructions"), image_grid([self.inputs, reconstructions]))
            tf.summary.image(image_tag("samples from the prior"), image_grid([samples]))
        self.writer.flush()

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0 or epoch + 1 == self.params.get("epochs"):
            self.write(epoch + 1)


# the hyperparameters of TensorBoard's HParams dashboard: the ones that tell runs apart (the whole
# config is in each run's config.json). TensorBoard sorts them by name and shows the first five:
# the key ones sort first, the two others after them (their names are chosen for that)
KEY_HPARAMS = ("model.beta", "model.latent_dim", "train.epochs", "train.learning_rate", "train.precision_used",
               "train.seed", "train.with_augment")
def run_hparams(config: dict, extra_keys=(), precision_used: str = "float32") -> dict:
    """The run's hyperparameters for TensorBoard: ``KEY_HPARAMS`` (``train.with_augment``: any
    augmentation; ``train.precision_used``: ``precision_used``, the policy ``train.precision``
    resolved to (``training.resolve_precision``);
    ``train.seed``: the config's ``seed``), then ``extra_keys`` (dotted config keys, e.g. the keys a
    search varies)."""
    from tfvae import config as config_lib
    from tfvae.data import augment

    flat = config_lib.flatten(config)
    flat["train.with_augment"] = augment.is_active(config.get("augment"))
    flat["train.seed"] = config["seed"]
    flat["train.precision_used"] = precision_used
    keys = list(KEY_HPARAMS) + [k for k in extra_keys if k not in KEY_HPARAMS]
    return {k: flat[k] for k in keys if k in flat and isinstance(flat[k], (bool, int, float, str))}


class RunLog(keras.callbacks.Callback):
    """A run's TensorBoard data under ``log_dir``, laid out as Keras's own TensorBoard callback does:
    every epoch's metrics in ``log_dir/train`` and ``log_dir/validation`` under the same tags (one
    chart per quantity, both curves on it), and in ``log_dir`` itself the HParams: the run's
    settings (``run_hparams``, with ``hparam_keys``) and, as metrics, the validation loss and the evaluation's numbers
    (``reporting.log_evaluation`` writes those to ``log_dir/evaluation``)."""

    def __init__(self, log_dir: str, config: dict, hparam_keys=(), precision_used: str = "float32"):
        super().__init__()
        from tensorboard.plugins.hparams import api as hp

        self.log_dir = log_dir
        self.writers = {part: tf.summary.create_file_writer(os.path.join(log_dir, part))
                        for part in (TRAIN_RUN, VALIDATION_RUN)}
        hparams = run_hparams(config, hparam_keys, precision_used)
        metrics = [hp.Metric("loss", group=VALIDATION_RUN, display_name="validation loss")]
        metrics += [hp.Metric(eval_tag(p, m), group=EVALUATION_RUN, display_name=f"{p} {m}")
                    for p in EVAL_PREDICTORS for m in EVAL_METRICS]
        writer = tf.summary.create_file_writer(log_dir)
        with writer.as_default():
            hp.hparams_config(hparams=[hp.HParam(k) for k in hparams], metrics=metrics)
            hp.hparams(hparams, trial_id=config["name"])
        writer.flush()

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            name, part = (key[4:], VALIDATION_RUN) if key.startswith("val_") else (key, TRAIN_RUN)
            with self.writers[part].as_default(step=epoch + 1):
                tf.summary.scalar(name, float(value))
        for writer in self.writers.values():
            writer.flush()


def duration(seconds: float) -> str:
    """``'42 s'``, ``'3 min 5 s'``, ``'2 h 7 min'``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


class RemainingTime(keras.callbacks.Callback):
    """Once the first epoch of a fit has ended (its time includes compiling the step: an upper bound)
    and again after the second, prints how long the remaining epochs will take at that pace -- as the
    next epoch begins, after Keras's line for the one that ended (``log``: where)."""

    def __init__(self, epochs: int, patience: int = 0, log=print):
        super().__init__()
        self.epochs, self.patience, self.log = int(epochs), int(patience), log
        self.started, self.seen = None, 0

    def on_epoch_begin(self, epoch, logs=None):
        now = time.perf_counter()
        if self.started is not None and self.seen < 2:
            self.seen += 1
            took, left = now - self.started, self.epochs - epoch
            first = " (compiling included)" if self.seen == 1 else ""
            self.log(f"epoch {epoch} took {duration(took)}{first}: about {duration(took * left)} for the "
                     f"remaining {left}")
            if self.patience and self.seen == 1:
                self.log(f"  (fewer if train.patience={self.patience} stops the run at a plateau)")
        self.started = now


class Progress(keras.callbacks.Callback):
    """Training progress that fits an 80-column terminal (Keras's own bar prints every metric and its
    ``val_`` twin: ~230 columns, one wrapped line per step). At each epoch's end one line (also in a
    log file): the epoch, ``SHOWN`` metrics of the training slices with the validation slices' in
    brackets, and the time; on a terminal (``bar``) a line rewritten in place during the epoch with
    the step, a bar and the running loss. Every metric of every epoch is in ``history.csv`` and
    TensorBoard. ``log``: where the epoch lines go; ``stream``: where the bar goes."""

    SHOWN = ("loss", "kl", "rec")
    WIDTH = 79

    def __init__(self, epochs: int, bar: bool, log=print, stream=None):
        super().__init__()
        self.epochs, self.bar, self.log = int(epochs), bool(bar), log
        self.stream = stream
        self.started = self.drawn = 0.0
        self.epoch = 0

    def on_train_begin(self, logs=None):
        self.log("each epoch: " + ", ".join(self.SHOWN) + " per slice, training (validation)")

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.started, self.drawn = epoch, time.perf_counter(), 0.0

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if not self.bar or now - self.drawn < 0.2:
            return
        self.drawn = now
        steps = self.params.get("steps") if self.params else None
        done = batch + 1
        if steps:
            filled = int(20 * done / steps)
            where = f"{done:>{len(str(steps))}}/{steps} [{'=' * filled}{'.' * (20 - filled)}]"
        else:
            where = f"step {done}"
        loss = (logs or {}).get("loss")
        text = f"epoch {self.epoch + 1}/{self.epochs} {where}" + (f" loss {loss:.5g}" if loss is not None else "")
        self._draw(f"{text}  {now - self.started:.0f} s")

    def _draw(self, text: str) -> None:
        import sys

        stream = self.stream or sys.stdout
        stream.write("\r" + text[:self.WIDTH].ljust(self.WIDTH) + "\r")
        stream.flush()

    def on_epoch_end(self, epoch, logs=None):
        if self.bar and self.drawn:
            self._draw("")
        self.log(epoch_line(epoch + 1, self.epochs, logs or {}, time.perf_counter() - self.started,
                            self.SHOWN, self.WIDTH))


def epoch_line(epoch: int, epochs: int, logs: dict, seconds: float, shown=Progress.SHOWN, width: int = 79) -> str:
    """One epoch's line of ``Progress``: ``epoch 3/30  loss 4064.8 (4111.4)  kl 40.92 (38.54) ... 5 s``
    (``metric_parts``); metrics are dropped from the right until the line fits ``width`` columns."""
    head = f"epoch {epoch:>{len(str(epochs))}}/{epochs}"
    parts = metric_parts(logs, shown)
    tail = duration(seconds)
    while parts and len("  ".join([head, *parts, tail])) > width:
        parts.pop()
    return "  ".join([head, *parts, tail])


def metric_parts(logs: dict, shown=Progress.SHOWN) -> list[str]:
    """``["loss 4064.8 (4111.4)", "kl 40.92 (38.54)", ...]``: each of ``shown`` in ``logs`` (one
    decimal from 100 up, else 4 significant digits), its ``val_`` twin in brackets where there is one."""
    def number(v: float) -> str:
        return f"{v:.1f}" if abs(v) >= 100 else f"{v:.4g}"

    return [f"{k} {number(logs[k])}" + (f" ({number(logs['val_' + k])})" if f"val_{k}" in logs else "")
            for k in shown if k in logs]


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, batch: int, loss: float):
        super().__init__(f"the training loss became {loss} at epoch {epoch}, batch {batch}")
        self.epoch, self.batch, self.loss = epoch, batch, loss


class StopOnNaN(keras.callbacks.Callback):
    """Raises ``NonFiniteLoss`` at the first non-finite batch loss. Raising (rather than Keras's
    TerminateOnNaN, which lets the epoch end) keeps the end-of-epoch checkpoints of the last good
    epoch from being overwritten with broken weights."""

    def __init__(self):
        super().__init__()
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss):
            raise NonFiniteLoss(self.epoch + 1, batch + 1, loss)


def save_model(model, path: str) -> None:
    """``model.save(path)``, whole or absent (the temporary name keeps the .keras suffix Keras wants)."""
    with files.written_whole(path) as tmp:
        model.save(tmp)


class Checkpoints(keras.callbacks.Callback):
    """``last`` after every epoch and ``best`` when the validation loss is the lowest so far
    (``best_so_far``: the lowest of a resumed run's earlier epochs), each saved atomically."""

    def __init__(self, best: str, last: str, best_so_far: float | None = None):
        super().__init__()
        self.best_path, self.last_path = best, last
        self.best = math.inf if best_so_far is None else float(best_so_far)

    def on_epoch_end(self, epoch, logs=None):
        save_model(self.model, self.last_path)
        loss = (logs or {}).get("val_loss")
        if loss is not None and loss < self.best:
            self.best = float(loss)
            save_model(self.model, self.best_path)


class ResumeState(keras.callbacks.Callback):
    """The state a run resumes from, in ``folder``: ``weights-<epoch>.weights.h5`` (model and
    optimizer), then ``state.json`` naming it and the number of finished epochs, written to a
    temporary name and renamed (the moment the epoch counts as done); older weights are deleted."""

    STATE = "state.json"

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    @classmethod
    def read(cls, folder: str) -> dict | None:
        """``{"epoch": finished epochs, "weights": path}``, or None when there is no complete state.
        Runs made before this format resume from Keras's ``BackupAndRestore`` files."""
        path = os.path.join(folder, cls.STATE)
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    state = json.load(f)
                weights = os.path.join(folder, state["weights"])
                epoch = int(state["epoch"])
            except (ValueError, KeyError, TypeError) as e:  # damaged after it was written (it is written whole)
                import sys

                print(f"warning: {path} cannot be read (cut short or damaged? {type(e).__name__}: {e}); resuming from "
                      "checkpoints/last.keras and history.csv instead", file=sys.stderr)
                return None
            return {"epoch": epoch, "weights": weights} if os.path.isfile(weights) else None
        legacy, metadata = os.path.join(folder, "latest.weights.h5"), os.path.join(folder, "training_metadata.json")
        if os.path.isfile(legacy) and os.path.isfile(metadata):
            with open(metadata) as f:
                return {"epoch": int(json.load(f)["epoch"]), "weights": legacy}
        return None

    def on_epoch_end(self, epoch, logs=None):
        os.makedirs(self.folder, exist_ok=True)
        name = f"weights-{epoch + 1}.weights.h5"
        self.model.save_weights(os.path.join(self.folder, name))
        files.write_json(os.path.join(self.folder, self.STATE), {"epoch": epoch + 1, "weights": name}, indent=None)
        for old in os.listdir(self.folder):
            if old.startswith("weights-") and old != name:
                os.remove(os.path.join(self.folder, old))


def history_epochs(path: str) -> int:
    """How many consecutive epochs (0, 1, ...) ``history.csv`` holds complete rows of."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    done = 0
    for row in rows[1:]:
        if len(row) == len(rows[0]) and row[0] == str(done):
            done += 1
    return done


def truncate_history(path: str, epochs: int) -> None:
    """Keep the rows of ``history.csv`` for epochs ``0 .. epochs - 1`` (a row cut short by a kill,
    or of an epoch the resume state does not cover, is dropped); rewritten atomically."""
    if not os.path.isfile(path):
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    header, kept = rows[0], []
    for row in rows[1:]:
        try:
            if len(row) == len(header) and int(row[0]) < epochs:
                kept.append(row)
        except ValueError:
            continue
    files.write_csv(path, [header, *kept])
