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
from tfvae.runs import tuning


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
    ({"elbo_samples": 0}, "elbo_samples must be >= 1"),
    ({"elbo_samples": 2.5}, "elbo_samples must be an integer"),
    ({"elbo_samples": True}, "elbo_samples must be an integer"),
    ({"objective_split": 1}, "objective_split must be a string or null"),
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
            search.objective_split, search.max_trials, search.hyperband_factor, search.elbo_samples) == \
        ("grid", "val_loss", "rec_grad", 2, None, None, 3, 16)
    assert tuning.run_config_field("model.beta") is config_lib.SCHEMA["model"]["beta"]
    assert tuning.run_config_field("model") is None and tuning.run_config_field("model.bogus") is None


def test_public_keras_tuner_api_only():
    for path in ("tfvae/runs/tuning.py", "scripts/tune.py"):
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


# --- the neg_elbo objective: a Monte-Carlo estimate of the negative ELBO ---------------------------
def _linear_gaussian_vae(size=8, latent=4, slices=4, beta=1.0, seed=0):
    """A BetaVAE whose decoder is linear, g(z) = W z + b, and whose encoder gives every slice the
    same q(z|x) = N(mu, diag(sigma^2)) (a Dense layer with a zero kernel), with slices x = g(mu) +
    noise; the model's own likelihood (Normal(g(z), 1) per pixel) and prior are kept. Returns the
    model, the slices (slices, S, S, 1) and W, b, mu, sigma (float64)."""
    import keras

    from tfvae.model.vae import BetaVAE

    rng = np.random.default_rng(seed)
    d = size * size
    w, b = rng.normal(0, 0.5, (d, latent)), rng.normal(0, 0.5, d)
    mu, sigma = rng.normal(0, 1, latent), rng.uniform(0.5, 1.5, latent)
    x = mu @ w.T + b + rng.normal(0, 0.3, (slices, d))
    vae = BetaVAE(image_size=size, latent_dim=latent, beta=beta, seed=0)
    encoder = keras.Sequential([keras.Input((size, size, 1)), keras.layers.Flatten(), keras.layers.Dense(2 * latent)])
    encoder.layers[-1].set_weights([np.zeros((d, 2 * latent), "float32"),
                                    np.concatenate([mu, np.log(sigma)]).astype("float32")])
    decoder = keras.Sequential([keras.Input((latent,)), keras.layers.Dense(d), keras.layers.Reshape((size, size, 1))])
    decoder.layers[0].set_weights([w.T.astype("float32"), b.astype("float32")])
    vae.encoder, vae.decoder = encoder, decoder
    return vae, x.reshape(slices, size, size, 1).astype("float32"), w, b, mu, sigma


def _linear_gaussian_closed_form(x, w, b, mu, sigma):
    """Per slice, in float64: E_q[Lrec], Lrec at z = mu, Var_q(Lrec) and the KL, for Lrec(z) =
    0.5 ||x - W z - b||^2 + 0.5 D log(2 pi) and q = N(mu, diag(sigma^2)). With z = mu + sigma * eps
    and A = W diag(sigma), r = x - W mu - b: Lrec = 0.5 ||r - A eps||^2 + const, so
    E_q[Lrec] = Lrec(mu) + 0.5 tr(A^T A) and Var_q(Lrec) = ||A^T r||^2 + 0.5 ||A^T A||_F^2
    (Gaussian moments: the linear and quadratic parts of eps are uncorrelated)."""
    x = x.reshape(len(x), -1).astype(np.float64)
    r = x - (mu @ w.T + b)
    at_mu = 0.5 * (r ** 2).sum(axis=1) + 0.5 * x.shape[1] * np.log(2 * np.pi)
    a = w * sigma
    expected = at_mu + 0.5 * np.trace(a.T @ a)
    variance = ((r @ a) ** 2).sum(axis=1) + 0.5 * ((a.T @ a) ** 2).sum()
    kl = 0.5 * (mu ** 2 + sigma ** 2 - 1 - 2 * np.log(sigma)).sum()
    return expected, at_mu, variance, kl


