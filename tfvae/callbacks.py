"""Keras callbacks of the training loop: TensorBoard images and a clear stop on a NaN loss."""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf


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
            tf.summary.image("inputs | reconstructions", image_grid([self.inputs, reconstructions]))
            tf.summary.image("samples from the prior", image_grid([samples]))
        self.writer.flush()

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0 or epoch + 1 == self.params.get("epochs"):
            self.write(epoch + 1)


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
