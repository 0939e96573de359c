"""TFDS builders of tfvae, installed as the package ``tfvae_datasets`` (so that this folder never
shadows the Hugging Face ``datasets`` package). Importing a builder's module registers it with TFDS:

- ``brain_phantom`` -- the embedded default: synthetic T2 brains with synthetic tumours.
- ``hcp_t2``        -- healthy HCP S1200 T2 scans (training), from the user's download.
- ``brats``         -- BraTS 2018-2023 scans with tumour labels (testing), from the user's download.
- ``nifti_folder``  -- any folder of NIfTI scans (healthy for training, with ``*_seg`` for testing).
- ``ixi``           -- healthy IXI T2 heads (training), raw, preprocessed by tfvae, from the user's download.

``slices`` holds the example layout all of them share; ``real_data`` the plumbing the real-data
builders share (config fields, manual folder, case loop, ``skip_bad``, subject splits, safe NIfTI
reading); ``raw_scans`` the raw-head preprocessing (cached) of ``ixi`` and of ``nifti_folder`` and
``brats`` with ``preprocess``. Each builder's folder follows TFDS's layout:
``<name>_dataset_builder.py``, ``<name>_dataset_builder_test.py``, ``README.md`` (the description),
``CITATIONS.bib`` and ``TAGS.txt`` (read by TFDS), ``dummy_data/`` (what the builder test builds
from); brain_phantom's folder also holds ``phantom.py``, the generator of its synthetic brains.
"""