def test_the_negative_elbo_estimate_agrees_with_the_closed_form_of_a_linear_gaussian_decoder():
    """The Monte-Carlo negative ELBO against E_q[Lrec] + KL in closed form: within 5 Monte-Carlo
    standard errors (computed from the closed-form variance, not from the draws) per slice and on
    the mean, while the old objective, Lrec at z = mu + KL, is more than 50 standard errors off."""
    import tensorflow as tf

    samples = 2000
    vae, x, w, b, mu, sigma = _linear_gaussian_vae()
    expected, at_mu, variance, kl = _linear_gaussian_closed_form(x, w, b, mu, sigma)
    se = np.sqrt(variance / samples)
    assert np.all(np.abs(at_mu - expected) > 50 * se)  # what z = mu leaves out is material here

    # per slice: sampled_elbo_terms with the model's own posterior, likelihood and prior
    terms = tuning.sampled_elbo_terms(x, vae.posterior, vae.likelihood, vae.prior(), samples=samples, seed=[3, 0])
    rec = terms["rec"].numpy().astype(np.float64)
    assert rec.shape == (samples, len(x)) and terms["kl"].shape == (len(x),)
    np.testing.assert_allclose(terms["kl"].numpy(), kl, rtol=1e-5)
    assert np.all(np.abs(rec.mean(axis=0) - expected) < 5 * se)
    # independent draws: their spread is the closed form's (the sample variance's own relative error is
    # about sqrt(2 / samples) = 3 % for a Gaussian; the quadratic part's heavier tail: a few % more)
    np.testing.assert_allclose(rec.var(axis=0, ddof=1), variance, rtol=0.2)

    # the objective: the mean over the slices, no beta, its Monte-Carlo standard error, deterministic
    examples = tf.data.Dataset.from_tensor_slices({"image": x})
    estimate = tuning.negative_elbo(vae, examples, samples=samples, seed=7, batch_size=3)  # two batches
    mean_se = np.sqrt(variance.sum() / samples) / len(x)
    assert (estimate.slices, estimate.samples) == (len(x), samples)
    assert abs(estimate.value - (expected.mean() + kl)) < 5 * mean_se
    assert abs(estimate.value - (at_mu.mean() + kl)) > 50 * mean_se
    assert estimate.mc_standard_error == pytest.approx(mean_se, rel=0.2)
    assert tuning.negative_elbo(vae, examples, samples=samples, seed=7, batch_size=3) == estimate
    assert tuning.negative_elbo(vae, examples, samples=samples, seed=8, batch_size=3).value != estimate.value
    at_beta_4 = _linear_gaussian_vae(beta=4.0)[0]
    assert tuning.negative_elbo(at_beta_4, examples, samples=samples, seed=7, batch_size=3) == estimate


def test_negative_elbo_of_the_model_at_vanishing_sigma_is_lrec_at_mu_plus_kl():
    """On the real (convolutional) model: with the encoder's log sigma pushed to -12 the draws
    collapse onto mu, and the estimate is Lrec(g(mu)) + KL as ``loss_terms(sample=False)`` gives it,
    whatever beta; one draw has no standard error; fewer than one is refused."""
    import tensorflow as tf

    from tfvae.model.vae import BetaVAE

    images = np.random.default_rng(0).normal(size=(6, 16, 16, 1)).astype("float32")
    examples = tf.data.Dataset.from_tensor_slices({"image": images})
    vae = BetaVAE(image_size=16, latent_dim=4, beta=3.0, seed=0)
    layer = vae.encoder.get_layer("to_latent")
    kernel, bias = layer.get_weights()
    kernel[:, 4:], bias[4:] = 0.0, -12.0
    layer.set_weights([kernel, bias])
    terms = vae.loss_terms(images, sample=False)
    at_mu = float(np.mean(terms["rec"].numpy().astype(np.float64) + terms["kl"].numpy()))
    estimate = tuning.negative_elbo(vae, examples, samples=4, seed=0)
    assert estimate.value == pytest.approx(at_mu, rel=1e-6)
    assert tuning.negative_elbo(vae, examples, samples=1).mc_standard_error is None
    with pytest.raises(ValueError, match="samples must be an integer >= 1"):
        tuning.negative_elbo(vae, examples, samples=0)


def test_a_neg_elbo_search_saved_before_the_monte_carlo_objective_is_not_resumed(tmp_path):
    search = tuning.load_search(tiny_search(tmp_path, "unused"))
    assert search.describe()["elbo_samples"] == 16
    search_dir = tmp_path / "search"
    search_dir.mkdir()
    old = json.loads(json.dumps(search.describe()))
    del old["elbo_samples"]  # what search.json held when neg_elbo was Lrec + KL at z = mu
    (search_dir / tuning.SEARCH_FILE).write_text(json.dumps(old))
    with pytest.raises(tuning.SearchDirError, match="differs in elbo_samples"):
        tuning.prepare_search_dir(search, str(search_dir))


