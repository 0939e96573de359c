"""TFDS datasets as ``tf.data`` pipelines.

``builder(data_config)`` finds the TFDS builder a run config names (``data.name``, ``data.config``,
``data.data_dir``, ``data.image_size``), ``load_split`` builds it when needed (with TFDS's progress
bars) and returns a split as a dataset of example dicts, and ``images`` turns that into the
batches of slices the model trains on.
"""

from __future__ import annotations

import dataclasses
import importlib

import tensorflow as tf
import tensorflow_datasets as tfds

# data.name -> module whose import registers the builder with TFDS
BUILDERS = {
    "brain_phantom": "tfvae_datasets.brain_phantom",
}


class DataError(ValueError):
    """A dataset named in a config cannot be found or built; the message says why."""


def builder(data_config: dict) -> tfds.core.DatasetBuilder:
    name = data_config["name"]
    if name not in BUILDERS:
        raise DataError(f"data.name: unknown dataset {name!r} (known: {', '.join(BUILDERS)})")
    cls = importlib.import_module(BUILDERS[name]).Builder
    configs = cls.builder_configs
    if data_config["config"] not in configs:
        raise DataError(f"data.config: {name} has no config {data_config['config']!r} "
                        f"(known: {', '.join(configs)})")
    config = configs[data_config["config"]]
    size = data_config["image_size"]
    if config.image_size != size:
        config = dataclasses.replace(config, name=f"{config.name}_{size}px", image_size=size)
    return cls(config=config, data_dir=data_config["data_dir"])


def load_split(data_config: dict, split: str) -> tf.data.Dataset:
    """The split as a dataset of example dicts (image, brain_mask, label, volume_id, ...),
    in a fixed order; builds the dataset first if it is not built yet."""
    b = builder(data_config)
    b.download_and_prepare()
    if split not in b.info.splits:
        raise DataError(f"{data_config['name']}/{b.builder_config.name} has no split {split!r} "
                        f"(known: {', '.join(b.info.splits)})")
    return b.as_dataset(split=split, shuffle_files=False)


def images(examples: tf.data.Dataset, batch_size: int, *, shuffle_buffer: int = 0, seed: int | None = None,
           cache: bool = True) -> tf.data.Dataset:
    """Batches of slices (B, S, S, 1) for training (``shuffle_buffer`` > 0) or evaluation."""
    ds = examples.map(lambda ex: ex["image"], num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        ds = ds.cache()
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
