"""A quiet console: no TensorFlow/absl/CUDA/oneDNN start-up lines, one line per epoch in a log
file, and --help without importing TensorFlow."""

import os
import re
import subprocess
import sys

import pytest

from script_loader import ROOT
from tfvae.utils import console

NOISE = re.compile(r"^[IWE]0000 |absl::InitializeLog|cuInit|oneDNN|cuda drivers|Using custom data configuration|\x1b\[")


def test_known_noise_is_recognised_and_real_messages_are_not():
    assert console.is_noise("E0000 00:00:1795935095.404798 2881 cuda_platform.cc:52] failed call to cuInit: INTERNAL")
    assert console.is_noise("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR")
    assert not console.is_noise("ValueError: data.test_split: brats has no split 'tst'")
    assert not console.is_noise("warning: the test data brats/default is not available yet")


@pytest.mark.slow
def test_a_tiny_training_in_a_log_file_prints_no_noise(tiny_data_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--config",
         os.path.join(ROOT, "configs", "quickstart.json"), "--run-dir", str(tmp_path / "run"), "--set",
         "data.config=tiny", "data.image_size=32", f"data.data_dir={tiny_data_dir}", "train.epochs=3",
         "model.latent_dim=8", "train.batch_size=16"],
        capture_output=True, text=True, env=env, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    noisy = [line for line in output.splitlines() if NOISE.search(line)]
    assert not noisy, noisy
    assert "data: brain_phantom/tiny" in output and "3 volumes / 95 slices" in output
    lines = result.stdout.splitlines()
    epochs = [i for i, line in enumerate(lines) if re.match(r"epoch \d/3  loss ", line)]
    assert len(epochs) == 3  # one line per epoch (no bar: stdout is not a terminal)
    # the time left, after the line of the first epoch and again after the second's
    estimates = [i for i, line in enumerate(lines) if re.match(r"epoch \d took .+: about .+ for the remaining", line)]
    assert len(estimates) == 2 and epochs[0] < estimates[0] < epochs[1] < estimates[1] < epochs[2], lines
    assert lines[estimates[0]].endswith("remaining 2") and lines[estimates[1]].endswith("remaining 1")
    # progress fits an 80-column terminal (lines naming a folder are as long as its path)
    assert [line for line in lines if len(line) > 80 and str(tmp_path) not in line and tiny_data_dir not in line] == []


