"""The ``brain_phantom`` TFDS dataset (importing this package registers it)."""

from tfvae_datasets.brain_phantom.brain_phantom_dataset_builder import Builder, BrainPhantomConfig

__all__ = ["Builder", "BrainPhantomConfig"]
