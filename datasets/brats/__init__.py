"""The ``brats`` TFDS dataset (importing this package registers it)."""

from tfvae_datasets.brats.brats_dataset_builder import Builder, BratsConfig

__all__ = ["Builder", "BratsConfig"]
