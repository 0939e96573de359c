"""The data layer: scans in, slices out. Safe NIfTI reading and writing (``nifti``), one volume to 2D
slices and back (``preprocessing``), TFDS datasets as ``tf.data`` pipelines (``pipelines``), training
augmentation (``augment``), what a dataset needs from the user (``data_sources``), label maps told
from scans (``labelmaps``), the user's scan files (``scans``), raw heads to template space
(``head_preprocessing``) and the reference labels of the paper's crop (``reference_labels``). The
dataset builders themselves are in ``tfvae_datasets`` (``datasets/``).
"""
