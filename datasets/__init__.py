"""TFDS builders of tfvae, installed as the package ``tfvae_datasets`` (so that this folder never
shadows the Hugging Face ``datasets`` package). Importing a builder's module registers it with TFDS:

- ``brain_phantom`` -- the embedded default: synthetic T2 brains with synthetic tumours.
"""
