"""Hyperparameter search with Keras Tuner: search configs, the HyperModel, the objectives.

A search config is a JSON file (``configs/search_*.json``), validated like the run configs: its
keys are ``SEARCH_SCHEMA``, ``config.Field`` entries (types, default, check) checked as
``tfvae.config`` checks a run config's, and the keys of its space are run-config keys of
``config.SCHEMA`` (an unknown key, a wrong type or an impossible value is a ``config.ConfigError``
whose one line names the file and the key):

- ``base``: str or object, required -- the run config every trial starts from: a path (relative to
  the search file) or an inline run config.
- ``set``: list of str, [] -- ``KEY=VALUE`` overrides applied to the base (e.g. the phantom).
- ``space``: object or list of objects, required -- a grid ``{"model.beta": [0.1, 1, 10], ...}``
  (dotted run-config keys, each a non-empty list of values), or a list of grids searched over their
  union (their Cartesian products, a setting shared by two grids counted once).
- ``tuner``: "grid" (default), "random", "bayesian" or "hyperband".
- ``objective``: "neg_elbo", "val_loss" or "auroc"; null (default): "neg_elbo" when the space varies
  ``model.beta``, else "val_loss". "val_loss" with a varying beta is refused (see below).
- ``objective_predictor``: str, "rec_grad" -- the predictor whose AUROC the "auroc" objective is.
- ``objective_volumes``: int, 2 -- how many labelled volumes the "auroc" objective scores.
- ``objective_split``: str or null -- where the "auroc" objective's volumes come from. null (the
  default): ``objective_volumes`` volumes of the test split of the test dataset
  (``data.test_data_config``), drawn with the base's seed (``held_apart_volumes``) and held apart:
  each trial's config lists them in ``evaluate.exclude_volumes``, so evaluating the search's runs
  (``best/`` included) leaves them out. No builder has a labelled split besides ``test``
  (``validation`` is healthy), hence held-apart test volumes. A split name: the first
  ``objective_volumes`` volumes of that split of the test dataset, nothing excluded; naming the
  base's ``data.test_split`` itself is allowed, and then the results (each trial's
  ``objective.json``, ``best/best_trial.json``) carry a ``warning``: the test metrics include the
  volumes the model was selected with.
- ``elbo_samples``: int >= 1, 16 -- draws of z per slice for the "neg_elbo" objective.
- ``max_trials``: int or null -- null: every setting of the space once (random, bayesian), all of
  them (grid); Hyperband sizes itself from ``epochs`` and ``hyperband_factor``.
- ``epochs``: int or null -- epochs per trial (Hyperband: the most a trial gets); null: the base's
  ``train.epochs``.
- ``hyperband_factor``: int, 3 -- Hyperband's reduction factor.

Objectives:

- ``neg_elbo`` (unsupervised, minimised; Keras Tuner objective ``val_neg_elbo``): the negative ELBO
  E_q(z|x)[Lrec] + KL (nats per slice) -- without beta, so settings of different beta are compared
  on one quantity -- estimated with ``elbo_samples`` reparameterised draws of z ~ q(z|x) per slice
  (``negative_elbo``; the draws seeded by the run config's seed, so the value is deterministic and
  trials of one latent size get the same eps) and averaged over the healthy validation slices, with the model
  ``model.keras`` holds after the trial; ``objective.json`` also holds its Monte-Carlo standard
  error (``val_neg_elbo_mc_se``). The default for a search that varies beta. (It used to be
  Lrec(g(mu)) + KL at z = mu, which is not the ELBO: the expectation of Lrec over q(z|x) is not
  Lrec at the mean of q(z|x).)
- ``val_loss`` (unsupervised, minimised): the training objective Lrec + beta * KL on the healthy
  validation slices after the trial's last epoch (one sampled z per slice, as Keras reports it). It
  is the negative ELBO only at beta = 1 and falls as beta falls, so a search over beta with it would
  pick the smallest beta by construction (and Hyperband would prune by it): refused when the space
  varies ``model.beta``; right for searches at one beta.
- ``auroc`` (supervised, maximised; Keras Tuner objective ``val_auroc``): USES LABELS. After
  training, ``objective_volumes`` labelled volumes (``objective_split``) are scored with
  ``objective_predictor`` through ``evaluation.Scorer`` and ``metrics.PixelHistogram``, the code
  ``evaluate.py`` uses: pixel AUROC over all pixels of those slices (the paper's convention). This
  is the paper's "small portion of data with both normal and abnormal"; by default those volumes
  are held apart from the test split and evaluation leaves them out (``objective_split``).

Every trial is a normal run directory, ``<search_dir>/trials/<trial_id>/`` (config.json,
model.keras, history.csv, checkpoints/, logs/ with TensorBoard scalars, images and hparams; the
objective is also logged there as ``auroc`` in the ``validation`` run), written by ``training.train``; Keras
Tuner's own state is in ``<search_dir>/kt/``. ``<search_dir>/best/`` is a copy of the best trial's
run directory. A search that stopped resumes where it stopped (Keras Tuner reloads its oracle; a
trial that was interrupted continues from its last finished epoch). Hyperband continues a trial
promoted from an earlier round from a copy of that trial's run directory (weights and optimizer).

The Keras Tuner side is written as its guides write it: ``VAEHyperModel`` (a
``keras_tuner.HyperModel``) builds a trial's model in ``build(hp)`` and trains that model in
``fit(hp, model, ...)``, returning the objective; ``GridTuner``, ``RandomTuner``, ``BayesianTuner``
and ``HyperbandTuner`` subclass the built-in tuners and override ``run_trial`` (build, then fit) --
Keras Tuner's own checkpoints are not used, a trial's weights live in its run directory. A trial
that continues (a resumed search, a Hyperband promotion) gets a freshly built model whose weights
and optimizer state ``training.resume`` restores from the run directory before it trains.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
from typing import Any, NamedTuple

import keras
import keras_tuner as kt
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfvae import config as config_lib
from tfvae.utils import files
from tfvae.evaluation.reporting import VALIDATION_RUN
from tfvae.config.predictor_names import LOCALIZABLE
from tfvae.runs.run import Run
from tfvae.utils.rundir import sibling, swap_in

TUNERS = ("grid", "random", "bayesian", "hyperband")
OBJECTIVES = {"neg_elbo": ("val_neg_elbo", "min"), "val_loss": ("val_loss", "min"), "auroc": ("val_auroc", "max")}
SEARCH_FILE = "search.json"
POINT_HP = "setting"  # the one hyperparameter of a union of grids
tfd = tfp.distributions


# --- the search-config schema: config.Field entries, checked as the run configs are ---------------
REQUIRED = config_lib.REQUIRED  # the default of a key every search config must give
_NULL = type(None)


def _one_of(choices):
    def check(v):
        names = choices() if callable(choices) else choices
        return None if v in names else f"must be one of {', '.join(names)}"
    return check


def _positive(v):
    return None if v > 0 else "must be > 0"


def _at_least(low: int):
    def check(v):
        return None if v >= low else f"must be >= {low}"
    return check


def _key_value_strings(v):
    return None if all(isinstance(item, str) for item in v) else "must be a list of KEY=VALUE strings"


SEARCH_SCHEMA: dict[str, config_lib.Field] = {
    "base": config_lib.Field((str, dict), REQUIRED),
    "set": config_lib.Field((list,), [], _key_value_strings),
    "space": config_lib.Field((dict, list), REQUIRED),  # its keys and values: Search._check_space
    "tuner": config_lib.Field((str,), "grid", _one_of(TUNERS)),
    "objective": config_lib.Field((str, _NULL), None, _one_of(tuple(OBJECTIVES))),
    "objective_predictor": config_lib.Field((str,), "rec_grad", _one_of(LOCALIZABLE)),
    "objective_volumes": config_lib.Field((int,), 2, _positive),
    "objective_split": config_lib.Field((str, _NULL), None),
    "elbo_samples": config_lib.Field((int,), 16, _at_least(1)),
    "max_trials": config_lib.Field((int, _NULL), None, _positive),
    "epochs": config_lib.Field((int, _NULL), None, _positive),
    "hyperband_factor": config_lib.Field((int,), 3, _at_least(2)),
}

def run_config_field(dotted: str) -> config_lib.Field | None:
    """The ``config.SCHEMA`` field of a dotted run-config key (``model.beta``), None if there is none."""
    node: Any = config_lib.SCHEMA
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, config_lib.Field) else None


class Search:
    """A validated search config: the base run config, the settings of the space, the tuner."""

    def __init__(self, raw: dict, source: str, base_dir: str = ".", overrides=()):
        self.source = source
        self.raw = raw
        s = self._validate(raw, source)
        self.tuner, self.objective_key = s["tuner"], s["objective"]
        self.objective_predictor, self.objective_volumes = s["objective_predictor"], s["objective_volumes"]
        self.objective_split, self.max_trials = s["objective_split"], s["max_trials"]
        self.hyperband_factor, self.elbo_samples = s["hyperband_factor"], s["elbo_samples"]
        for item in s["set"]:  # each item alone, so that the error names this file
            try:
                config_lib.resolve({}, [item])
            except config_lib.ConfigError as e:
                raise config_lib.ConfigError(f"{source}: set: {e}") from None
        self.overrides = list(s["set"]) + ([f"train.epochs={s['epochs']}"] if s["epochs"] is not None else [])
        self.overrides += list(overrides)  # the command line's --set last
        if isinstance(s["base"], str):
            self.base_path = s["base"] if os.path.isabs(s["base"]) else os.path.join(base_dir, s["base"])
            self.base = config_lib.load(self.base_path, self.overrides)
            self.base_raw = None
        else:
            self.base_path = None
            self.base_raw = s["base"]
            self.base = config_lib.resolve(s["base"], self.overrides, source=f"{source}: base")
        self.epochs = self.base["train"]["epochs"]
        self.grids = s["space"] if isinstance(s["space"], list) else [s["space"]]
        self.points = self._points(self.grids)
        if not self.points:
            raise config_lib.ConfigError(f"{source}: space is empty")
        self.keys = list(dict.fromkeys(k for p in self.points for k in p))
        varies_beta = len({p.get("model.beta", self.base["model"]["beta"]) for p in self.points}) > 1
        if self.objective_key is None:
            self.objective_key = "neg_elbo" if varies_beta else "val_loss"
        elif self.objective_key == "val_loss" and varies_beta:
            raise config_lib.ConfigError(
                f"{source}: objective 'val_loss' (Lrec + beta * KL) falls as beta falls, so a search over "
                "model.beta would pick the smallest beta by construction; use 'neg_elbo' (the beta-free "
                "negative ELBO) or 'auroc'")

    # --- validation ------------------------------------------------------------------------------
    @staticmethod
    def _validate(raw, source) -> dict:
        out = config_lib.validate(raw, SEARCH_SCHEMA, source, what="a search config")
        Search._check_space(out["space"], out["tuner"], source)
        return out

    @staticmethod
    def _check_space(space, tuner: str, source: str) -> None:
        """Each grid a non-empty object of run-config keys (``config.SCHEMA``), each a non-empty list
        of values (the values themselves are checked by ``config.resolve`` in ``_points``)."""
        grids = space if isinstance(space, list) else [space]
        for i, grid in enumerate(grids):
            where = f"space[{i}]" if isinstance(space, list) else "space"
            if not isinstance(grid, dict) or not grid:
                raise config_lib.ConfigError(f"{source}: {where} must be a non-empty object of KEY: [values]")
            for key, values in grid.items():
                if run_config_field(key) is None:
                    raise config_lib.ConfigError(f"{source}: {where}: unknown run-config key {key!r}")
                if key in ("name", "train.epochs") and tuner == "hyperband":
                    raise config_lib.ConfigError(f"{source}: {where}: {key} cannot be searched with hyperband")
                if key == "name":
                    raise config_lib.ConfigError(f"{source}: {where}: 'name' cannot be searched")
                if not isinstance(values, list) or not values:
                    raise config_lib.ConfigError(f"{source}: {where}.{key} must be a non-empty list of values, "
                                                 f"got {values!r}")

    def _points(self, grids) -> list[dict]:
        """The union of the grids' Cartesian products, each setting once, values as the run config
        holds them (validated: 1 and 1.0 are one beta)."""
        points, seen = [], set()
        for i, grid in enumerate(grids):
            keys = list(grid)
            for combo in itertools.product(*(grid[k] for k in keys)):
                point = {}
                for key, value in zip(keys, combo):
                    item = f"{key}={json.dumps(value)}"
                    try:
                        config = config_lib.resolve(self.base, [item], source=self.source)
                    except config_lib.ConfigError as e:
                        where = f"space[{i}]" if len(grids) > 1 else "space"
                        raise config_lib.ConfigError(f"{self.source}: {where}.{key}: value {value!r} rejected "
                                                     f"({str(e).split(': ', 2)[-1]})") from None
                    point[key] = _get(config, key)
                fingerprint = json.dumps(sorted(point.items()), sort_keys=True)
                if fingerprint not in seen:
                    seen.add(fingerprint)
                    points.append(point)
        return points

    # --- what Keras Tuner sees -------------------------------------------------------------------
    @property
    def single_grid(self) -> bool:
        return len(self.grids) == 1

    def hyperparameters(self):
        """The search space as ``kt.HyperParameters``: one Choice per key for a single grid (numbers
        stay ordered, which Bayesian optimisation uses), else one Choice over the settings' labels."""
        hp = kt.HyperParameters()
        if self.single_grid:
            for key in self.keys:
                hp.Choice(key, _choice_values([p[key] for p in self.points if key in p]))
        else:
            hp.Choice(POINT_HP, [label(p) for p in self.points])
        return hp

    def point(self, hp) -> dict:
        """The run-config values of a trial's hyperparameters."""
        values = hp.values if hasattr(hp, "values") else dict(hp)
        if self.single_grid:
            return {k: _decode(values[k]) for k in self.keys if k in values}
        by_label = {label(p): p for p in self.points}
        return dict(by_label[values[POINT_HP]])

    def trial_config(self, hp, trial_id: str = "", epochs: int | None = None) -> dict:
        items = [f"{k}={json.dumps(v)}" for k, v in self.point(hp).items()]
        if trial_id:
            items.append(f"name={json.dumps(trial_name(self.base['name'], trial_id))}")
        if epochs is not None:
            items.append(f"train.epochs={epochs}")
        return config_lib.resolve(self.base, items, source=self.source)

    @property
    def reads_test_split(self) -> bool:
        """The auroc objective reads the split evaluation scores (``objective_split`` named as the
        base's ``data.test_split``): its results then carry ``objective_on_test_warning``."""
        return self.objective_key == "auroc" and self.objective_split == self.base["data"]["test_split"]

    def objective(self):
        name, direction = OBJECTIVES[self.objective_key]
        return kt.Objective(name, direction)

    def describe(self) -> dict:
        """What is saved as ``<search_dir>/search.json`` (a resumed search must match it). The
        neg_elbo objective's ``elbo_samples`` and the auroc objective's ``objective_held_apart``
        are there for those objectives only: a search saved before they existed (neg_elbo at
        z = mu; auroc on the first test volumes, evaluated with them) differs from it."""
        out = {"source": self.source, "base": self.base, "points": self.points, "tuner": self.tuner,
               "objective": self.objective_key, "objective_predictor": self.objective_predictor,
               "objective_volumes": self.objective_volumes, "objective_split": self.objective_split,
               "max_trials": self.max_trials, "hyperband_factor": self.hyperband_factor}
        if self.objective_key == "neg_elbo":
            out["elbo_samples"] = self.elbo_samples
        if self.objective_key == "auroc":
            out["objective_held_apart"] = self.objective_split is None
        return out


