"""The ``nifti_folder`` TFDS dataset (importing this package registers it)."""

from tfvae_datasets.nifti_folder.nifti_folder_dataset_builder import Builder, NiftiFolderConfig

__all__ = ["Builder", "NiftiFolderConfig"]
