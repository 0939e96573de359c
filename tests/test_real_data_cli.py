"""scripts/train.py on real-data layouts: a fabricated HCP tree via --manual-dir / the env var /
data.manual_dir, the missing-data instructions, bad input as one line, and the test-data helper."""

import os
import shutil

import pytest

from script_loader import ROOT, load_script
from tfvae import config as config_lib
from tfvae import data
from tfvae_datasets import real_data
from tfvae_datasets import testing_trees as tt

BETA10 = os.path.join(ROOT, "configs", "beta10.json")
train_script = load_script("train")


def _args(tmp_path, *extra):
    return ["--config", BETA10, "--run-dir", str(tmp_path / "run"), *extra, "--set", "train.epochs=1",
            "data.image_size=32", "model.filters=null", "model.latent_dim=8", f"data.data_dir={tmp_path / 'tfds'}"]


@pytest.fixture(autouse=True)
def _no_env_manual_dir(monkeypatch):
    monkeypatch.delenv(data.MANUAL_DIR_ENV, raising=False)


@pytest.mark.slow
def test_train_on_a_fabricated_hcp_tree(tmp_path, capsys):
    src = tt.hcp_tree(str(tmp_path / "hcp"))
    assert train_script.main(_args(tmp_path, "--manual-dir", src)) == 0
    out = capsys.readouterr().out
    assert "trained 1 epochs" in out
    saved = config_lib.load(tmp_path / "run" / "config.json")
    assert saved["data"]["name"] == "hcp_t2" and saved["data"]["manual_dir"] == os.path.abspath(src)
    assert os.path.isdir(tmp_path / "tfds" / "hcp_t2" / "default_32px")
    assert os.path.isfile(tmp_path / "run" / "model.keras")


def test_missing_data_prints_the_instructions_and_exits_2(tmp_path, capsys):
    assert train_script.main(_args(tmp_path, "--manual-dir", str(tmp_path / "nowhere"))) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.out == ""
    assert "hcp_t2: the data is not there yet" in captured.err and "nowhere" in captured.err
    assert "T2w_acpc_dc_restore_brain.nii.gz" in captured.err  # the builder's instructions
    assert "--set data.name=brain_phantom" in captured.err
    assert not (tmp_path / "run").exists()  # no half-made run directory to get in the way
    (tmp_path / "empty").mkdir()
    assert train_script.main(_args(tmp_path, "--manual-dir", str(tmp_path / "empty"))) == 2
    assert "is empty" in capsys.readouterr().err
    assert train_script.main(_args(tmp_path)) == 2  # no manual dir at all: TFDS's default is empty too
    assert "downloads/manual" in capsys.readouterr().err


def test_the_manual_dir_comes_from_the_option_the_config_or_the_environment(tmp_path, monkeypatch):
    d = {**config_lib.defaults()["data"], "name": "hcp_t2", "data_dir": str(tmp_path / "tfds")}
    assert data.manual_dir(d) is None
    monkeypatch.setenv(data.MANUAL_DIR_ENV, str(tmp_path / "env"))
    assert data.manual_dir(d) == str(tmp_path / "env")
    assert data.manual_dir({**d, "manual_dir": str(tmp_path / "cfg")}) == str(tmp_path / "cfg")
    with pytest.raises(data.MissingDataError, match="env"):
        data.check_available(d)
    tt.hcp_tree(str(tmp_path / "env"), ("100307", "100408"))
    data.check_available(d)  # found through the environment variable


def test_bad_input_is_one_line_and_exit_2_and_skip_bad_skips(tmp_path, capsys):
    src = tt.hcp_tree(str(tmp_path / "hcp"), ("100307", "100408", "101107"))
    bad = os.path.join(src, "100408", "T1w", "T2w_acpc_dc_restore_brain.nii.gz")
    with open(bad, "wb") as f:
        f.write(b"\x1f\x8b garbage")
    assert train_script.main(_args(tmp_path, "--manual-dir", src)) == 2
    err = capsys.readouterr().err  # TFDS's progress bars come first
    message = err.split("error: ", 1)[1].strip()
    assert message.count("\n") == 0 and message.startswith(f"{bad}: cannot read NIfTI"), err
    assert "Traceback" not in err
    assert not os.path.exists(tmp_path / "run")  # the build failed before any run folder was made
    builder = data.prepare({**config_lib.defaults()["data"], "name": "hcp_t2", "image_size": 32,
                            "data_dir": str(tmp_path / "tfds2"), "manual_dir": src, "skip_bad": True})
    assert "skipped 1 bad case(s)" in capsys.readouterr().err
    ids = set(tt.volume_ids(builder, "train") + tt.volume_ids(builder, "validation"))
    assert ids == {"100307", "101107"}
    # the same at the configs' own image size (64): the registered config's name is not reused (TFDS refuses it)
    at_64 = data.prepare({**config_lib.defaults()["data"], "name": "hcp_t2", "data_dir": str(tmp_path / "tfds3"),
                          "manual_dir": src, "skip_bad": True})
    assert at_64.builder_config.name == "default_64px" and "skipped 1 bad case(s)" in capsys.readouterr().err
    assert set(tt.volume_ids(at_64, "train") + tt.volume_ids(at_64, "validation")) == {"100307", "101107"}
    shutil.rmtree(os.path.join(src, "100408"))  # the user removes the bad subject, runs the same command again
    assert train_script.main(_args(tmp_path, "--manual-dir", src)) == 0  # accepted: no half-made run in the way