def _get(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def label(point: dict) -> str:
    """``model.beta=0.1,model.latent_dim=64``: a setting as one string (the union's Choice values)."""
    return ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(point.items()))


def _choice_values(values: list) -> list:
    values = list(dict.fromkeys(json.dumps(v) for v in values))
    decoded = [json.loads(v) for v in values]
    if all(isinstance(v, bool) for v in decoded):
        return decoded
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in decoded):
        return [float(v) for v in decoded] if any(isinstance(v, float) for v in decoded) else decoded
    if all(isinstance(v, str) for v in decoded):
        return decoded
    return ["json:" + v for v in values]  # lists, nulls, mixed types: Keras Tuner wants one scalar type


def _decode(value):
    return json.loads(value[5:]) if isinstance(value, str) and value.startswith("json:") else value


def trial_name(base_name: str, trial_id: str) -> str:
    return f"{base_name}-trial{trial_id}"


def load_search(path: str, overrides=()) -> Search:
    """Read and validate a search config file (``overrides``: extra ``KEY=VALUE`` for the base)."""
    path = config_lib.locate(path)  # a file, or a shipped search by name (search_paper)
    raw = config_lib.read_json(path, "search config")
    return Search(raw, path, os.path.dirname(os.path.abspath(path)), overrides)


# --- the supervised objective --------------------------------------------------------------------
HELD_APART_STREAM = 1  # the draw is numpy's default_rng((seed, 1)): not the ensemble's (seed alone)


