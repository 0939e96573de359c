"""scripts/train.py end to end on the tiny phantom: run directory, TensorBoard, refusal, resume, NaN."""

import csv
import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from script_loader import ROOT, load_script
from tfvae.runs import callbacks as tfvae_callbacks
from tfvae import config as config_lib
from tfvae.runs import training
from tfvae.runs.run import MODEL_FILES, Run
from tfvae.model.vae import BetaVAE

BETA10 = os.path.join(ROOT, "configs", "beta10.json")

pytestmark = pytest.mark.slow  # trains models




train_script = load_script("train")


def replaced(items, *changes):
    """``--set`` items with ``changes`` in place of the same keys' (a key given twice is refused)."""
    keys = {c.split("=", 1)[0] for c in changes}
    return [i for i in items if i.split("=", 1)[0] not in keys] + list(changes)


def summary_tags(folder):
    """{tag: plugin name} of every summary written under ``folder``."""
    tags = {}
    for path in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags[value.tag] = value.metadata.plugin_data.plugin_name
    return tags


def history_epochs(run_dir):
    with open(os.path.join(run_dir, "history.csv")) as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def test_train_writes_a_complete_run_directory(tmp_path, tiny_overrides, capsys):
    run = str(tmp_path / "R")
    assert train_script.main(["--config", BETA10, "--run-dir", run, "--set", *tiny_overrides]) == 0
    for path in ("model.keras", "config.json", "checkpoints/best.keras", "checkpoints/last.keras"):
        assert os.path.isfile(os.path.join(run, path)), path
    assert history_epochs(run) == [0, 1]
    saved = config_lib.load(os.path.join(run, "config.json"))
    assert saved["model"]["beta"] == 10.0 and saved["train"]["epochs"] == 2
    # Keras's layout: the curves of both parts under the same tags in logs/train and logs/validation
    # (one chart per quantity), the images and HParams in logs/ itself
    logs = os.path.join(run, "logs")
    assert sorted(d for d in os.listdir(logs) if os.path.isdir(os.path.join(logs, d))) == ["train", "validation"]
    train_tags, validation_tags = summary_tags(os.path.join(logs, "train")), summary_tags(os.path.join(logs, "validation"))
    for metric in ("loss", "rec", "kl", "rec_sq"):
        assert train_tags[metric] == validation_tags[metric] == "scalars", metric
    tags = summary_tags(logs)
    assert tags["views/inputs | reconstructions"] == "images" and tags["views/samples from the prior"] == "images"
    # TensorBoard's Time Series sorts by tag and opens the first sections: the curves before the figures
    assert max(train_tags) < min(t for t, kind in tags.items() if kind == "images")
    assert "hparams" in set(tags.values())
    # the reconstruction term with and without its constant 0.5 * D * log(2 pi) (D = 32 x 32 pixels)
    with open(os.path.join(run, "history.csv")) as f:
        row = next(csv.DictReader(f))
    assert float(row["rec"]) - float(row["rec_sq"]) == pytest.approx(0.5 * 32 * 32 * np.log(2 * np.pi), rel=1e-4)
    model = keras.models.load_model(os.path.join(run, "model.keras"))
    assert isinstance(model, BetaVAE) and model.beta == 10.0 and model.image_size == 32
    out = capsys.readouterr().out
    assert "trained 2 epochs" in out
    # one line per epoch, in 80 columns, with the training and validation loss of history.csv
    assert [line for line in out.splitlines() if len(line) > 80 and str(tmp_path) not in line
            and "tfds" not in line] == []  # lines naming a folder are as long as its path
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch ") and "loss" in line]
    assert [line.split()[1] for line in epoch_lines] == ["1/2", "2/2"]
    assert f"loss {float(row['loss']):.1f} ({float(row['val_loss']):.1f})" in epoch_lines[0]


