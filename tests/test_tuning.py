"""Hyperparameter search: search configs, the HyperModel (its fit trains the model its build
returned) and the named tuners, a two-trial grid search per objective on the tiny phantom, resuming
a stopped search, Hyperband continuing a promoted trial, and Keras Tuner's chief/worker mode on
localhost."""

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
    assert search.tuner == "grid" and search.objective().name == "val_neg_elbo"  # it varies beta
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
    ({"set": "train.epochs=2"}, "set must be a list"),
    ({"max_trials": True}, "max_trials must be an integer or null"),
    ({"hyperband_factor": 1}, "hyperband_factor must be >= 2"),
    ({"base": 3}, "base must be a string or object"),
    ({"space": {"model": [1]}}, "space: unknown run-config key 'model'"),  # a section, not a key
    ({"space": {"name": ["a"]}}, "space: 'name' cannot be searched"),
    ({"space": {"train.epochs": [1, 2]}, "tuner": "hyperband"}, "train.epochs cannot be searched with hyperband"),
])
def test_bad_search_config_is_one_line_naming_file_and_key(tmp_path, change, message):
    path = tmp_path / "bad_search.json"
    path.write_text(json.dumps({"base": {"name": "x"}, "space": {"model.beta": [1]}, **change}))
    with pytest.raises(config_lib.ConfigError) as e:
        tuning.load_search(str(path))
    text = str(e.value)
    assert message in text and "\n" not in text
    assert "bad_search.json" in text


def test_missing_required_key_is_named(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"base": {"name": "x"}}))
    with pytest.raises(config_lib.ConfigError, match=r"s.json: missing key 'space'"):
        tuning.load_search(str(path))


def test_a_search_over_beta_by_val_loss_is_refused_and_neg_elbo_is_its_default(tmp_path):
    path = tiny_search(tmp_path, "unused", objective="val_loss")
    with pytest.raises(config_lib.ConfigError) as e:
        tuning.load_search(path)
    assert str(e.value).startswith(f"{path}: objective 'val_loss' (Lrec + beta * KL) falls as beta falls")
    assert "\n" not in str(e.value)
    assert tuning.load_search(tiny_search(tmp_path, "unused")).objective_key == "neg_elbo"
    at_one_beta = tuning.load_search(tiny_search(tmp_path, "unused", space={"model.latent_dim": [8, 16]},
                                                 objective="val_loss"))
    assert at_one_beta.objective_key == "val_loss"


def test_search_schema_is_config_fields_with_the_documented_defaults(tmp_path):
    assert all(isinstance(f, config_lib.Field) for f in tuning.SEARCH_SCHEMA.values())
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"base": {"name": "x"}, "space": {"model.beta": [1]}}))
    search = tuning.load_search(str(path))
    assert (search.tuner, search.objective_key, search.objective_predictor, search.objective_volumes,
            search.objective_split, search.max_trials, search.hyperband_factor) == \
        ("grid", "val_loss", "rec_grad", 2, None, None, 3)
    assert tuning.run_config_field("model.beta") is config_lib.SCHEMA["model"]["beta"]
    assert tuning.run_config_field("model") is None and tuning.run_config_field("model.bogus") is None


def test_public_keras_tuner_api_only():
    for path in ("tfvae/tuning.py", "scripts/tune.py"):
        with open(os.path.join(ROOT, path)) as f:
            assert "keras_tuner.src" not in f.read(), path


def test_chief_and_worker_roles_follow_keras_tuner_environment(monkeypatch):
    for name in ("KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"):
        monkeypatch.delenv(name, raising=False)
    assert not tuning.is_chief() and not tuning.is_worker()
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    with pytest.raises(RuntimeError, match="KERASTUNER_ORACLE_PORT"):
        tuning.is_worker()
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "8000")
    with pytest.raises(RuntimeError, match="KERASTUNER_TUNER_ID"):
        tuning.is_chief()
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
    assert tuning.is_chief() and not tuning.is_worker()
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner1")
    assert tuning.is_worker() and not tuning.is_chief()