def test_paper_configs_train_on_hcp_and_test_on_brats():
    paper = config_lib.load(BETA10)
    assert paper["data"]["name"] == "hcp_t2"
    test = data.test_data_config(paper["data"])
    assert test["name"] == "brats" and test["config"] == "default" and test["image_size"] == 64
    assert paper["data"]["name"] == "hcp_t2"  # not modified in place
    same = data.test_data_config(config_lib.defaults()["data"])
    assert same["name"] == "brain_phantom" and same["config"] == "default"
    other = data.test_data_config({**config_lib.defaults()["data"], "test_config": "tiny"})
    assert other["name"] == "brain_phantom" and other["config"] == "tiny"
    quick = config_lib.load(os.path.join(ROOT, "configs", "quickstart.json"))
    assert quick["data"]["name"] == "brain_phantom" and quick["data"]["test_name"] is None
    for name in ("hcp_t2", "brats", "nifti_folder"):
        assert data.builder({**paper["data"], "name": name, "config": "default"}).builder_config.image_size == 64


def test_a_built_dataset_is_rebuilt_when_its_source_changes_never_silently_reused(tmp_path):
    import shutil

    src = tmp_path / "scans"
    tt.nifti_folder_tree(str(src), healthy=4, with_seg=2)
    config = {"name": "nifti_folder", "config": "default", "data_dir": str(tmp_path / "tfds"), "image_size": 32,
              "manual_dir": str(src)}
    lines = []
    test_ids = lambda: sorted({ex["volume_id"].decode() for ex in data.load_split(config, "test")
                               .as_numpy_iterator()})
    data.prepare(config, log=lines.append)
    assert len(lines) == 1 and lines[0].startswith("building nifti_folder/default") and f"from {src}" in lines[0]
    lines.clear()
    before = test_ids()
    data.prepare(config, log=lines.append)
    assert lines == []  # unchanged: reused, nothing said
    # a case deleted: rebuilt, and it says why
    for name in os.listdir(src / "lesions"):
        if name.startswith("case1"):
            os.remove(src / "lesions" / name)
    data.prepare(config, log=lines.append)
    assert len(lines) == 1 and "rebuilding nifti_folder/default" in lines[0] and "changed" in lines[0]
    assert before == ["lesions/case0", "lesions/case1"] and test_ids() == ["lesions/case0"]
    # a rebuild that fails (a file broken since) keeps the previous build, usable as it was
    broken = src / "lesions" / "case0.nii.gz"
    good = broken.read_bytes()
    broken.write_bytes(b"\x1f\x8b truncated")
    with pytest.raises(real_data.BadInputError, match="case0"):
        data.prepare(config, log=lines.append)
    kept = data.builder(config)  # read as it is (prepare would try the rebuild again: the source still differs)
    assert kept.is_prepared() and len(lines) == 2 and "rebuilding" in lines[1]
    assert sorted({ex["volume_id"].decode() for ex in kept.as_dataset(split="test").as_numpy_iterator()}) == \
        ["lesions/case0"]
    assert not [p for p in os.listdir(tmp_path / "tfds") if p.startswith(".tfvae-rebuild")]  # nothing left
    broken.write_bytes(good)
    del lines[1:]
    # the same files in another folder (--manual-dir changed): rebuilt too
    moved = tmp_path / "elsewhere"
    shutil.copytree(src, moved)
    data.prepare({**config, "manual_dir": str(moved)}, log=lines.append)
    assert len(lines) == 2 and str(moved) in lines[1]
