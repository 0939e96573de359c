"""The ``ixi`` TFDS dataset (importing this package registers it)."""

from tfvae_datasets.ixi.ixi_dataset_builder import Builder, IxiConfig

__all__ = ["Builder", "IxiConfig"]
