"""Hyperparameter search: search configs, a two-trial grid search per objective on the tiny
phantom, resuming a stopped search, and Keras Tuner's chief/worker mode on localhost."""

import glob
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from script_loader import ROOT, load_script
from tfvae import config as config_lib
from tfvae import tuning


def tiny_search(tmp_path, data_dir, **extra):
    search = {
        "base": {"name": "tiny", "seed": 0,
                 "data": {"name": "brain_phantom", "config": "tiny", "image_size": 32, "data_dir": data_dir},
                 "model": {"latent_dim": 8},
                 "train": {"batch_size": 16, "learning_rate": 0.001, "image_every": 1, "num_images": 2},
                 "predictors": {"projection_steps": 2}},
        "space": {"model.beta": [0.5, 4]},
        "epochs": 1,
        **extra,
    }
    path = tmp_path / "search.json"
    path.write_text(json.dumps(search))
    return str(path)


# --- search configs ------------------------------------------------------------------------------
def test_paper_search_is_the_union_of_the_two_grids():
    search = tuning.load_search(os.path.join(ROOT, "configs", "search_paper.json"))
    settings = {(p["model.latent_dim"], p["model.beta"]) for p in search.points}
    assert len(search.points) == 7  # 5 betas + 3 latents, (64, 1) once
    assert settings == {(64, 0.1), (64, 0.5), (64, 1.0), (64, 2.0), (64, 10.0), (32, 1.0), (256, 1.0)}
    assert search.tuner == "grid" and search.objective().name == "val_loss"
    assert search.base["data"]["name"] == "hcp_t2"  # base path resolved relative to the search file
    hp = search.hyperparameters()
    config = search.trial_config(hp.copy())  # the Choice default: the first setting
    assert (config["model"]["latent_dim"], config["model"]["beta"]) == (64, 0.1)


@pytest.mark.parametrize("name", ["search_paper.json", "search_paper_auroc.json", "search_bayesian.json",
                                  "search_hyperband.json"])
def test_shipped_search_configs_are_valid(name):
    search = tuning.load_search(os.path.join(ROOT, "configs", name))
    assert search.points and search.tuner in tuning.TUNERS


@pytest.mark.parametrize("change, message", [
    ({"bogus": 1}, "unknown key 'bogus'"),
    ({"tuner": 3}, "tuner must be a string"),
    ({"tuner": "annealing"}, "tuner must be one of"),
    ({"objective": "dice"}, "objective must be one of"),
    ({"objective_predictor": "ensemble"}, "objective_predictor must be one of"),
    ({"max_trials": "many"}, "max_trials must be an integer or null"),
    ({"space": {"model.betta": [1]}}, "space: unknown run-config key 'model.betta'"),
    ({"space": {"model.beta": 1}}, "space.model.beta must be a non-empty list"),
    ({"space": {"model.beta": [1, -2]}}, "space.model.beta: value -2 rejected"),
    ({"space": [{"model.beta": [1]}, {"model.latent_dim": ["big"]}]}, "space[1].model.latent_dim: value 'big'"),
    ({"set": ["train.epochs=0"]}, "train.epochs must be > 0"),
])
def test_bad_search_config_is_one_line_naming_file_and_key(tmp_path, change, message):
    path = tmp_path / "bad_search.json"
    path.write_text(json.dumps({"base": {"name": "x"}, "space": {"model.beta": [1]}, **change}))
    with pytest.raises(config_lib.ConfigError) as e:
        tuning.load_search(str(path))
    text = str(e.value)
    assert message in text and "\n" not in text
    assert "bad_search.json" in text


def test_missing_base_file_is_named(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"base": "nowhere.json", "space": {"model.beta": [1]}}))
    with pytest.raises(config_lib.ConfigError, match="nowhere.json: config file not found"):
        tuning.load_search(str(path))


def _events_contain(folder, needle: bytes) -> bool:
    return any(needle in open(f, "rb").read() for f in glob.glob(os.path.join(folder, "**", "events.*"),
                                                                    recursive=True))


# --- searches on the tiny phantom ----------------------------------------------------------------
@pytest.mark.slow
def test_grid_search_val_loss_resumes_and_exports_best(tmp_path, tiny_data_dir, monkeypatch, capsys):
    from tfvae import training

    search_file = tiny_search(tmp_path, tiny_data_dir)
    search_dir = str(tmp_path / "search")
    tune = load_script("tune")

    # stop the search in its second trial, as a Ctrl-C would
    real_train = training.train

    def train_then_stop(config, run_dir, **kwargs):
        if config["name"].endswith("trial1"):
            raise KeyboardInterrupt
        return real_train(config, run_dir, **kwargs)

    monkeypatch.setattr(training, "train", train_then_stop)
    with pytest.raises(KeyboardInterrupt):
        tune.main(["--search", search_file, "--dir", search_dir, "--quiet"])
    first = os.path.join(search_dir, "trials", "0", "model.keras")
    assert os.path.isfile(first)
    stamp = os.path.getmtime(first)
    monkeypatch.setattr(training, "train", real_train)

    assert tune.main(["--search", search_file, "--dir", search_dir, "--quiet"]) == 0
    assert os.path.getmtime(first) == stamp  # the finished trial was not trained again
    out = capsys.readouterr().out
    assert "resuming" in out

    objectives = {}
    for trial in ("0", "1"):
        run = os.path.join(search_dir, "trials", trial)
        with open(os.path.join(run, "objective.json")) as f:
            objectives[trial] = json.load(f)
        saved = config_lib.load(os.path.join(run, "config.json"))
        assert saved["model"]["beta"] == objectives[trial]["values"]["model.beta"]
        assert saved["train"]["epochs"] == 1
        logs = os.path.join(run, "logs")
        assert _events_contain(logs, b"hparams"), "no HParams summary in the trial's logs"
        assert glob.glob(os.path.join(logs, "images", "events.*")), "image summaries not in the trial's folder"
        # the objective is the last epoch's validation loss of that run
        import csv
        with open(os.path.join(run, "history.csv")) as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 1
        assert objectives[trial]["val_loss"] == pytest.approx(float(rows[-1]["val_loss"]))
    assert {o["values"]["model.beta"] for o in objectives.values()} == {0.5, 4.0}

    best_trial = min(objectives, key=lambda t: objectives[t]["val_loss"])
    best = os.path.join(search_dir, "best")
    with open(os.path.join(best, "best_trial.json")) as f:
        assert json.load(f)["trial_id"] == best_trial
    assert config_lib.load(os.path.join(best, "config.json"))["model"]["beta"] == \
        objectives[best_trial]["values"]["model.beta"]
    # a normal run directory: evaluate.py works on it
    evaluate = load_script("evaluate")
    assert evaluate.main(["--run-dir", best, "--predictors", "rec_error", "--set", "evaluate.write_nifti=false"]) == 0
    assert os.path.isfile(os.path.join(best, "eval", "results.json"))

    # another search in the same directory is refused
    other = tmp_path / "other.json"
    spec = json.loads(open(search_file).read())
    spec["space"] = {"model.beta": [1, 2]}
    other.write_text(json.dumps(spec))
    assert tune.main(["--search", str(other), "--dir", search_dir]) == 2
    assert "holds another search" in capsys.readouterr().err