@pytest.mark.parametrize("tuner, tuner_class, keras_tuner_class", [
    ("grid", "GridTuner", "GridSearch"), ("random", "RandomTuner", "RandomSearch"),
    ("bayesian", "BayesianTuner", "BayesianOptimization"), ("hyperband", "HyperbandTuner", "Hyperband")])
def test_each_tuner_fits_the_model_its_hypermodel_built(tmp_path, monkeypatch, tuner, tuner_class,
                                                        keras_tuner_class):
    """The named tuners' run_trial: build(hp), then fit(hp, that model) -- no data needed, fit is a stub."""
    import keras_tuner as kt

    search = tuning.load_search(tiny_search(tmp_path, "unused", tuner=tuner, epochs=2))
    built, fitted = [], []
    real_build = tuning.VAEHyperModel.build

    def build(self, hp):
        model = real_build(self, hp)
        built.append(model)
        return model

    def fit(self, hp, model, *, trial_id, epochs=None, previous=None):
        # the model the trial's build just returned (Keras Tuner also builds once before the first
        # trial, to collect the hyperparameters)
        fitted.append((model is built[-1], model, trial_id, epochs, previous, search.point(hp)))
        return {search.objective().name: float(search.point(hp)["model.beta"])}

    monkeypatch.setattr(tuning.VAEHyperModel, "build", build)
    monkeypatch.setattr(tuning.VAEHyperModel, "fit", fit)
    t = tuning.make_tuner(search, str(tmp_path / "search"))
    assert type(t) is getattr(tuning, tuner_class) and isinstance(t, getattr(kt, keras_tuner_class))
    assert isinstance(t.hypermodel, tuning.VAEHyperModel)
    t.search()
    assert fitted
    for is_last_built, model, trial_id, epochs, previous, point in fitted:
        assert is_last_built  # the model build returned is the one fit trains
        assert model.beta == point["model.beta"] and model.latent_dim == 8
        values = t.oracle.trials[trial_id].hyperparameters.values
        assert (epochs, previous) == ((values["tuner/epochs"], values.get("tuner/trial_id"))
                                      if tuner == "hyperband" else (None, None))
    assert {p["model.beta"] for *_, p in fitted} == {0.5, 4.0}
    assert t.oracle.get_best_trials(1)[0].score == 0.5


def test_a_random_search_with_seed_0_repeats_its_trials(tmp_path, monkeypatch):
    """Keras Tuner draws a random oracle seed when given 0; ours maps every seed to a fixed one."""
    search = tuning.load_search(tiny_search(tmp_path, "unused", tuner="random", max_trials=4,
                                            space={"model.beta": [0.1, 0.5, 1, 2, 4, 10, 20, 50]}))
    assert search.base["seed"] == 0
    monkeypatch.setattr(tuning.VAEHyperModel, "fit",
                        lambda self, hp, model, **kw: {search.objective().name: float(search.point(hp)["model.beta"])})
    picked = []
    for name in ("first", "second"):
        t = tuning.make_tuner(search, str(tmp_path / name))
        t.search()
        picked.append([search.point(t.oracle.trials[i].hyperparameters)["model.beta"] for i in sorted(
            t.oracle.trials, key=lambda i: t.oracle.trials[i].trial_id)])
    assert len(picked[0]) == 4 and picked[0] == picked[1]


