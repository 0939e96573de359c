"""scripts/train.py on real-data layouts: a fabricated HCP tree via --manual-dir / the env var /
data.manual_dir, the missing-data instructions, bad input as one line, and the test-data helper."""

import os
import shutil

import pytest

from script_loader import ROOT, load_script
from tfvae import config as config_lib
from tfvae.data import pipelines as data
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


# --- issue 31: the data folder, and subjects linked into the manual folder -----------------------------
def test_hcp_subjects_linked_into_the_manual_folder_are_fingerprinted_through_their_links(tmp_path):
    """Field case 18: subject folders that are symbolic links (a "virtual" dataset); a subject linked
    later and a scan rewritten behind a link rebuild the dataset, as they do for copied folders."""
    import time

    store = tmp_path / "store"
    tt.hcp_tree(str(store), ("100206", "100307", "100408"))
    manual = tmp_path / "linked" / "hcp_t2"
    manual.mkdir(parents=True)
    for sid in ("100206", "100307"):
        os.symlink(store / sid, manual / sid)
    os.symlink(tmp_path / "linked", manual / "loop")  # a link back up the tree: walked once, not forever
    config = {**config_lib.defaults()["data"], "name": "hcp_t2", "image_size": 32,
              "data_dir": str(tmp_path / "tfds"), "manual_dir": str(tmp_path / "linked")}
    lines = []
    volumes = lambda b: sum(b.info.metadata["volumes"].values())
    assert volumes(data.prepare(config, log=lines.append)) == 2
    assert sorted(rel for rel, _ in data.source_files(str(manual))) == [
        f"{sid}/T1w/{name}" for sid in ("100206", "100307")
        for name in ("T2w_acpc_dc_restore_brain.nii.gz", "brainmask_fs.nii.gz")]
    lines.clear()
    data.prepare(config, log=lines.append)
    assert lines == []  # nothing changed: reused
    time.sleep(0.01)
    scan = store / "100206" / "T1w" / "T2w_acpc_dc_restore_brain.nii.gz"
    image, _, _ = tt.brain(seed=7)
    tt.save(scan, image)  # rewritten behind its link: new content, new time
    data.prepare(config, log=lines.append)
    assert len(lines) == 1 and lines[0].startswith("rebuilding hcp_t2/default_32px: files under") and "changed" in \
        lines[0]
    os.symlink(store / "100408", manual / "100408")  # a subject linked later
    lines.clear()
    assert volumes(data.prepare(config, log=lines.append)) == 3 and len(lines) == 1 and "rebuilding" in lines[0]


def test_a_record_of_an_older_tfvae_is_rebuilt_only_where_links_hid_files_from_it(tmp_path):
    import json

    src = tmp_path / "scans"
    tt.nifti_folder_tree(str(src), healthy=3, with_seg=0)
    config = {**config_lib.defaults()["data"], "name": "nifti_folder", "image_size": 32,
              "data_dir": str(tmp_path / "tfds"), "manual_dir": str(src)}
    b = data.prepare(config, log=lambda line: None)
    record = os.path.join(os.fspath(b.data_dir), data.SOURCE_RECORD)
    old = {"folder": str(src), "fingerprint": data._fingerprint_v1(str(src))}  # as tfvae wrote it before
    with open(record, "w") as f:
        json.dump(old, f)
    lines = []
    data.prepare(config, log=lines.append)
    assert lines == []  # no link: the same files either way, so no rebuild; the record brought up to date
    with open(record) as f:
        assert json.load(f)["fingerprint_version"] == data.FINGERPRINT_VERSION
    with open(record, "w") as f:
        json.dump(old, f)
    extra = tmp_path / "extra"
    tt.nifti_folder_tree(str(extra), healthy=1, with_seg=0)
    os.symlink(extra, src / "more")
    data.prepare(config, log=lines.append)
    assert len(lines) == 1 and "holds symbolic links" in lines[0]


def test_a_data_folder_that_cannot_be_made_or_written_is_one_line(tmp_path, monkeypatch, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    base = ["--config", BETA10, "--run-dir", str(tmp_path / "run"), "--set", "data.name=brain_phantom",
            "data.config=tiny", "data.test_name=null", "train.epochs=1"]
    from tensorflow_datasets.core import constants

    def tfds_data_dir(path):  # as a process started with TFDS_DATA_DIR=path sees it (TFDS reads it on import)
        monkeypatch.setenv("TFDS_DATA_DIR", path)
        monkeypatch.setattr(constants, "DATA_DIR", path)

    tfds_data_dir(str(a_file))  # TFDS's folder from the environment is a file
    assert train_script.main(base) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (f"error: TFDS_DATA_DIR {a_file} is a file, not a folder; point "
                                            "TFDS_DATA_DIR at a folder, or name one with --set data.data_dir=DIR")
    assert "Traceback" not in err and not (tmp_path / "run").exists()
    tfds_data_dir(str(a_file / "tfds"))  # ... or below a file
    with pytest.raises(data.DataError, match=f"TFDS_DATA_DIR {a_file}/tfds is below {a_file}, a file, not a folder"):
        data.builder({**config_lib.defaults()["data"], "config": "tiny"})
    monkeypatch.undo()
    # a shared data folder mounted read-only (field case 27): refused before building, naming it
    ro = tmp_path / "tfds_ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if str(path).startswith(str(ro)) and
                        mode & os.W_OK else real_access(path, mode, **kw))
    assert train_script.main(base + [f"data.data_dir={ro}"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == (f"error: brain_phantom/tiny_64px is not built yet and the data folder {ro} (data.data_dir) is "
                    "read-only; build it in a writable folder: name one with --set data.data_dir=DIR")
    assert os.listdir(ro) == [] and not (tmp_path / "run").exists()


def test_a_full_disk_while_building_is_one_line_and_leaves_no_build(tmp_path, monkeypatch):
    """TensorFlow's record writer reports a full disk as ``ResourceExhaustedError: <file>; No space left
    on device`` (measured on a 400 kB tmpfs), which TFDS wraps in a RuntimeError."""
    import tensorflow as tf
    from tensorflow_datasets.core import file_adapters

    def full(cls, path, iterator):
        for _ in iterator:
            raise tf.errors.ResourceExhaustedError(None, None, f"{path}; No space left on device")

    monkeypatch.setattr(file_adapters.TfRecordFileAdapter, "write_examples", classmethod(full))
    config = {**config_lib.defaults()["data"], "config": "tiny", "image_size": 32, "data_dir": str(tmp_path / "tfds")}
    with pytest.raises(data.DataError) as e:
        data.prepare(config, log=lambda line: None)
    message = str(e.value)
    assert message.startswith(f"building brain_phantom/tiny in {tmp_path / 'tfds'} (data.data_dir): no space left "
                              "on device (") and "\n" not in message
    assert message.endswith("free there); free space on that disk, or build it elsewhere: name one with the config "
                            "key data.data_dir")  # from Python: the config key, not a flag
    assert not data.builder(config).is_prepared()