def held_apart_volumes(volume_ids, n: int, seed: int) -> list[str]:
    """The ``n`` test volumes the auroc objective scores by default (``objective_split`` null):
    drawn with ``seed`` (the base run config's) from the distinct ``volume_ids`` in sorted order,
    returned sorted. The search writes them into each trial's ``evaluate.exclude_volumes``, so the
    evaluation of its runs leaves them out. ``ValueError`` when none would be left to evaluate."""
    ids = sorted(set(volume_ids))
    if n >= len(ids):
        raise ValueError(f"objective_volumes {n} would hold apart all {len(ids)} volumes of the test split, leaving "
                         "none to evaluate; lower objective_volumes")
    pick = np.random.default_rng([seed, HELD_APART_STREAM]).choice(len(ids), n, replace=False)
    return sorted(ids[int(i)] for i in pick)


def objective_on_test_warning(split: str, volume_ids) -> str:
    """The warning a search whose auroc objective read the evaluation's own test split writes into
    its results (``objective.json``, ``best/best_trial.json``)."""
    return (f"objective_split {split!r} is the test split evaluation scores: the model was selected with the "
            f"labels of test volumes {', '.join(volume_ids)}, and evaluating it on that split includes them, so its "
            "test metrics are not held-out; leave objective_split null (held-apart volumes that evaluation leaves "
            f"out) or evaluate with --set 'evaluate.exclude_volumes={json.dumps(list(volume_ids))}'")