def test_a_search_whose_trials_all_fail_ends_in_one_line(tmp_path, monkeypatch, capsys):
    path = tiny_search(tmp_path, "unused", space={"model.beta": [0.1, 0.5, 1, 2]})

    def fit(self, hp, model, **kw):
        raise ValueError("data.manual_dir: /nowhere does not exist")

    monkeypatch.setattr(tuning.VAEHyperModel, "fit", fit)
    search_dir = tmp_path / "search"
    assert load_script("tune").main(["--search", path, "--dir", str(search_dir), "--quiet"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]  # above it: Keras Tuner's own per-trial tracebacks
    assert last.startswith("error: the search stopped: 3 trials in a row failed")
    assert "ValueError: data.manual_dir: /nowhere does not exist" in last and str(search_dir) in last


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
def test_grid_search_neg_elbo_resumes_and_exports_best(tmp_path, tiny_data_dir, monkeypatch, capsys):
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
    assert tune.main(["--search", search_file, "--dir", search_dir, "--quiet"]) == 130  # one line, no traceback
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"interrupted (Ctrl-C): finished trials are kept in {search_dir}; the same command continues the search")
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
        assert _events_contain(logs, b"inputs | reconstructions"), "image summaries not in the trial's folder"
        # the objective is the last epoch's validation loss of that run
        import csv
        with open(os.path.join(run, "history.csv")) as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 1
        assert objectives[trial]["val_loss"] == pytest.approx(float(rows[-1]["val_loss"]))
        # the search's objective (it varies beta): Lrec + KL at z = mu, written out with numpy
        from tfvae import data
        from tfvae.model import load

        model = load(os.path.join(run, "model.keras"))
        images = np.stack([ex["image"] for ex in data.load_split(saved["data"], "validation").as_numpy_iterator()])
        stats = model.encoder(images).numpy()
        mu, log_sigma = np.split(stats, 2, axis=-1)
        g = model.decoder(mu).numpy()
        rec = 0.5 * ((images - g) ** 2).sum(axis=(1, 2, 3)) + 0.5 * images[0].size * np.log(2 * np.pi)
        kl = 0.5 * (mu ** 2 + np.exp(2 * log_sigma) - 1 - 2 * log_sigma).sum(axis=1)
        assert objectives[trial]["val_neg_elbo"] == pytest.approx(float(np.mean(rec + kl)), rel=1e-4)
    assert {o["values"]["model.beta"] for o in objectives.values()} == {0.5, 4.0}

    best_trial = min(objectives, key=lambda t: objectives[t]["val_neg_elbo"])
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
        assert _events_contain(os.path.join(run, "logs", "validation"), b"auroc")
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


@pytest.mark.slow
def test_hypermodel_fit_trains_the_model_build_returned(tmp_path, tiny_data_dir):
    from tfvae.model import load

    search = tuning.load_search(tiny_search(tmp_path, tiny_data_dir))
    search_dir = str(tmp_path / "search")
    hypermodel = tuning.VAEHyperModel(search, search_dir)
    hp = search.hyperparameters()
    model = hypermodel.build(hp)
    assert model.beta == search.point(hp)["model.beta"]
    before = [w.copy() for w in model.get_weights()]
    metrics = hypermodel.fit(hp, model, trial_id="0")
    after = model.get_weights()
    assert any(not np.array_equal(b, a) for b, a in zip(before, after)), "fit did not train the model it was given"
    run = os.path.join(search_dir, "trials", "0")
    saved = load(os.path.join(run, "model.keras")).get_weights()
    assert len(saved) == len(after) and all(np.array_equal(s, a) for s, a in zip(saved, after))
    with open(os.path.join(run, "objective.json")) as f:
        assert json.load(f)["val_loss"] == metrics["val_loss"] and np.isfinite(metrics["val_loss"])
    # the model build returned starts where training.train's own would: same weights after training
    from tfvae import training
    from tfvae.run import Run

    config = search.trial_config(hp, "0")
    Run.create(str(tmp_path / "plain"), config)
    training.train(config, str(tmp_path / "plain"), verbose=0)
    plain = load(str(tmp_path / "plain" / "model.keras")).get_weights()
    assert all(np.array_equal(p, a) for p, a in zip(plain, after))


