"""The example layout shared by all tfvae datasets: one axial slice, its masks and its geometry.

Every builder emits examples through ``slice_examples`` so that training, evaluation and the
writing of maps back into source volumes (``tfvae.data.preprocessing.slices_to_volume``) read every
dataset the same way.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from tfvae.data import preprocessing


def slice_features(image_size: int) -> tfds.features.FeaturesDict:
    """The example layout shared by tfvae's datasets: a slice, its masks and its geometry."""
    plane = (image_size, image_size, 1)
    return tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=plane, dtype=np.float32),
        "brain_mask": tfds.features.Tensor(shape=plane, dtype=np.uint8),
        "label": tfds.features.Tensor(shape=plane, dtype=np.uint8),
        "volume_id": tfds.features.Text(),
        "slice_index": tfds.features.Scalar(dtype=np.int32),
        "source_shape": tfds.features.Tensor(shape=(3,), dtype=np.int32),
        "source_affine": tfds.features.Tensor(shape=(4, 4), dtype=np.float64),
        "crop": tfds.features.Tensor(shape=(4,), dtype=np.float32),
    })


def slice_examples(volume_id: str, sliced: preprocessing.SlicedVolume):
    """(key, example) for each kept slice of one preprocessed volume."""
    geometry = sliced.geometry.as_arrays()
    for i, z in enumerate(sliced.slice_index):
        yield f"{volume_id}/{int(z):04d}", {
            "image": sliced.image[i], "brain_mask": sliced.brain_mask[i], "label": sliced.label[i],
            "volume_id": volume_id, "slice_index": int(z), **geometry,
        }


def slice_dataset_info(builder: tfds.core.GeneratorBasedBuilder, *, homepage: str,
                       metadata: bool = False) -> tfds.core.DatasetInfo:
    """The ``DatasetInfo`` of a slice dataset: ``slice_features`` at the config's image size, and
    examples kept in generation order (volume by volume, slices in order), so that evaluation can
    stream one volume at a time (training shuffles in tf.data). ``metadata`` adds a
    ``MetadataDict`` (where builders record skipped cases). The description and the citation are
    the builder folder's ``README.md`` and ``CITATIONS.bib``, which ``dataset_info_from_configs``
    reads (TFDS also reads ``TAGS.txt`` from there)."""
    return builder.dataset_info_from_configs(
        features=slice_features(builder.builder_config.image_size), supervised_keys=None, disable_shuffling=True,
        metadata=tfds.core.MetadataDict() if metadata else None, homepage=homepage)
