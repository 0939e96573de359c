"""TFDS builders of tfvae, installed as the package ``tfvae_datasets`` (so that this folder never
shadows the Hugging Face ``datasets`` package). Importing a builder's module registers it with TFDS:

- ``brain_phantom`` -- the embedded default: synthetic T2 brains with synthetic tumours.
- ``hcp_t2``        -- healthy HCP S1200 T2 scans (training), from the user's download.
- ``brats``         -- BraTS 2018-2023 scans with tumour labels (testing), from the user's download.
- ``nifti_folder``  -- any folder of NIfTI scans (healthy for training, with ``*_seg`` for testing).

``slices`` holds the example layout all of them share, ``nifti_io`` the safe NIfTI reading.
"""
