"""Shared fixtures: the ``tiny`` brain phantom, built once per test session."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

import tfvae  # noqa: E402,F401  (before any test module imports TensorFlow: its oneDNN setting, as users get it)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """A TFDS data_dir holding the built ``brain_phantom/tiny`` dataset."""
    from tfvae.data import pipelines as data

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    data.builder({"name": "brain_phantom", "config": "tiny", "data_dir": data_dir, "image_size": 32}) \
        .download_and_prepare()
    return data_dir


@pytest.fixture
def tiny_overrides(tiny_data_dir):
    """``--set`` items that point a run config at the tiny phantom with a tiny schedule."""
    return ["data.name=brain_phantom", "data.config=tiny", "data.image_size=32", f"data.data_dir={tiny_data_dir}",
            "model.filters=null", "model.latent_dim=8", "train.epochs=2", "train.batch_size=16",
            "train.image_every=1", "train.num_images=4"]


@pytest.fixture(scope="session")
def tiny_run(tiny_data_dir, tmp_path_factory):
    """A run directory with a model trained for 2 epochs on the tiny phantom."""
    from tfvae import config as config_lib
    from tfvae.runs.run import Run

    run = str(tmp_path_factory.mktemp("runs") / "tiny")
    config = config_lib.resolve({"name": "tiny", "model": {"latent_dim": 8, "beta": 1.0}}, [
        "data.config=tiny", "data.image_size=32", f"data.data_dir={tiny_data_dir}", "train.epochs=2",
        "train.batch_size=16", "train.learning_rate=0.001", "predictors.projection_steps=5",
        "evaluate.num_figures=2"])
    Run.create(run, config).train(verbose=0)
    return run