def objective_examples(search: "Search", config: dict):
    """``(examples, held_apart)`` for the auroc objective of a trial with run config ``config``: with
    ``objective_split`` null, the ``held_apart_volumes`` of the test split of the test dataset
    (``data.test_data_config``; ``held_apart``: their ids); else the split named (``held_apart``:
    None), of which ``labelled_auroc`` reads the first ``objective_volumes`` volumes."""
    from tfvae.data import pipelines as data

    d = config["data"]
    test_data = data.test_data_config(d)
    if search.objective_split is not None:
        return data.load_split(test_data, search.objective_split), None
    test = data.load_split(test_data, d["test_split"])
    ids = held_apart_volumes((v.decode() for v in test.map(lambda ex: ex["volume_id"]).as_numpy_iterator()),
                             search.objective_volumes, search.base["seed"])
    wanted = tf.constant(ids)
    return test.filter(lambda ex: tf.reduce_any(tf.equal(ex["volume_id"], wanted))), ids


def labelled_auroc(model, config: dict, predictor: str, examples, n_volumes: int,
                   volume_ids: list | None = None) -> float:
    """Pixel AUROC of ``predictor`` over the first ``n_volumes`` volumes of ``examples`` (all
    pixels, labels = seg > 0), with the code ``evaluate.py`` uses. Uses labels. ``volume_ids``, when
    given, receives the ids of the volumes scored."""
    from tfvae import metrics
    from tfvae.evaluation import evaluate as evaluation

    from tfvae.data import pipelines as data

    scorer = evaluation.Scorer(model, config, [predictor])
    # what the map needs from healthy validation slices (recommended settings, Combi's KL range)
    scorer.fit(data.load_split(config["data"], config["data"]["validation_split"]))
    scorer.release()  # no calibration follows: the healthy volumes' outputs are not needed again
    hist = metrics.PixelHistogram(bits=evaluation.HISTOGRAM_BITS)
    for i, volume in enumerate(evaluation.volumes(examples)):
        if i >= n_volumes:
            break
        hist.update(scorer(volume.image, volume.brain_mask, volume.geometry.voxel_mm())[predictor], volume.label)
        if volume_ids is not None:
            volume_ids.append(volume.volume_id)
    return float(hist.auroc())