def test_an_epoch_line_fits_80_columns_whatever_the_values():
    from tfvae.runs.callbacks import epoch_line

    logs = {"loss": 123456.789, "val_loss": 234567.891, "kl": 1234.5678, "val_kl": 2345.6789,
            "rec": 122222.22, "val_rec": 233333.33, "rec_sq": 5.0}
    line = epoch_line(321, 500, logs, 3725.0)
    assert len(line) <= 79 and line.startswith("epoch 321/500  loss 123456.8 (234567.9)  kl 1234.6 (2345.7)")
    assert line.endswith("1 h 2 min") and "rec_sq" not in line
    assert epoch_line(3, 30, {"loss": 4064.751, "val_loss": 4111.42, "kl": 40.92, "val_kl": 38.54, "rec": 4023.83,
                              "val_rec": 4072.88}, 5.2) == \
        "epoch  3/30  loss 4064.8 (4111.4)  kl 40.92 (38.54)  rec 4023.8 (4072.9)  5 s"


def test_an_existing_run_is_never_overwritten_without_asking(tmp_path, tiny_overrides, capsys):
    run = tmp_path / "R"
    run.mkdir()
    (run / "precious.txt").write_text("keep me")
    args = ["--config", BETA10, "--run-dir", str(run), "--set", *tiny_overrides]
    assert train_script.main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert train_script.main(args + ["--overwrite"]) == 2
    assert "not a tfvae run directory" in capsys.readouterr().err
    assert (run / "precious.txt").read_text() == "keep me"