# --- the auroc objective's volumes -----------------------------------------------------------------
def test_held_apart_volumes_are_a_seeded_draw_that_leaves_volumes_to_evaluate():
    ids = [f"test_{i:03d}" for i in range(20)]
    picked = tuning.held_apart_volumes(ids[::-1] + ids[:3], 5, seed=0)  # order and repeats do not matter
    assert picked == sorted(picked) and len(set(picked)) == 5 and set(picked) <= set(ids)
    assert tuning.held_apart_volumes(ids, 5, seed=0) == picked
    assert any(tuning.held_apart_volumes(ids, 5, seed=s) != picked for s in range(1, 4))
    with pytest.raises(ValueError, match="would hold apart all 2 volumes of the test split"):
        tuning.held_apart_volumes(["a", "b", "a"], 2, seed=0)


def _split_ids(examples) -> set:
    return {v.decode() for v in examples.map(lambda ex: ex["volume_id"]).as_numpy_iterator()}


@pytest.mark.parametrize("objective_split", [None, "test"])
def test_the_auroc_objective_holds_test_volumes_apart_unless_told_to_read_the_test_split(
        tmp_path, tiny_data_dir, monkeypatch, objective_split):
    """By default the objective scores test volumes that the trial's evaluation leaves out; named
    explicitly, the test split itself is read (its first volumes), nothing is left out, and the
    results -- objective.json, best/best_trial.json -- carry a warning. Training is a stub here (an
    untrained model is scored); the real searches are the slow tests below."""
    import types

    from tfvae.data import pipelines as data
    from tfvae.evaluation import evaluate as evaluation
    from tfvae.runs import training
    from tfvae.runs.run import Run

    def train(config, run_dir, extra_callbacks=(), model=None, **kwargs):  # one epoch's history, then the callbacks
        with open(Run(run_dir).history_path, "w") as f:
            f.write("epoch,val_loss\n0,1.5\n")
        for callback in extra_callbacks:
            callback.set_model(model)
            callback.on_train_end()

    monkeypatch.setattr(training, "train", train)
    extra = {} if objective_split is None else {"objective_split": objective_split}
    search = tuning.load_search(tiny_search(tmp_path, tiny_data_dir, objective="auroc", objective_predictor="rec_error",
                                            objective_volumes=1, **extra))
    search_dir = str(tmp_path / "search")
    hypermodel = tuning.VAEHyperModel(search, search_dir)
    hp = search.hyperparameters()
    metrics = hypermodel.fit(hp, hypermodel.build(hp), trial_id="0")
    run = tuning.trial_dir(search_dir, "0")
    with open(os.path.join(run, "objective.json")) as f:
        objective = json.load(f)
    config = config_lib.load(os.path.join(run, "config.json"))
    test_ids = _split_ids(data.load_split(config["data"], "test"))
    evaluated = _split_ids(evaluation.evaluated_test_split(config))
    scored = objective["objective_volume_ids"]
    assert len(scored) == 1 and set(scored) <= test_ids and objective["val_auroc"] == metrics["val_auroc"]
    if objective_split is None:
        assert objective["held_apart"] and "warning" not in objective
        assert scored == tuning.held_apart_volumes(test_ids, 1, search.base["seed"])
        assert config["evaluate"]["exclude_volumes"] == scored
        assert evaluated == test_ids - set(scored) and evaluated  # evaluation never sees the objective's volumes
        from tfvae.evaluation import reporting

        assert "test without 1 volume(s) held apart for tuning" in reporting.title(config)
    else:
        assert not objective["held_apart"] and config["evaluate"]["exclude_volumes"] == []
        first = next(data.load_split(config["data"], "test").as_numpy_iterator())["volume_id"].decode()
        assert scored == [first] and evaluated == test_ids
        assert "is the test split evaluation scores" in objective["warning"] and first in objective["warning"]
        assert "not held-out" in objective["warning"]
    best = types.SimpleNamespace(trial_id="0", score=metrics["val_auroc"], hyperparameters=hp)
    tuner = types.SimpleNamespace(oracle=types.SimpleNamespace(get_best_trials=lambda n: [best]))
    summary = tuning.export_best(tuner, search, search_dir)
    with open(os.path.join(search_dir, "best", "best_trial.json")) as f:
        assert json.load(f) == json.loads(json.dumps(summary))
    assert summary["objective_volume_ids"] == scored and summary["held_apart"] == (objective_split is None)
    assert summary.get("warning") == objective.get("warning")