@pytest.mark.slow
def test_hyperband_continues_a_promoted_trial_from_its_run_directory(tmp_path, tiny_data_dir):
    import csv

    search_file = tiny_search(tmp_path, tiny_data_dir, tuner="hyperband", epochs=3, hyperband_factor=3,
                              space={"model.beta": [0.5, 4, 8]})
    search_dir = str(tmp_path / "search")
    assert load_script("tune").main(["--search", search_file, "--dir", search_dir, "--quiet"]) == 0
    histories, names = {}, {}
    for run in sorted(glob.glob(os.path.join(search_dir, "trials", "*"))):
        with open(os.path.join(run, "history.csv")) as f:
            histories[os.path.basename(run)] = [(r["epoch"], r["val_loss"]) for r in csv.DictReader(f)]
        names[os.path.basename(run)] = config_lib.load(os.path.join(run, "config.json"))["name"]
    longest = max(histories, key=lambda t: len(histories[t]))
    assert len(histories[longest]) == 3
    # its first epoch is the earlier round's trial it continues (copied, not trained again)
    assert any(h == histories[longest][:1] for t, h in histories.items() if t != longest)
    assert names[longest] == tuning.trial_name("tiny", longest)
    with open(os.path.join(search_dir, "best", "best_trial.json")) as f:
        assert json.load(f)["trial_id"] == longest


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


def test_a_grid_search_killed_during_a_trial_completes_every_setting_when_started_again(tmp_path, monkeypatch):
    """keras-tuner#1055: the grid oracle's order lived in memory only (KeyError on restart, then a
    search 'done' with a setting never trained)."""
    search = tuning.load_search(tiny_search(tmp_path, "unused", space={"model.beta": [0.5, 1, 2]}))
    search_dir = str(tmp_path / "search")
    fitted = []

    def killed_in_the_second_trial(self, hp, model, *, trial_id, **kw):
        if len(fitted) == 1:
            raise SystemExit("killed")  # like a kill -9: no Keras Tuner bookkeeping after it
        fitted.append(search.point(hp)["model.beta"])
        return {search.objective().name: float(search.point(hp)["model.beta"])}

    monkeypatch.setattr(tuning.VAEHyperModel, "fit", killed_in_the_second_trial)
    with pytest.raises(SystemExit):
        tuning.run_trials(tuning.make_tuner(search, search_dir), search_dir, search)
    assert fitted == [0.5]

    def fit(self, hp, model, *, trial_id, **kw):
        fitted.append(search.point(hp)["model.beta"])
        return {search.objective().name: float(search.point(hp)["model.beta"])}

    monkeypatch.setattr(tuning.VAEHyperModel, "fit", fit)
    tuner = tuning.make_tuner(search, search_dir)  # a fresh process: everything reloaded from disk
    tuning.run_trials(tuner, search_dir, search)
    assert sorted(fitted) == [0.5, 1.0, 2.0] and tuning.missing_settings(tuner, search) == []
    again = tuning.make_tuner(search, search_dir)  # the same command a third time: nothing left to train
    tuning.run_trials(again, search_dir, search)
    assert sorted(fitted) == [0.5, 1.0, 2.0] and len(again.oracle.trials) == 3


def test_a_grid_search_with_a_failed_setting_is_not_reported_done_and_a_rerun_retries_it(tmp_path, monkeypatch):
    search = tuning.load_search(tiny_search(tmp_path, "unused", space={"model.beta": [0.5, 1, 2]}))
    search_dir = str(tmp_path / "search")

    def fit(self, hp, model, **kw):
        if search.point(hp)["model.beta"] == 1.0:
            raise ValueError("out of memory in this trial")
        return {search.objective().name: float(search.point(hp)["model.beta"])}

    monkeypatch.setattr(tuning.VAEHyperModel, "fit", fit)
    with pytest.raises(tuning.SearchFailed, match=r"1 setting\(s\) no trial completed \(model\.beta=1"):
        tuning.run_trials(tuning.make_tuner(search, search_dir), search_dir, search)
    monkeypatch.setattr(tuning.VAEHyperModel, "fit", lambda self, hp, model, **kw: {search.objective().name: 1.0})
    tuner = tuning.make_tuner(search, search_dir)
    tuning.run_trials(tuner, search_dir, search)  # the cause fixed: the failed setting is retried
    assert tuning.missing_settings(tuner, search) == []