def test_config_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert train_script.main(["--config", BETA10, "--run-dir", str(tmp_path / "R"), "--set", "train.epoch=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'train.epoch'" in err
    assert not (tmp_path / "R").exists()


class InterruptAfterEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def test_resume_continues_where_training_stopped(tmp_path, tiny_overrides):
    run = str(tmp_path / "R")
    config = config_lib.load(BETA10, tiny_overrides + ["train.epochs=3"])
    config = Run.create(run, config).config()
    with pytest.raises(KeyboardInterrupt):
        training.train(config, run, extra_callbacks=[InterruptAfterEpoch(0)], verbose=0)
    assert history_epochs(run) == [0]
    assert not os.path.exists(os.path.join(run, "model.keras"))
    assert train_script.main(["--run-dir", run, "--resume"]) == 0
    assert history_epochs(run) == [0, 1, 2]
    assert os.path.isfile(os.path.join(run, "model.keras"))
    # extending a finished run trains only the new epochs
    assert train_script.main(["--config", BETA10, "--run-dir", run, "--resume",
                              "--set", *replaced(tiny_overrides, "train.epochs=4")]) == 0
    assert history_epochs(run) == [0, 1, 2, 3]


def test_resume_refuses_a_different_config(tmp_path, tiny_overrides, capsys):
    run = str(tmp_path / "R")
    Run.create(run, config_lib.load(BETA10, tiny_overrides))
    assert train_script.main(["--config", BETA10, "--run-dir", run, "--resume",
                              "--set", *tiny_overrides, "model.beta=1"]) == 2
    assert "model.beta" in capsys.readouterr().err


def test_a_nan_loss_stops_training_with_a_clear_error(tmp_path):
    model = BetaVAE(image_size=32, latent_dim=4, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    x = np.zeros((8, 32, 32, 1), np.float32)
    x[5, 3, 3, 0] = np.nan
    last = str(tmp_path / "last.keras")
    with pytest.raises(tfvae_callbacks.NonFiniteLoss, match=r"became nan at epoch 1, batch 2"):
        model.fit(x, batch_size=4, epochs=2, shuffle=False, verbose=0,
                  callbacks=[tfvae_callbacks.StopOnNaN(), keras.callbacks.ModelCheckpoint(last)])
    assert not os.path.exists(last)  # the epoch never ended, nothing broken was saved


def test_same_seed_same_model(tmp_path, tiny_overrides):
    outputs = []
    for name in ("a", "b"):
        run = str(tmp_path / name)
        config = Run.create(run, config_lib.load(BETA10, tiny_overrides)).config()
        training.train(config, run, verbose=0)
        model = keras.models.load_model(os.path.join(run, "model.keras"))
        outputs.append([w.numpy() for w in model.weights])
    for a, b in zip(*outputs):
        np.testing.assert_array_equal(a, b)


def test_patience_stops_at_the_plateau_and_keeps_the_best_epoch(tiny_overrides, tmp_path):
    """A learning rate so small that nothing is learnt: the validation loss only wanders (sampled z),
    so training stops after ``patience`` epochs without improvement, and model.keras is the best epoch."""
    run = str(tmp_path / "plateau")
    config = config_lib.resolve({"name": "plateau"}, tiny_overrides + [
        "train.epochs=40", "train.patience=2", "train.learning_rate=1e-12"])
    Run.create(run, config).train(verbose=0)
    with open(os.path.join(run, "history.csv")) as f:
        losses = [float(row["val_loss"]) for row in csv.DictReader(f)]
    assert 3 <= len(losses) < 40
    best = int(np.argmin(losses))
    assert best == len(losses) - 1 - 2  # stopped exactly `patience` epochs after the best one
    final, last = (keras.models.load_model(os.path.join(run, p)) for p in (MODEL_FILES["final"],
                                                                           MODEL_FILES["last"]))
    best_weights = keras.models.load_model(os.path.join(run, MODEL_FILES["best"])).get_weights()
    for a, b in zip(final.get_weights(), best_weights):
        np.testing.assert_array_equal(a, b)


def test_clip_limits_every_split_and_is_off_by_default(tiny_data_dir):
    from tfvae.data import pipelines as data

    config = config_lib.resolve({}, ["data.config=tiny", "data.image_size=32", f"data.data_dir={tiny_data_dir}"])
    plain = np.concatenate([ex["image"] for ex in data.load_split(config["data"], "test").as_numpy_iterator()])
    assert config["data"]["clip"] is None and np.abs(plain).max() > 1.5
    clipped_config = config_lib.resolve(config, ["data.clip=1.5"])
    for split in ("train", "validation", "test"):
        clipped = np.concatenate([ex["image"] for ex in
                                  data.load_split(clipped_config["data"], split).as_numpy_iterator()])
        assert np.abs(clipped).max() <= 1.5
    np.testing.assert_array_equal(np.concatenate([ex["image"] for ex in data.load_split(
        clipped_config["data"], "test").as_numpy_iterator()]), np.clip(plain, -1.5, 1.5))


class Killed(BaseException):
    """A kill (not an Exception: nothing may catch and clean it up)."""


@pytest.mark.parametrize("where", ["history written", "checkpoints written", "resume weights half written",
                                   "resume weights written"])
def test_a_kill_at_any_point_of_an_epoch_end_loses_nothing(tmp_path, tiny_overrides, monkeypatch, where):
    """Fault injection at the exact point: the write after ``where`` raises during epoch 1 (the
    second). The resumed run's history equals an uninterrupted run's, every file is whole."""
    run = str(tmp_path / "R")
    config = Run.create(run, config_lib.load(BETA10, tiny_overrides + ["train.epochs=3"])).config()
    state = {"epoch": None}

    class Spy(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            state["epoch"] = epoch

    real_checkpoints, real_save_weights = tfvae_callbacks.Checkpoints.on_epoch_end, keras.Model.save_weights

    def checkpoints(self, epoch, logs=None):
        if where == "history written" and epoch == 1:
            raise Killed  # after the history row, before any checkpoint
        real_checkpoints(self, epoch, logs)

    def save_weights(self, path, *args, **kwargs):
        if where == "resume weights half written" and state["epoch"] == 1:
            with open(path, "wb") as f:
                f.write(b"\x89HDF")  # killed while writing: a few bytes of the new weights file
            raise Killed
        real_save_weights(self, path, *args, **kwargs)
        if where == "resume weights written" and state["epoch"] == 1:
            raise Killed  # the weights file is written, state.json not yet renamed

    def resume_state(self, epoch, logs=None):
        if where == "checkpoints written" and epoch == 1:
            raise Killed
        real_resume(self, epoch, logs)

    real_resume = tfvae_callbacks.ResumeState.on_epoch_end
    monkeypatch.setattr(tfvae_callbacks.Checkpoints, "on_epoch_end", checkpoints)
    monkeypatch.setattr(keras.Model, "save_weights", save_weights)
    monkeypatch.setattr(tfvae_callbacks.ResumeState, "on_epoch_end", resume_state)
    with pytest.raises(Killed):
        training.train(config, run, extra_callbacks=[Spy()], verbose=0)
    monkeypatch.undo()
    for path in glob.glob(os.path.join(run, "checkpoints", "*.keras")):
        keras.models.load_model(path)  # whole files only
    assert train_script.main(["--run-dir", run, "--resume"]) == 0
    assert history_epochs(run) == [0, 1, 2]
    keras.models.load_model(os.path.join(run, "model.keras"))


def test_a_resumed_run_against_an_uninterrupted_one(tmp_path, tiny_overrides):
    """Measured: the epoch lists are equal; the weights are not bit-identical (the data order and the
    sampled z of the resumed epochs start from fresh seeds), but close."""
    finals = {}
    for name, interrupt in (("whole", None), ("resumed", 0)):
        run = str(tmp_path / name)
        config = Run.create(run, config_lib.load(BETA10, tiny_overrides + ["train.epochs=3"])).config()
        if interrupt is not None:
            with pytest.raises(KeyboardInterrupt):
                training.train(config, run, extra_callbacks=[InterruptAfterEpoch(interrupt)], verbose=0)
            Run.create(run, None, resume=True).train(verbose=0)
        else:
            training.train(config, run, verbose=0)
        finals[name] = ([w.numpy() for w in keras.models.load_model(os.path.join(run, "model.keras")).weights],
                        history_epochs(run))
    assert finals["whole"][1] == finals["resumed"][1] == [0, 1, 2]
    differences = [np.abs(a - b).max() for a, b in zip(finals["whole"][0], finals["resumed"][0])]
    assert max(differences) > 0  # not bit-identical (stated in the README)


def test_a_full_disk_while_training_is_one_line_and_the_run_resumes(tmp_path, tiny_overrides, capsys, monkeypatch):
    import errno

    run = str(tmp_path / "R")
    real = tfvae_callbacks.save_model
    calls = []

    def fills_up(model, path):
        calls.append(path)
        if len(calls) == 3:  # the second epoch's checkpoint
            raise OSError(errno.ENOSPC, "No space left on device", path)
        real(model, path)

    monkeypatch.setattr(tfvae_callbacks, "save_model", fills_up)
    assert train_script.main(["--config", BETA10, "--run-dir", run, "--set", *tiny_overrides]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"error: {run}/checkpoints/") and "no space left on device (" in line
    assert line.endswith(f"free space on that disk, or move the run to another disk; the last finished epoch is kept: "
                         f"then continue with: tfvae train --run-dir {run} --resume")
    assert not os.path.isfile(os.path.join(run, "model.keras"))  # nothing that looks finished
    monkeypatch.undo()
    assert train_script.main(["--run-dir", run, "--resume"]) == 0  # space freed: it completes
    assert os.path.isfile(os.path.join(run, "model.keras")) and history_epochs(run) == [0, 1]


def test_hparams_hold_the_key_settings_then_the_keys_a_search_varies():
    from tfvae.runs.callbacks import KEY_HPARAMS, run_hparams

    config = config_lib.resolve({}, ["train.batch_size=32", "augment.flip=true"])
    plain = run_hparams(config)
    assert list(plain) == list(KEY_HPARAMS) and plain["train.with_augment"] is True and plain["train.seed"] == 0
    searched = run_hparams(config, ["train.batch_size", "model.beta"])
    assert list(searched) == list(KEY_HPARAMS) + ["train.batch_size"] and searched["train.batch_size"] == 32


# --- issue 31: Ctrl-C, and resume files damaged after they were written --------------------------------
def test_ctrl_c_during_training_is_one_line_with_the_resume_command(tmp_path, tiny_overrides, capsys, monkeypatch):
    run = str(tmp_path / "R")
    real = training.train
    monkeypatch.setattr(training, "train", lambda config, run_dir, **kw: real(
        config, run_dir, **{**kw, "extra_callbacks": [InterruptAfterEpoch(0)]}))
    assert train_script.main(["--config", BETA10, "--run-dir", run, "--set",
                              *replaced(tiny_overrides, "train.epochs=3")]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.strip().splitlines()[-1] == (f"interrupted (Ctrl-C): 1 finished epoch(s) kept in {run}; continue "
                                            f"with: tfvae train --run-dir {run} --resume")
    monkeypatch.undo()
    assert train_script.main(["--run-dir", run, "--resume"]) == 0  # the command it gave
    assert history_epochs(run) == [0, 1, 2]


def test_a_real_sigint_ends_training_with_one_line_and_exit_130(tmp_path, tiny_overrides):
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "R"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    # the command as a terminal runs it, with Ctrl-C's default handler set in the child itself: a suite run as
    # a background job passes SIGINT on ignored, and Python then installs no handler (a preexec_fn reset in the
    # forked child of this multi-threaded process was not reliable: once the child trained on, exit 0)
    terminal = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                "from tfvae.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", terminal, "train", "--config", BETA10, "--run-dir", str(run),
                             "--set", *replaced(tiny_overrides, "train.epochs=200")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)
    state = run / "checkpoints" / "backup" / "state.json"
    deadline = time.time() + 240
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert state.exists(), proc.stderr.read() if proc.poll() is not None else "no epoch finished in time"
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted (Ctrl-C): ") and last.endswith(f"continue with: tfvae train --run-dir {run} "
                                                                       "--resume")


def test_resume_weights_cut_short_fall_back_to_the_last_checkpoint(tmp_path, tiny_overrides, capsys):
    run = str(tmp_path / "R")
    assert train_script.main(["--config", BETA10, "--run-dir", run, "--set", *tiny_overrides]) == 0
    weights = os.path.join(run, "checkpoints", "backup", "weights-2.weights.h5")

    def cut(path):
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])

    cut(weights)  # e.g. a copy of the run that stopped halfway
    capsys.readouterr()
    assert train_script.main(["--run-dir", run, "--resume", "--set", "train.epochs=3"]) == 0
    err = capsys.readouterr().err
    last = os.path.join(run, "checkpoints", "last.keras")
    warning = next(line for line in err.splitlines() if line.startswith(f"warning: {weights}"))
    assert warning.startswith(f"warning: {weights} cannot be read (cut short or damaged? OSError: ")
    assert warning.endswith(f"resuming from {last} instead, saved at the end of the same epoch (2)")
    assert history_epochs(run) == [0, 1, 2]
    # both cut short: one line naming both and what to do, the same again on a second try
    cut(os.path.join(run, "checkpoints", "backup", "weights-3.weights.h5"))
    cut(last)
    for _ in range(2):
        assert train_script.main(["--run-dir", run, "--resume", "--set", "train.epochs=4"]) == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line.startswith(f"error: {run}/checkpoints/backup/weights-3.weights.h5 cannot be read (cut short")
        assert f"; nor can the fall-back: {last} cannot be read (cut short or damaged?" in line
        assert line.endswith("the run cannot resume; start it again with --overwrite")
    assert history_epochs(run) == [0, 1, 2]


def test_the_bar_on_a_terminal_is_one_line_rewritten_in_80_columns(monkeypatch):
    import io

    from tfvae.runs import callbacks

    clock = iter(range(0, 1000, 1))
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: float(next(clock)))
    bar, lines = io.StringIO(), []
    progress = callbacks.Progress(500, bar=True, log=lines.append, stream=bar)
    progress.set_params({"steps": 1234, "epochs": 500})
    progress.on_train_begin()
    progress.on_epoch_begin(120)
    for step in range(3):
        progress.on_train_batch_end(step, {"loss": 123456.789})
    progress.on_epoch_end(120, {"loss": 4064.75, "val_loss": 4111.4, "kl": 40.92, "val_kl": 38.5})
    drawn = [d for d in bar.getvalue().split("\r") if d]
    assert len(drawn) == 4 and all(len(d) == 79 for d in drawn)  # three steps, then the line cleared
    assert drawn[2].startswith("epoch 121/500    3/1234 [....................] loss 1.2346e+05")
    assert drawn[3].strip() == "" and "\n" not in bar.getvalue()
    assert lines[1].startswith("epoch 121/500  loss 4064.8 (4111.4)  kl 40.92 (38.5)  ")
