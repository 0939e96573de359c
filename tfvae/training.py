"""Training runs: the run directory, the model, the callbacks and ``model.fit``.

A run directory holds::

    config.json          the resolved config the run was trained with
    history.csv          loss, rec, kl (train and val_) per epoch, appended across resumes
    logs/                TensorBoard: train/ and validation/ scalars, images/, hparams
    checkpoints/best.keras   the model at the epoch of lowest validation loss
    checkpoints/last.keras   the model after the latest finished epoch
    checkpoints/backup/      Keras BackupAndRestore state (weights, optimizer, epoch) for --resume
    model.keras          the model after the last epoch

A run directory is never overwritten unless asked (``overwrite=True``), and only when it is one:
a folder without ``config.json`` is not deleted.
"""

from __future__ import annotations

import os
import shutil
import sys

import keras
import numpy as np
import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

from tfvae import callbacks as tfvae_callbacks
from tfvae import config as config_lib
from tfvae import data
from tfvae.model import BetaVAE

CONFIG_FILE = "config.json"
# the saved models of a run directory, by the name scripts offer for them (--checkpoint)
MODEL_FILES = {"final": "model.keras", "best": os.path.join("checkpoints", "best.keras"),
               "last": os.path.join("checkpoints", "last.keras")}
# keys besides train.* that a resumed run may change: where the user's data lies is not part of the run
RESUMABLE_KEYS = ("data.manual_dir",)


class RunDirError(ValueError):
    """The run directory cannot be used as asked; the message says why and what to pass."""


def prepare_run_dir(run_dir: str, config: dict | None, *, resume: bool = False, overwrite: bool = False,
                    overrides=()) -> dict:
    """Create (or reopen, or replace) ``run_dir`` and return the config to train with.

    A new run saves ``config``. ``resume`` reopens an existing run; the config it continues with is
    ``config`` if given, else the saved one, changed by ``overrides`` (``KEY=VALUE``, e.g.
    ``train.epochs=800`` to extend the run). Only ``train.*`` keys may differ from the saved config:
    the model and its data are the run's. ``overwrite`` deletes a previous run first.
    """
    config_path = os.path.join(run_dir, CONFIG_FILE)
    is_run = os.path.isfile(config_path)
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite exclude each other")
    if resume:
        if not is_run:
            raise RunDirError(f"{run_dir}: cannot resume, no {CONFIG_FILE} there (start the run without --resume)")
        saved = config_lib.load(config_path)
        config = config_lib.resolve(config if config is not None else saved, overrides, source=config_path)
        before, after = flat_hparams(saved), flat_hparams(config)
        changed = [k for k in after if not k.startswith("train.") and k not in RESUMABLE_KEYS
                   and before.get(k) != after[k]]
        if changed:
            raise RunDirError(f"{run_dir}: resuming cannot change {', '.join(changed)} (only train.* keys); "
                              "start a new run instead")
    elif os.path.exists(run_dir) and os.listdir(run_dir):
        if not overwrite:
            raise RunDirError(f"{run_dir} already exists and is not empty; pass --resume to continue that run "
                              "or --overwrite to replace it")
        if not is_run:
            raise RunDirError(f"{run_dir} is not a tfvae run directory (no {CONFIG_FILE}); refusing to delete it")
        shutil.rmtree(run_dir)
    if config is None:
        raise RunDirError(f"{run_dir}: a config is needed to start a new run")
    os.makedirs(run_dir, exist_ok=True)
    config_lib.save(config, config_path)
    return config