class LabelledAUROC(keras.callbacks.Callback):
    """At the end of training: ``labelled_auroc`` of the trained model, kept as ``value`` and
    logged to TensorBoard (``<log_dir>/validation``, ``auroc``) at the last epoch."""

    def __init__(self, config, predictor, examples, n_volumes, log_dir):
        super().__init__()
        self.config, self.predictor, self.examples, self.n_volumes = config, predictor, examples, n_volumes
        self.log_dir = log_dir
        self.value = None
        self.volume_ids: list[str] = []
        self.epoch = 0

    def on_epoch_end(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_end(self, logs=None):
        self.volume_ids = []
        self.value = labelled_auroc(self.model, self.config, self.predictor, self.examples, self.n_volumes,
                                    self.volume_ids)
        writer = tf.summary.create_file_writer(os.path.join(self.log_dir, VALIDATION_RUN))
        with writer.as_default(step=self.epoch or self.config["train"]["epochs"]):
            tf.summary.scalar("auroc", self.value)  # beside the validation curves
        writer.flush()


# --- the unsupervised objective: a Monte-Carlo estimate of the negative ELBO ----------------------
def sampled_elbo_terms(x, posterior, likelihood, prior, *, samples: int, seed) -> dict:
    """The terms of a Monte-Carlo estimate of the negative ELBO of each slice of ``x``.

    The ELBO of a slice x (Kingma & Welling 2014, "Auto-Encoding Variational Bayes", eq. 3) is
    E_{q(z|x)}[log p(x|z)] - KL(q(z|x) || p(z)); its negative is E_q[Lrec(x, z)] + KL with
    Lrec = -log p(x|z). The expectation is estimated with ``samples`` reparameterised draws
    z_k = mu + sigma * eps_k, eps_k ~ N(0, I) (their estimator B, eq. 7: the KL analytic, as the
    model's loss has it); no beta weight: it is the model's ELBO, one quantity for every beta.

    ``posterior(x)``: q(z|x), a distribution of batch shape (B,) and event shape (L,) with
    ``mean()`` and ``stddev()`` (a diagonal Normal, e.g. ``BetaVAE.posterior``); ``likelihood(z)``:
    p(x|z) for z of shape (B, L), whose ``log_prob(x)`` is (B,) (e.g. ``BetaVAE.likelihood``);
    ``prior``: p(z) (e.g. ``BetaVAE.prior()``); ``seed``: two integers, the stateless seed of the
    draws (the same seed gives the same eps: the estimate is deterministic for given callables and x).

    Returns ``{"rec": (samples, B), "kl": (B,)}``, float32 tensors in nats per slice: Lrec at each
    draw and the analytic KL; the estimate of each slice's negative ELBO is
    ``rec.mean(0) + kl``. ``ValueError`` if ``samples`` < 1."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    x = tf.convert_to_tensor(x, tf.float32)
    q = posterior(x)
    mu, sigma = tf.cast(q.mean(), tf.float32), tf.cast(q.stddev(), tf.float32)
    eps = tf.random.stateless_normal(tf.concat([[samples], tf.shape(mu)], 0), seed=seed, dtype=tf.float32)
    rec = tf.stack([-tf.cast(likelihood(mu + sigma * eps[k]).log_prob(x), tf.float32) for k in range(samples)])
    kl = tf.cast(tfd.kl_divergence(q, prior), tf.float32)
    return {"rec": rec, "kl": kl}


class NegativeELBO(NamedTuple):
    """``negative_elbo``'s estimate: ``value``, the mean over slices (nats per slice);
    ``mc_standard_error``, the Monte-Carlo standard error of ``value`` given the data (from the
    spread of Lrec over each slice's draws; None with one draw); ``slices``, ``samples``."""
    value: float
    mc_standard_error: float | None
    slices: int
    samples: int


def negative_elbo(model, examples, *, samples: int = 16, seed: int = 0, batch_size: int = 256) -> NegativeELBO:
    """The ``neg_elbo`` objective: the negative ELBO (Lrec + KL, no beta) of ``model`` (a
    ``BetaVAE``), estimated for every slice of ``examples`` (a dataset of example dicts with
    ``image`` (S, S, 1), e.g. the healthy validation split) by ``sampled_elbo_terms`` with
    ``samples`` draws of z ~ q(z|x), and averaged over the slices: nats per slice, the model's
    Gaussian Lrec with its constant 0.5 * S^2 * log(2 pi) included.

    The draws of a batch come from the stateless seed (``seed``, index of the batch's first
    slice): the value is the same for the same model, data, ``samples``, ``seed`` and
    ``batch_size``. ``ValueError`` for ``samples`` < 1 or no slice."""
    total, count, variance = 0.0, 0, 0.0
    prior = model.prior()
    for batch in examples.map(lambda ex: ex["image"]).batch(batch_size):
        terms = sampled_elbo_terms(batch, model.posterior, model.likelihood, prior, samples=samples,
                                   seed=tf.constant([seed, count], tf.int64))
        rec = terms["rec"].numpy().astype(np.float64)
        total += float(np.sum(rec.mean(axis=0) + terms["kl"].numpy()))
        if samples > 1:  # each slice's estimate has variance var_k(Lrec) / samples
            variance += float(np.sum(rec.var(axis=0, ddof=1))) / samples
        count += int(batch.shape[0])
    if not count:
        raise ValueError("no validation slice to compute the negative ELBO on")
    return NegativeELBO(total / count, float(np.sqrt(variance)) / count if samples > 1 else None, count, samples)


# --- the HyperModel and the tuners ---------------------------------------------------------------
def _last_val_loss(run_dir: str) -> float:
    with open(Run(run_dir).history_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise RuntimeError(f"{run_dir}: history.csv is empty")
    return float(rows[-1]["val_loss"])


def trial_dir(search_dir: str, trial_id: str) -> str:
    return os.path.join(search_dir, "trials", str(trial_id))


class VAEHyperModel(kt.HyperModel):
    """The BetaVAE of a search. ``build(hp)`` returns the compiled model of the trial's run config
    (the base config with the trial's hyperparameters), as ``training.train`` would build it;
    ``fit(hp, model, trial_id=...)`` trains THAT model as the run directory
    ``<search_dir>/trials/<trial_id>`` and returns the objective(s)."""

    def __init__(self, search: Search, search_dir: str, verbose=0):
        super().__init__(name="tfvae_beta_vae")
        self.search, self.search_dir, self.verbose = search, search_dir, verbose

    def build(self, hp):
        from tfvae.runs import training

        config = self.search.trial_config(hp)
        keras.utils.set_random_seed(config["seed"])  # the weights training.train would start from
        with training.strategy(config).scope():
            return training.build_model(config)

    def fit(self, hp, model, *, trial_id: str, epochs: int | None = None, previous: str | None = None):
        """Train ``model`` (from ``build(hp)``) as the trial's run directory for the trial's epochs
        (``epochs``: Hyperband's round, else the base's), continuing where that run directory stopped
        (a resumed search) or, for Hyperband, from a copy of the run directory of ``previous``, the
        trial promoted from the previous round. Returns ``{"val_loss": ..., ["val_neg_elbo": ...],
        ["val_auroc": ...]}``; ``objective.json`` in the run directory holds them with what the
        objective recorded (the negative ELBO's Monte-Carlo error; the AUROC's volumes, whether they
        were held apart, and the ``warning`` of an objective that read the test split)."""
        from tfvae.data import pipelines as data
        from tfvae.runs import training

        search = self.search
        run_dir = trial_dir(self.search_dir, trial_id)
        config = search.trial_config(hp, trial_id, epochs)
        held_apart = None
        if search.objective_key == "auroc":
            examples, held_apart = objective_examples(search, config)
            if held_apart:  # the trial's evaluations leave the objective's volumes out
                config = config_lib.resolve(config, [f"evaluate.exclude_volumes={json.dumps(held_apart)}"],
                                            source=search.source)
        if previous and not Run(run_dir).is_run:
            # Hyperband: continue the trial promoted from the previous round (its backup restores
            # the weights, the optimizer and the epoch into ``model`` when training begins)
            shutil.copytree(trial_dir(self.search_dir, previous), run_dir)
            saved_path = Run(run_dir).config_path
            config_lib.save(config_lib.load(saved_path) | {"name": config["name"]}, saved_path)
            if os.path.exists(os.path.join(run_dir, "objective.json")):
                os.remove(os.path.join(run_dir, "objective.json"))
        config = Run.create(run_dir, config, resume=Run(run_dir).is_run).config()
        extra = []
        if search.objective_key == "auroc":
            extra.append(LabelledAUROC(config, search.objective_predictor, examples, search.objective_volumes,
                                       Run(run_dir).logs_dir))
        training.train(config, run_dir, extra_callbacks=extra, verbose=self.verbose, model=model,
                       hparam_keys=sorted({key for grid in search.grids for key in grid}))  # every searched key
        metrics = {"val_loss": _last_val_loss(run_dir)}
        record: dict = {}
        if search.objective_key == "neg_elbo":
            # the draws from the run's seed: trials of one latent size get the same eps (common random numbers)
            estimate = negative_elbo(model, data.load_split(config["data"], config["data"]["validation_split"]),
                                     samples=search.elbo_samples, seed=config["seed"])
            metrics["val_neg_elbo"] = estimate.value
            record = {"val_neg_elbo_mc_se": estimate.mc_standard_error, "elbo_samples": estimate.samples,
                      "elbo_slices": estimate.slices}
        if extra:
            metrics["val_auroc"] = extra[0].value
            record = {"objective_split": search.objective_split, "objective_volume_ids": extra[0].volume_ids,
                      "held_apart": held_apart is not None}
            if search.objective_split == config["data"]["test_split"]:
                record["warning"] = objective_on_test_warning(search.objective_split, extra[0].volume_ids)
        files.write_json(os.path.join(run_dir, "objective.json"),
                         {"trial_id": trial_id, **metrics, **record, "values": search.point(hp),
                          "tuner_id": os.environ.get("KERASTUNER_TUNER_ID", "tuner0")})
        return metrics


class TrialRunDirs:
    """``run_trial`` as Keras Tuner's custom-tuner guide writes it: build the trial's model with the
    HyperModel and fit it, returning the objective. Mixed into the tuners below (before the built-in
    tuner, whose ``run_trial`` it replaces: no Keras Tuner checkpoints, the run directory holds the
    weights)."""

    def run_trial(self, trial, *args, **kwargs):
        hp = trial.hyperparameters
        model = self.hypermodel.build(hp)
        return self.hypermodel.fit(hp, model, *args, trial_id=trial.trial_id, **kwargs)


class ResumableGridOracle(kt.oracles.GridSearchOracle):
    """Keras Tuner's grid oracle, resumable after a kill: it keeps the order of the tried settings
    and the queue of settings whose successor is still to be found only in memory (keras-tuner
    #1055), so a search restarted in a fresh process failed with a ``KeyError`` and a third start
    declared itself done with a setting never trained. On reload both are rebuilt from the trials
    on disk (every tried setting, in grid order, re-examined for an untried successor; a trial the
    kill interrupted is retried by Keras Tuner's own retry queue, and so is a trial that failed:
    running the same command again after fixing the cause completes the grid)."""

    def reload(self):
        super().reload()
        from functools import cmp_to_key

        ids = sorted(self.trials, key=cmp_to_key(lambda a, b: self._compare(self.trials[a].hyperparameters.values,
                                                                             self.trials[b].hyperparameters.values)))
        self._ordered_ids = type(self._ordered_ids)()  # a fresh one of the oracle's own (private) list class
        for trial_id in ids:
            self._ordered_ids.insert(trial_id)
        self._populate_next = list(ids)
        failed = [i for i in ids if self.trials[i].status == kt.engine.trial.TrialStatus.FAILED]
        self._retry_queue.extend(i for i in failed if i not in self._retry_queue)  # a restart retries them


class GridTuner(TrialRunDirs, kt.GridSearch):
    """Grid search: every setting of the space, in order (``ResumableGridOracle``)."""

    def __init__(self, hypermodel=None, *, objective=None, max_trials=None, seed=None, hyperparameters=None,
                 tune_new_entries=True, allow_new_entries=True, **kwargs):
        oracle = ResumableGridOracle(objective=objective, max_trials=max_trials, seed=seed,
                                     hyperparameters=hyperparameters, tune_new_entries=tune_new_entries,
                                     allow_new_entries=allow_new_entries)
        kt.Tuner.__init__(self, oracle, hypermodel, **kwargs)  # kt.GridSearch's own __init__ makes its oracle


class RandomTuner(TrialRunDirs, kt.RandomSearch):
    """Random search over the settings of the space."""


class BayesianTuner(TrialRunDirs, kt.BayesianOptimization):
    """Bayesian optimisation (Gaussian process) over the settings of the space."""


class HyperbandTuner(TrialRunDirs, kt.Hyperband):
    """Hyperband: each round trains a trial for ``tuner/epochs`` epochs in all, a trial promoted from
    the previous round (``tuner/trial_id``) continuing from that trial's run directory."""

    def run_trial(self, trial, *args, **kwargs):
        values = trial.hyperparameters.values
        kwargs.update(epochs=values["tuner/epochs"], previous=values.get("tuner/trial_id"))
        return super().run_trial(trial, *args, **kwargs)


TUNER_CLASSES = {"grid": GridTuner, "random": RandomTuner, "bayesian": BayesianTuner, "hyperband": HyperbandTuner}


def make_tuner(search: Search, search_dir: str, verbose=0):
    """The Keras Tuner tuner of ``search``, its state in ``<search_dir>/kt`` (reloaded when there)."""
    # Keras Tuner treats seed 0 as "no seed" (its oracle draws one at random: ``seed or randint``), so
    # the oracle gets seed + 1: every seed, 0 included, gives the same trials on every run
    common = dict(hypermodel=VAEHyperModel(search, search_dir, verbose), objective=search.objective(),
                  hyperparameters=search.hyperparameters(), tune_new_entries=False, seed=search.base["seed"] + 1,
                  directory=search_dir, project_name="kt", overwrite=False)
    if search.tuner == "hyperband":
        return HyperbandTuner(max_epochs=search.epochs, factor=search.hyperband_factor, **common)
    return TUNER_CLASSES[search.tuner](max_trials=search.max_trials or len(search.points), **common)


# --- Keras Tuner's chief/worker mode, from the environment variables its guide documents ----------
def _has_chief_oracle() -> bool:
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return False
    for name in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"):
        if name not in os.environ:
            raise RuntimeError(f"KERASTUNER_ORACLE_IP is set but {name} is not (distributed search needs "
                               "KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT and KERASTUNER_TUNER_ID)")
    return True


def is_chief() -> bool:
    """The chief of a distributed search (``KERASTUNER_TUNER_ID`` containing ``chief``, as Keras
    Tuner decides it): it runs the oracle and hands out trials."""
    return _has_chief_oracle() and "chief" in os.environ["KERASTUNER_TUNER_ID"]


def is_worker() -> bool:
    """A worker of a distributed search: it trains the trials the chief hands out."""
    return _has_chief_oracle() and not is_chief()


class SearchDirError(ValueError):
    pass


class SearchFailed(RuntimeError):
    """Keras Tuner stopped the search after too many consecutive failed trials."""


def missing_settings(tuner, search: Search) -> list[dict]:
    """The settings of a grid search no completed trial has trained (empty for the other tuners,
    which do not promise every setting)."""
    if search.tuner != "grid":
        return []
    done = {json.dumps(search.point(t.hyperparameters), sort_keys=True) for t in tuner.oracle.trials.values()
            if t.status == kt.engine.trial.TrialStatus.COMPLETED}
    return [p for p in search.points[:search.max_trials or None] if json.dumps(p, sort_keys=True) not in done]


def run_trials(tuner, search_dir: str, search: Search | None = None) -> None:
    """``tuner.search()``; when Keras Tuner gives up after consecutive failed trials (its error
    carries the last trial's whole traceback), a one-line ``SearchFailed`` naming that trial's error;
    a grid search (``search``) that ended with settings no trial completed is a ``SearchFailed``
    naming them, never reported as done."""
    try:
        tuner.search()
    except RuntimeError as e:
        if not str(e).startswith("Number of consecutive failures"):
            raise
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise SearchFailed(f"the search stopped: {tuner.oracle.max_consecutive_failed_trials} trials in a row failed; "
                           f"the last with {lines[-1]} (each trial's traceback: "
                           f"{os.path.join(search_dir, 'kt', 'trial_*', 'trial.json')})") from None
    missing = missing_settings(tuner, search) if search is not None and not is_worker() else []  # chief's oracle
    if missing:
        raise SearchFailed(f"the search ended with {len(missing)} setting(s) no trial completed "
                           f"({'; '.join(label(p) for p in missing)}); a trial failed (its traceback: "
                           f"{os.path.join(search_dir, 'kt', 'trial_*', 'trial.json')}); fix the cause and run the "
                           "same command again: the missing settings are retried")


def prepare_search_dir(search: Search, search_dir: str, overwrite: bool = False) -> bool:
    """Create ``search_dir`` (or check it holds this search, to resume it); returns True when resuming."""
    marker = os.path.join(search_dir, SEARCH_FILE)
    described = json.loads(json.dumps(search.describe()))
    if os.path.exists(search_dir) and os.listdir(search_dir):
        if not os.path.isfile(marker):
            raise SearchDirError(f"{search_dir} exists and is not a search directory (no {SEARCH_FILE})")
        if overwrite:
            shutil.rmtree(search_dir)
        else:
            with open(marker) as f:
                saved = json.load(f)
            keys = [k for k in described if k != "source" and saved.get(k) != described[k]]
            if keys:
                from tfvae.utils.console import option

                raise SearchDirError(f"{search_dir} holds another search (differs in {', '.join(keys)}); pass "
                                     f"{option('--overwrite', 'overwrite=True')} to replace it or "
                                     f"{option('--dir', 'another search_dir')} to search elsewhere")
            return True
    os.makedirs(search_dir, exist_ok=True)
    files.write_json(marker, described)  # whole: a worker starting at the same time sees all of it or nothing
    return False


RECORDED = ("val_neg_elbo_mc_se", "elbo_samples", "objective_split", "objective_volume_ids", "held_apart", "warning")


def export_best(tuner, search: Search, search_dir: str) -> dict | None:
    """Copy the best finished trial's run directory to ``<search_dir>/best`` and return a summary."""
    trials = tuner.oracle.get_best_trials(1)
    if not trials:
        return None
    best = trials[0]
    source = trial_dir(search_dir, best.trial_id)
    target = os.path.join(search_dir, "best")
    name, _ = OBJECTIVES[search.objective_key]
    summary = {"trial_id": best.trial_id, "objective": name, "score": best.score,
               "values": search.point(best.hyperparameters), "run_dir": source}
    recorded = os.path.join(source, "objective.json")
    if os.path.isfile(recorded):  # what the trial recorded beside its objective: its error, its volumes, a warning
        with open(recorded) as f:
            objective = json.load(f)
        summary.update({k: objective[k] for k in RECORDED if k in objective})
    copy = sibling(target, "partial")  # made whole beside the old copy, then swapped in
    for leftover in (copy, sibling(target, "replaced")):  # an earlier copy a kill cut short
        if os.path.isdir(leftover):
            shutil.rmtree(leftover)
    shutil.copytree(source, copy)
    files.write_json(os.path.join(copy, "best_trial.json"), summary)
    swap_in(copy, target)
    return summary


def write_trials(tuner, search: Search, search_dir: str) -> list[dict]:
    """``<search_dir>/trials.csv``: ``summary_rows`` as a table (written whole); returns the rows."""
    rows = summary_rows(tuner, search)
    if rows:
        files.write_csv(os.path.join(search_dir, "trials.csv"), rows,
                        header=list(dict.fromkeys(k for r in rows for k in r)))
    return rows


def summary_rows(tuner, search: Search) -> list[dict]:
    """Every finished trial: id, values, val_loss, val_neg_elbo / val_auroc (when measured), status."""
    rows = []
    for trial in tuner.oracle.trials.values():
        metrics = {}
        for name in ("val_loss", "val_neg_elbo", "val_auroc"):
            if trial.metrics.exists(name):
                metrics[name] = trial.metrics.get_last_value(name)
        rows.append({"trial_id": trial.trial_id, "status": str(trial.status), **search.point(trial.hyperparameters),
                     **metrics, "score": trial.score})
    return sorted(rows, key=lambda r: r["trial_id"])