def test_an_auroc_search_saved_before_held_apart_volumes_is_not_resumed(tmp_path):
    search = tuning.load_search(tiny_search(tmp_path, "unused", objective="auroc"))
    described = search.describe()
    assert described["objective_held_apart"] is True and "elbo_samples" not in described
    search_dir = tmp_path / "search"
    search_dir.mkdir()
    del described["objective_held_apart"]  # search.json of an auroc search that read the first test volumes
    (search_dir / tuning.SEARCH_FILE).write_text(json.dumps(described))
    with pytest.raises(tuning.SearchDirError, match="differs in objective_held_apart"):
        tuning.prepare_search_dir(search, str(search_dir))


def _events_contain(folder, needle: bytes) -> bool:
    return any(needle in open(f, "rb").read() for f in glob.glob(os.path.join(folder, "**", "events.*"),
                                                                    recursive=True))


# --- searches on the tiny phantom ----------------------------------------------------------------
@pytest.mark.slow
def test_grid_search_neg_elbo_resumes_and_exports_best(tmp_path, tiny_data_dir, monkeypatch, capsys):
    from tfvae.runs import training

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
        assert _events_contain(logs, b"views/inputs | reconstructions"), "image summaries not in the trial's folder"
        # the objective is the last epoch's validation loss of that run
        import csv
        with open(os.path.join(run, "history.csv")) as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 1
        assert objectives[trial]["val_loss"] == pytest.approx(float(rows[-1]["val_loss"]))
        # the search's objective (it varies beta): the negative ELBO E_q[Lrec] + KL, estimated again
        # with numpy and draws of its own, agrees within 5 standard errors of the two estimates
        from tfvae.data import pipelines as data
        from tfvae.model.vae import load

        model = load(os.path.join(run, "model.keras"))
        images = np.stack([ex["image"] for ex in data.load_split(saved["data"], "validation").as_numpy_iterator()])
        mu, log_sigma = np.split(model.encoder(images).numpy().astype(np.float64), 2, axis=-1)
        rng, draws = np.random.default_rng(1), 256
        rec = np.stack([0.5 * ((images - model.decoder((mu + np.exp(log_sigma) * rng.normal(size=mu.shape))
                                                       .astype("float32")).numpy()) ** 2).sum(axis=(1, 2, 3))
                        + 0.5 * images[0].size * np.log(2 * np.pi) for _ in range(draws)])
        kl = 0.5 * (mu ** 2 + np.exp(2 * log_sigma) - 1 - 2 * log_sigma).sum(axis=1)
        ours, ours_se = np.mean(rec.mean(axis=0) + kl), np.sqrt(rec.var(axis=0, ddof=1).sum() / draws) / len(images)
        recorded = objectives[trial]
        assert (recorded["elbo_samples"], recorded["elbo_slices"]) == (16, len(images))
        assert recorded["val_neg_elbo_mc_se"] > 0
        assert abs(recorded["val_neg_elbo"] - ours) < 5 * np.hypot(ours_se, recorded["val_neg_elbo_mc_se"])
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

    from tfvae.data import pipelines as data
    from tfvae.evaluation import evaluate as evaluation
    from tfvae.model.vae import load

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
    # recompute trial 0's objective independently: rec_error of the held-apart test volume (which the
    # trial's evaluation leaves out), sklearn AUROC
    config = config_lib.load(os.path.join(search_dir, "trials", "0", "config.json"))
    with open(os.path.join(search_dir, "trials", "0", "objective.json")) as f:
        held_apart = json.load(f)["objective_volume_ids"]
    assert config["evaluate"]["exclude_volumes"] == held_apart and len(held_apart) == 1
    model = load(os.path.join(search_dir, "trials", "0", "model.keras"))
    volume = next(v for v in evaluation.volumes(data.load_split(config["data"], "test")) if v.volume_id in held_apart)
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
    assert best["held_apart"] and best["objective_volume_ids"] == held_apart and "warning" not in best


@pytest.mark.slow
def test_hypermodel_fit_trains_the_model_build_returned(tmp_path, tiny_data_dir):
    from tfvae.model.vae import load

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
    from tfvae.runs import training
    from tfvae.runs.run import Run

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
