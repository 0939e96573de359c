"""The ``hcp_t2`` TFDS dataset (importing this package registers it)."""

from tfvae_datasets.hcp_t2.hcp_t2_dataset_builder import Builder, HcpT2Config

__all__ = ["Builder", "HcpT2Config"]