@pytest.mark.slow
def test_grid_search_auroc_objective_uses_the_evaluation_metric(tmp_path, tiny_data_dir):
    from sklearn.metrics import roc_auc_score

    from tfvae import data, evaluation
    from tfvae.model import load

    search_file = tiny_search(tmp_path, tiny_data_dir, objective="auroc", objective_predictor="rec_error",
                              objective_volumes=1)
    search_dir = str(tmp_path / "search")
    assert load_script("tune").main(["--search", search_file, "--dir", search_dir, "--quiet"]) == 0

    scores = {}
    for trial in ("0", "1"):
        run = os.path.join(search_dir, "trials", trial)
        with open(os.path.join(run, "objective.json")) as f:
            objective = json.load(f)
        scores[trial] = objective["val_auroc"]
        assert _events_contain(os.path.join(run, "logs", "validation"), b"epoch_auroc")
    # recompute trial 0's objective independently: rec_error of the first test volume, sklearn AUROC
    config = config_lib.load(os.path.join(search_dir, "trials", "0", "config.json"))
    model = load(os.path.join(search_dir, "trials", "0", "model.keras"))
    volume = next(evaluation.volumes(data.load_split(config["data"], "test")))
    x = volume.image
    reconstruction = model(x, training=False).numpy()
    expected = roc_auc_score((volume.label > 0).ravel(), ((x - reconstruction) ** 2).ravel())
    assert scores["0"] == pytest.approx(expected, abs=1e-4)
    assert 0.5 < scores["0"] < 1.0

    best_trial = max(scores, key=scores.get)
    with open(os.path.join(search_dir, "best", "best_trial.json")) as f:
        best = json.load(f)
    assert best["trial_id"] == best_trial and best["objective"] == "val_auroc"
    assert best["score"] == pytest.approx(scores[best_trial])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_chief_and_worker_share_one_search(tmp_path, tiny_data_dir):
    search_file = tiny_search(tmp_path, tiny_data_dir)
    search_dir = str(tmp_path / "search")
    port = str(_free_port())
    base_env = {**os.environ, "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": port,
                "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, os.path.join(ROOT, "scripts", "tune.py"), "--search", search_file, "--dir", search_dir,
               "--quiet"]
    logs = {role: open(tmp_path / f"{role}.log", "w") for role in ("chief", "worker")}
    processes = {}
    try:
        processes["chief"] = subprocess.Popen(command, env={**base_env, "KERASTUNER_TUNER_ID": "chief"},
                                              stdout=logs["chief"], stderr=subprocess.STDOUT)
        marker = os.path.join(search_dir, tuning.SEARCH_FILE)
        for _ in range(600):  # the chief first (as the README says): it creates the search directory
            if os.path.exists(marker) or processes["chief"].poll() is not None:
                break
            time.sleep(0.1)
        processes["worker"] = subprocess.Popen(command, env={**base_env, "KERASTUNER_TUNER_ID": "tuner0"},
                                               stdout=logs["worker"], stderr=subprocess.STDOUT)
        for role in ("worker", "chief"):
            processes[role].wait(timeout=150)
    finally:
        for p in processes.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in logs.values():
            f.close()
    output = {role: (tmp_path / f"{role}.log").read_text() for role in logs}
    for role, p in processes.items():
        assert p.returncode == 0, f"{role} failed:\n{output[role][-3000:]}"
    assert "worker: no more trials" in output["worker"]
    assert "best trial" in output["chief"]
    # the worker trained both trials of the chief's oracle; the chief exported the best
    for trial in ("0", "1"):
        assert os.path.isfile(os.path.join(search_dir, "trials", trial, "model.keras"))
    assert os.path.isfile(os.path.join(search_dir, "best", "model.keras"))
    for trial in ("0", "1"):
        with open(os.path.join(search_dir, "trials", trial, "objective.json")) as f:
            assert json.load(f)["tuner_id"] == "tuner0"  # trained by the worker, handed out by the chief
    assert os.path.isfile(os.path.join(search_dir, "kt", "chief.json"))
    assert "new search" in output["chief"] and "worker;" in output["worker"]
    assert np.isfinite(json.load(open(os.path.join(search_dir, "best", "best_trial.json")))["score"])