def strategy(config: dict) -> tf.distribute.Strategy:
    """``MirroredStrategy`` over all local GPUs for ``train.distribute: mirrored``, else the default."""
    if config["train"]["distribute"] == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def build_model(config: dict) -> BetaVAE:
    """The compiled model, its layers in ``mixed_float16`` when ``train.mixed_precision`` is on and a
    GPU is there (Keras then wraps the optimizer in a LossScaleOptimizer)."""
    policy = keras.mixed_precision.dtype_policy()
    if config["train"]["mixed_precision"]:
        if tf.config.list_physical_devices("GPU"):
            keras.mixed_precision.set_dtype_policy("mixed_float16")
        else:
            print("warning: train.mixed_precision needs a GPU; training in float32", file=sys.stderr)
    try:
        model = BetaVAE(image_size=config["data"]["image_size"], latent_dim=config["model"]["latent_dim"],
                        beta=config["model"]["beta"], filters=config["model"]["filters"], seed=config["seed"])
        model.compile(optimizer=keras.optimizers.Adam(config["train"]["learning_rate"]))
    finally:
        keras.mixed_precision.set_dtype_policy(policy)
    return model


def flat_hparams(config: dict) -> dict:
    """The config's scalar settings with dotted keys, as TensorBoard's HParams dashboard wants them."""
    flat = {}
    for section, values in config.items():
        for key, value in (values.items() if isinstance(values, dict) else [(None, values)]):
            name = f"{section}.{key}" if key else section
            if isinstance(value, (bool, int, float, str)):
                flat[name] = value
            elif value is not None:
                flat[name] = str(value)
    return flat


def _preview_slices(validation, n: int) -> np.ndarray:
    """``n`` validation slices evenly spread over the first few hundred (fixed, for the images)."""
    pool = np.concatenate([batch for batch in data.images(validation.take(512), 256, cache=False).as_numpy_iterator()])
    return pool[np.linspace(0, len(pool) - 1, min(n, len(pool))).astype(int)]


def train(config: dict, run_dir: str, *, extra_callbacks=(), verbose="auto") -> keras.callbacks.History:
    """Train the run in ``run_dir`` (prepared by ``prepare_run_dir``), continuing from its backup
    if it has one. Raises ``callbacks.NonFiniteLoss`` if the loss diverges."""
    keras.utils.set_random_seed(config["seed"])
    t = config["train"]
    train_examples = data.load_split(config["data"], config["data"]["train_split"])
    validation_examples = data.load_split(config["data"], config["data"]["validation_split"])
    # augmentation (config section "augment", all off by default) for the training split only
    train_ds = data.images(train_examples, t["batch_size"], shuffle_buffer=t["shuffle_buffer"], seed=config["seed"],
                           augment=config.get("augment"))
    validation_ds = data.images(validation_examples, t["batch_size"])

    with strategy(config).scope():
        model = build_model(config)
    logs = os.path.join(run_dir, "logs")
    checkpoints = os.path.join(run_dir, "checkpoints")
    os.makedirs(checkpoints, exist_ok=True)
    callbacks = [
        tfvae_callbacks.StopOnNaN(),
        keras.callbacks.BackupAndRestore(os.path.join(checkpoints, "backup"), delete_checkpoint=False),
        keras.callbacks.ModelCheckpoint(os.path.join(run_dir, MODEL_FILES["best"]), monitor="val_loss",
                                        save_best_only=True),
        keras.callbacks.ModelCheckpoint(os.path.join(run_dir, MODEL_FILES["last"])),
        keras.callbacks.CSVLogger(os.path.join(run_dir, "history.csv"), append=True),
        keras.callbacks.TensorBoard(logs, write_graph=False),
        hparams_api.KerasCallback(logs, flat_hparams(config), trial_id=config["name"]),
        tfvae_callbacks.ImageSummaries(os.path.join(logs, "images"),
                                       _preview_slices(validation_examples, t["num_images"]),
                                       every=t["image_every"], seed=config["seed"]),
        *extra_callbacks,
    ]
    if t["patience"]:  # train until the validation loss plateaus; keep the best epoch's weights
        callbacks.insert(1, keras.callbacks.EarlyStopping(monitor="val_loss", patience=t["patience"],
                                                          restore_best_weights=True, verbose=1))
    history = model.fit(train_ds, validation_data=validation_ds, epochs=t["epochs"], callbacks=callbacks,
                        shuffle=False, verbose=verbose)  # tf.data shuffles
    model.save(os.path.join(run_dir, MODEL_FILES["final"]))
    return history