def test_training_into_a_run_already_there_is_said_before_tensorflow_loads(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    result = subprocess.run([sys.executable, "-X", "importtime", os.path.join(ROOT, "scripts", "train.py"), "--config",
                             os.path.join(ROOT, "configs", "quickstart.json"), "--run-dir", str(run)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and (run / "notes.txt").read_text() == "mine"
    assert f"error: {run} already exists and is not empty; pass --resume" in result.stderr
    assert not re.search(r"\|\s+tensorflow$", result.stderr, re.M)


def test_a_mistyped_scan_or_run_for_localize_is_said_before_tensorflow_loads(tiny_run, tmp_path):
    for scans, run, said in ((["/no/such/scan.nii.gz"], tiny_run, "/no/such/scan.nii.gz: no such file or folder"),
                             ([tiny_run], str(tmp_path / "no_run"), "not a tfvae run directory")):
        result = subprocess.run([sys.executable, "-X", "importtime", os.path.join(ROOT, "scripts", "localize.py"),
                                 *scans, "--run-dir", run, "--out", str(tmp_path / "out")],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and said in result.stderr and not os.path.exists(tmp_path / "out")
        assert not re.search(r"\|\s+tensorflow$", result.stderr, re.M)


def test_help_does_not_import_tensorflow():
    for script in ("train", "evaluate", "localize", "reproduce_tables"):
        result = subprocess.run([sys.executable, "-X", "importtime", os.path.join(ROOT, "scripts", f"{script}.py"),
                                 "--help"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "usage:" in result.stdout
        assert not re.search(r"\|\s+tensorflow$", result.stderr, re.M), script


def test_one_entry_point_runs_the_scripts_commands(capsys):
    import json

    from tfvae import cli
    from tfvae import config as config_lib

    assert cli.main(["--help"]) == 0
    listed = capsys.readouterr().out
    for name in ("train", "evaluate", "localize", "tune", "reproduce", "benchmark", "export"):
        assert f"  {name}" in listed
        module = __import__(f"tfvae.commands.{cli.COMMANDS[name][0]}", fromlist=["main"])
        script = open(os.path.join(ROOT, "scripts", f"{'reproduce_tables' if name == 'reproduce' else name}.py")).read()
        assert f"from tfvae.commands.{cli.COMMANDS[name][0]} import main" in script and callable(module.main)
    assert cli.main(["trian"]) == 2 and "unknown command 'trian'" in capsys.readouterr().err
    config_path = os.path.join(ROOT, "configs", "quickstart.json")
    assert cli.main(["train", "--config", config_path, "--set", "model.beta=2", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == config_lib.load(config_path, ["model.beta=2"]) and "recommended" in printed
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--help"])
    helptext = capsys.readouterr().out
    assert "tfvae evaluate" in helptext and "(default: final)" in helptext and "{final,best,last}" in helptext


@pytest.mark.slow
def test_tfds_command_line_builds_the_tiny_phantom(tmp_path):
    """`tfds build datasets/brain_phantom --config tiny` (the tfds-cli extra) builds what tfvae builds."""
    import json

    tfds_cli = os.path.join(os.path.dirname(sys.executable), "tfds")
    result = subprocess.run([tfds_cli, "build", os.path.join(ROOT, "datasets", "brain_phantom"), "--config", "tiny",
                             "--data_dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    info = json.loads((tmp_path / "brain_phantom" / "tiny" / "1.0.0" / "dataset_info.json").read_text())
    counts = {s["name"]: int(s["shardLengths"][0]) for s in info["splits"]}
    assert counts == {"train": 95, "validation": 29, "test": 63}  # as tfvae builds it (BrainPhantomTest.SPLITS)


COMMANDS = ("train", "evaluate", "localize", "calibrate", "tune", "reproduce", "benchmark", "export")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_says_its_version_and_its_whole_first_sentence(command, capsys):
    import importlib

    from tfvae import __version__

    module = importlib.import_module(f"tfvae.commands.{command}")
    with pytest.raises(SystemExit) as e:
        module.parse_args(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"tfvae {__version__}"
    first = " ".join(module.__doc__.split("\n\n")[0].split())
    assert module.parse_args.__module__ == module.__name__ and first.endswith(".")
    with pytest.raises(SystemExit):
        module.parse_args(["--help"])
    assert " ".join(capsys.readouterr().out.split()).count(first) == 1  # not cut mid-sentence


def test_the_tfvae_command_says_its_version(capsys):
    from tfvae import __version__, cli

    assert cli.main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"tfvae {__version__}"


def test_a_closed_pipe_ends_quietly():
    """``--print-config | head -1``: the reader leaves early; no BrokenPipe traceback, exit 0."""
    script = os.path.join(ROOT, "scripts", "train.py")
    config = os.path.join(ROOT, "configs", "quickstart.json")
    result = subprocess.run(f"{sys.executable} {script} --config {config} --print-config | head -1; "
                            "exit ${PIPESTATUS[0]}", shell=True, executable="/bin/bash", capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "{"
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


def test_config_errors_and_existing_outputs_are_said_before_tensorflow_loads(tmp_path, tiny_run):
    """A TensorFlow that cannot be imported: the commands still answer a mistyped key, --print-config
    and an existing evaluation folder, so they answered before importing it (and before any data)."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "tensorflow.py").write_text("raise ImportError('TensorFlow was imported')\n")
    env = {**os.environ, "PYTHONPATH": f"{fake}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    def run(script, *args):
        return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", f"{script}.py"), *args],
                              capture_output=True, text=True, env=env, timeout=120)

    typo = run("train", "--config", "quickstart", "--set", "train.epoch=5")
    assert typo.returncode == 2 and "unknown key 'train.epoch'" in typo.stderr and "TensorFlow was" not in typo.stderr
    printed = run("train", "--config", "quickstart", "--print-config")
    assert printed.returncode == 0 and '"name": "quickstart"' in printed.stdout
    existing = tmp_path / "eval"
    existing.mkdir()
    (existing / "results.json").write_text("{}")
    refused = run("evaluate", "--run-dir", tiny_run, "--out", str(existing))
    assert refused.returncode == 2 and "already exists" in refused.stderr and "TensorFlow was" not in refused.stderr


def test_a_notebook_is_as_quiet_as_the_scripts(tiny_run):
    """``import tfvae`` loads no TensorFlow; the first job does, without its start-up noise, unless
    TFVAE_TF_LOGS=1 asks for it."""
    code = (f"import sys, tfvae; assert 'tensorflow' not in sys.modules; "
            f"print(tfvae.Run({tiny_run!r}).model().latent_dim)")
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TFVAE_TF_LOGS")}
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert quiet.returncode == 0 and quiet.stdout.strip() == "8"
    assert not [line for line in quiet.stderr.splitlines() if NOISE.search(line)], quiet.stderr
    loud = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**env, "TFVAE_TF_LOGS": "1"}, timeout=120)
    assert loud.returncode == 0 and [line for line in loud.stderr.splitlines() if NOISE.search(line)]


def test_durations_read_as_a_person_would_say_them():
    from tfvae.runs.callbacks import duration

    assert [duration(s) for s in (0.4, 42, 185, 7620)] == ["0 s", "42 s", "3 min 5 s", "2 h 7 min"]


def test_building_the_phantom_says_so_once_and_nothing_about_downloads(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--config",
         os.path.join(ROOT, "configs", "quickstart.json"), "--run-dir", str(tmp_path / "run"), "--set",
         "data.config=tiny", "data.image_size=32", f"data.data_dir={tmp_path / 'tfds'}", "train.epochs=1",
         "model.latent_dim=8", "train.batch_size=16"],
        capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    built = [line for line in result.stdout.splitlines() if line.startswith("building brain_phantom/tiny in ")]
    assert len(built) == 1 and "generated here, nothing downloaded" in built[0], output
    assert "Downloading and preparing" not in output and "downloaded and prepared" not in output
    assert "Variant folder" not in output


def test_the_tensorboard_screenshots_say_what_is_missing(tmp_path, monkeypatch):
    from tfvae.studies import screenshots

    with pytest.raises(FileNotFoundError, match="no such TensorBoard log folder"):
        screenshots.tensorboard_screenshots(str(tmp_path / "nowhere"), str(tmp_path / "out"))
    monkeypatch.setattr(screenshots.shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="apt-get install chromium"):
        screenshots.tensorboard_screenshots(str(tmp_path), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # nothing written


def test_data_never_downloaded_is_said_before_tensorflow_loads_as_the_full_check_says_it(tmp_path, monkeypatch):
    from tfvae import config as config_lib
    from tfvae.data import pipelines as data, data_sources

    empty = str(tmp_path / "tfds")
    env = {k: v for k, v in os.environ.items() if k != data_sources.MANUAL_DIR_ENV}
    result = subprocess.run([sys.executable, "-X", "importtime", os.path.join(ROOT, "scripts", "train.py"), "--config",
                             os.path.join(ROOT, "configs", "beta10.json"), "--run-dir", str(tmp_path / "run"),
                             "--set", f"data.data_dir={empty}"], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2 and not os.path.exists(tmp_path / "run")
    assert not re.search(r"\|\s+tensorflow$", result.stderr, re.M)
    said = "\n".join(line for line in result.stderr.splitlines() if not re.match(r"import time:", line))
    config = config_lib.load(os.path.join(ROOT, "configs", "beta10.json"), [f"data.data_dir={empty}"])
    monkeypatch.delenv(data_sources.MANUAL_DIR_ENV, raising=False)
    with pytest.raises(data.MissingDataError) as full:  # the check after TensorFlow, with the builder
        data.check_available(config["data"])
    assert said == f"error: {full.value}"


def test_the_download_instructions_read_without_importing_are_the_builders(tmp_path):
    import importlib

    from tfvae.data import pipelines as data, data_sources

    for name, module in data.BUILDERS.items():
        builder = importlib.import_module(module).Builder
        assert data_sources.download_instructions(name) == (builder.MANUAL_DOWNLOAD_INSTRUCTIONS or None), name
    config = {"name": "hcp_t2", "data_dir": str(tmp_path), "manual_dir": None}
    assert "no folder" in data_sources.missing_download(config)
    (tmp_path / "downloads" / "manual").mkdir(parents=True)
    assert "is empty" in data_sources.missing_download(config)
    (tmp_path / "hcp_t2" / "default" / "1.0.0").mkdir(parents=True)
    (tmp_path / "hcp_t2" / "default" / "1.0.0" / "dataset_info.json").write_text("{}")
    assert data_sources.missing_download(config) is None  # built: the full check decides
    assert data_sources.missing_download({**config, "name": "brain_phantom"}) is None  # made, not downloaded
