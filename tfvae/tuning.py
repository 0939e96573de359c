"""Hyperparameter search with Keras Tuner: search configs, the HyperModel, the objectives.

A search config is a JSON file (``configs/search_*.json``), validated like the run configs (an
unknown key or a wrong type is a ``config.ConfigError`` whose one line names the file and the key):

- ``base``: str or object, required -- the run config every trial starts from: a path (relative to
  the search file) or an inline run config.
- ``set``: list of str, [] -- ``KEY=VALUE`` overrides applied to the base (e.g. the phantom).
- ``space``: object or list of objects, required -- a grid ``{"model.beta": [0.1, 1, 10], ...}``
  (dotted run-config keys, each a non-empty list of values), or a list of grids searched over their
  union (their Cartesian products, a setting shared by two grids counted once).
- ``tuner``: "grid" (default), "random", "bayesian" or "hyperband".
- ``objective``: "val_loss" (default) or "auroc".
- ``objective_predictor``: str, "rec_grad" -- the predictor whose AUROC the "auroc" objective is.
- ``objective_volumes``: int, 2 -- how many labelled volumes (the first of ``objective_split``)
  the "auroc" objective scores.
- ``objective_split``: str or null -- the labelled split (of the test dataset,
  ``data.test_data_config``) the "auroc" objective reads; null: the base's ``data.test_split``.
- ``max_trials``: int or null -- null: every setting of the space once (random, bayesian), all of
  them (grid); Hyperband sizes itself from ``epochs`` and ``hyperband_factor``.
- ``epochs``: int or null -- epochs per trial (Hyperband: the most a trial gets); null: the base's
  ``train.epochs``.
- ``hyperband_factor``: int, 3 -- Hyperband's reduction factor.

Objectives:

- ``val_loss`` (unsupervised, minimised): the mean negative ELBO (``loss`` = Lrec + beta * KL) on
  the healthy validation slices after the trial's last epoch -- what ``model.keras`` holds.
- ``auroc`` (supervised, maximised; Keras Tuner objective ``val_auroc``): USES LABELS. After
  training, the first ``objective_volumes`` volumes of a labelled split are scored with
  ``objective_predictor`` through ``evaluation.Scorer`` and ``metrics.PixelHistogram``, the code
  ``evaluate.py`` uses: pixel AUROC over all pixels of those slices (the paper's convention). This
  is the paper's "small portion of data with both normal and abnormal"; with the default split
  those volumes belong to the test split, so report test numbers without them (or point
  ``objective_split`` at a held-out labelled split).

Every trial is a normal run directory, ``<search_dir>/trials/<trial_id>/`` (config.json,
model.keras, history.csv, checkpoints/, logs/ with TensorBoard scalars, images and hparams; the
objective is also logged there as ``validation/epoch_auroc``), written by ``training.train``; Keras
Tuner's own state is in ``<search_dir>/kt/``. ``<search_dir>/best/`` is a copy of the best trial's
run directory. A search that stopped resumes where it stopped (Keras Tuner reloads its oracle; a
trial that was interrupted continues from its last finished epoch). Hyperband continues a trial
promoted from an earlier round from a copy of that trial's run directory (weights and optimizer).
"""

from __future__ import annotations

import copy
import csv
import itertools
import json
import os
import shutil
from typing import Any

from tfvae import config as config_lib
from tfvae.run import Run

TUNERS = ("grid", "random", "bayesian", "hyperband")
OBJECTIVES = {"val_loss": ("val_loss", "min"), "auroc": ("val_auroc", "max")}
SEARCH_FILE = "search.json"
POINT_HP = "setting"  # the one hyperparameter of a union of grids

_NULL = type(None)
SEARCH_SCHEMA: dict[str, tuple[tuple, Any]] = {
    "base": ((str, dict), None),
    "set": ((list,), []),
    "space": ((dict, list), None),
    "tuner": ((str,), "grid"),
    "objective": ((str,), "val_loss"),
    "objective_predictor": ((str,), "rec_grad"),
    "objective_volumes": ((int,), 2),
    "objective_split": ((str, _NULL), None),
    "max_trials": ((int, _NULL), None),
    "epochs": ((int, _NULL), None),
    "hyperband_factor": ((int,), 3),
}
REQUIRED = ("base", "space")


class Search:
    """A validated search config: the base run config, the settings of the space, the tuner."""

    def __init__(self, raw: dict, source: str, base_dir: str = ".", overrides=()):
        self.source = source
        self.raw = raw
        s = self._validate(raw, source)
        self.tuner, self.objective_key = s["tuner"], s["objective"]
        self.objective_predictor, self.objective_volumes = s["objective_predictor"], s["objective_volumes"]
        self.objective_split, self.max_trials = s["objective_split"], s["max_trials"]
        self.hyperband_factor = s["hyperband_factor"]
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

    # --- validation ------------------------------------------------------------------------------
    def _validate(self, raw, source) -> dict:
        if not isinstance(raw, dict):
            raise config_lib.ConfigError(f"{source}: a search config must be a JSON object")
        out = {k: copy.deepcopy(d) for k, (_, d) in SEARCH_SCHEMA.items()}
        for key, value in raw.items():
            if key not in SEARCH_SCHEMA:
                raise config_lib.ConfigError(f"{source}: unknown key {key!r} (known: {', '.join(SEARCH_SCHEMA)})")
            types = SEARCH_SCHEMA[key][0]
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                names = " or ".join({str: "string", dict: "object", list: "list", int: "integer",
                                     _NULL: "null"}[t] for t in types)
                article = "an" if names[0] in "aeiou" else "a"
                raise config_lib.ConfigError(f"{source}: {key} must be {article} {names}, got {value!r}")
            out[key] = value
        for key in REQUIRED:
            if key not in raw:
                raise config_lib.ConfigError(f"{source}: missing key {key!r}")
        checks = {
            "tuner": (out["tuner"] in TUNERS, f"must be one of {', '.join(TUNERS)}"),
            "objective": (out["objective"] in OBJECTIVES, f"must be one of {', '.join(OBJECTIVES)}"),
            "objective_predictor": (out["objective_predictor"] in _scorable(),
                                    f"must be one of {', '.join(_scorable())}"),
            "objective_volumes": (out["objective_volumes"] > 0, "must be > 0"),
            "max_trials": (out["max_trials"] is None or out["max_trials"] > 0, "must be > 0"),
            "epochs": (out["epochs"] is None or out["epochs"] > 0, "must be > 0"),
            "hyperband_factor": (out["hyperband_factor"] >= 2, "must be >= 2"),
            "set": (all(isinstance(v, str) for v in out["set"]), "must be a list of KEY=VALUE strings"),
        }
        for key, (ok, reason) in checks.items():
            if not ok:
                raise config_lib.ConfigError(f"{source}: {key} {reason}, got {out[key]!r}")
        grids = out["space"] if isinstance(out["space"], list) else [out["space"]]
        for i, grid in enumerate(grids):
            where = f"space[{i}]" if isinstance(out["space"], list) else "space"
            if not isinstance(grid, dict) or not grid:
                raise config_lib.ConfigError(f"{source}: {where} must be a non-empty object of KEY: [values]")
            for key, values in grid.items():
                if not _known_key(key):
                    raise config_lib.ConfigError(f"{source}: {where}: unknown run-config key {key!r}")
                if key in ("name", "train.epochs") and out["tuner"] == "hyperband":
                    raise config_lib.ConfigError(f"{source}: {where}: {key} cannot be searched with hyperband")
                if key == "name":
                    raise config_lib.ConfigError(f"{source}: {where}: 'name' cannot be searched")
                if not isinstance(values, list) or not values:
                    raise config_lib.ConfigError(f"{source}: {where}.{key} must be a non-empty list of values, "
                                                 f"got {values!r}")
        return out

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
        import keras_tuner as kt

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

    def objective(self):
        import keras_tuner as kt

        name, direction = OBJECTIVES[self.objective_key]
        return kt.Objective(name, direction)

    def describe(self) -> dict:
        """What is saved as ``<search_dir>/search.json`` (a resumed search must match it)."""
        return {"source": self.source, "base": self.base, "points": self.points, "tuner": self.tuner,
                "objective": self.objective_key, "objective_predictor": self.objective_predictor,
                "objective_volumes": self.objective_volumes, "objective_split": self.objective_split,
                "max_trials": self.max_trials, "hyperband_factor": self.hyperband_factor}


def _scorable():
    from tfvae.predictors import ALL_PREDICTORS

    return [p for p in ALL_PREDICTORS if p != "ensemble"]


def _known_key(dotted: str) -> bool:
    node: Any = config_lib.SCHEMA
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return not isinstance(node, dict)


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
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise config_lib.ConfigError(f"{path}: search config not found") from None
    except json.JSONDecodeError as e:
        raise config_lib.ConfigError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    return Search(raw, path, os.path.dirname(os.path.abspath(path)), overrides)


# --- the supervised objective --------------------------------------------------------------------
def labelled_auroc(model, config: dict, predictor: str, examples, n_volumes: int) -> float:
    """Pixel AUROC of ``predictor`` over the first ``n_volumes`` volumes of ``examples`` (all
    pixels, labels = seg > 0), with the code ``evaluate.py`` uses. Uses labels."""
    from tfvae import evaluation, metrics

    from tfvae import data

    scorer = evaluation.Scorer(model, config, [predictor])
    # what the map needs from healthy validation slices (recommended settings, Combi's KL range)
    scorer.fit(data.load_split(config["data"], config["data"]["validation_split"]))
    hist = metrics.PixelHistogram(bits=evaluation.HISTOGRAM_BITS)
    for i, volume in enumerate(evaluation.volumes(examples)):
        if i >= n_volumes:
            break
        hist.update(scorer(volume.image, volume.brain_mask)[predictor], volume.label)
    return float(hist.auroc())


def _auroc_callback_class():
    import keras
    import tensorflow as tf

    class LabelledAUROC(keras.callbacks.Callback):
        """At the end of training: ``labelled_auroc`` of the trained model, kept as ``value`` and
        logged to TensorBoard (``<log_dir>`` / ``epoch_auroc``) at the last epoch."""

        def __init__(self, config, predictor, examples, n_volumes, log_dir):
            super().__init__()
            self.config, self.predictor, self.examples, self.n_volumes = config, predictor, examples, n_volumes
            self.log_dir = log_dir
            self.value = None
            self.epoch = 0

        def on_epoch_end(self, epoch, logs=None):
            self.epoch = epoch + 1

        def on_train_end(self, logs=None):
            self.value = labelled_auroc(self.model, self.config, self.predictor, self.examples, self.n_volumes)
            writer = tf.summary.create_file_writer(self.log_dir)
            with writer.as_default(step=self.epoch or self.config["train"]["epochs"]):
                tf.summary.scalar("epoch_auroc", self.value)
            writer.flush()

    return LabelledAUROC


# --- the HyperModel and the tuners ---------------------------------------------------------------
def _last_val_loss(run_dir: str) -> float:
    with open(Run(run_dir).history_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise RuntimeError(f"{run_dir}: history.csv is empty")
    return float(rows[-1]["val_loss"])


def make_hypermodel(search: Search, search_dir: str, verbose=0):
    import keras_tuner as kt

    from tfvae import data, training

    class VAEHyperModel(kt.HyperModel):
        """Builds the BetaVAE of a trial from the base config and the trial's hyperparameters; its
        ``fit`` trains the trial as a run directory ``<search_dir>/trials/<trial_id>`` and returns
        the objective."""

        def build(self, hp):
            return training.build_model(search.trial_config(hp))

        def fit(self, hp, model, trial_id: str, epochs: int | None = None, previous: str | None = None):
            run_dir = trial_dir(search_dir, trial_id)
            config = search.trial_config(hp, trial_id, epochs)
            if previous and not Run(run_dir).is_run:
                # Hyperband: continue the trial promoted from the previous round
                shutil.copytree(trial_dir(search_dir, previous), run_dir)
                saved_path = Run(run_dir).config_path
                config_lib.save(config_lib.load(saved_path) | {"name": config["name"]}, saved_path)
                if os.path.exists(os.path.join(run_dir, "objective.json")):
                    os.remove(os.path.join(run_dir, "objective.json"))
            config = Run.create(run_dir, config, resume=Run(run_dir).is_run).config()
            extra = []
            if search.objective_key == "auroc":
                d = config["data"]
                test_data = data.test_data_config(d)
                examples = data.load_split(test_data, search.objective_split or d["test_split"])
                extra.append(_auroc_callback_class()(config, search.objective_predictor, examples,
                                                     search.objective_volumes,
                                                     Run(run_dir).path("logs", "validation")))
            training.train(config, run_dir, extra_callbacks=extra, verbose=verbose)
            metrics = {"val_loss": _last_val_loss(run_dir)}
            if extra:
                metrics["val_auroc"] = extra[0].value
            with open(os.path.join(run_dir, "objective.json"), "w") as f:
                json.dump({"trial_id": trial_id, **metrics, "values": search.point(hp),
                           "tuner_id": os.environ.get("KERASTUNER_TUNER_ID", "tuner0")}, f, indent=2)
            return metrics

    return VAEHyperModel()


def trial_dir(search_dir: str, trial_id: str) -> str:
    return os.path.join(search_dir, "trials", str(trial_id))


def make_tuner(search: Search, search_dir: str, verbose=0):
    """The Keras Tuner tuner of ``search``, its state in ``<search_dir>/kt`` (reloaded when there)."""
    import keras_tuner as kt

    hypermodel = make_hypermodel(search, search_dir, verbose)

    class _Trials:
        def run_trial(self, trial, *args, **kwargs):
            hp = trial.hyperparameters
            values = hp.values
            model = None  # trials train through training.train, which builds its own model
            return self.hypermodel.fit(hp, model, trial_id=trial.trial_id, epochs=values.get("tuner/epochs"),
                                       previous=values.get("tuner/trial_id"))

    classes = {"grid": kt.GridSearch, "random": kt.RandomSearch, "bayesian": kt.BayesianOptimization,
               "hyperband": kt.Hyperband}
    tuner_class = type(f"VAE{classes[search.tuner].__name__}", (_Trials, classes[search.tuner]), {})
    common = dict(hypermodel=hypermodel, objective=search.objective(), hyperparameters=search.hyperparameters(),
                  tune_new_entries=False, seed=search.base["seed"], directory=search_dir, project_name="kt",
                  overwrite=False)
    if search.tuner == "hyperband":
        return tuner_class(max_epochs=search.epochs, factor=search.hyperband_factor, **common)
    return tuner_class(max_trials=search.max_trials or len(search.points), **common)


def is_worker() -> bool:
    from keras_tuner.src.distribute import utils as dist_utils

    return dist_utils.has_chief_oracle() and not dist_utils.is_chief_oracle()


def is_chief() -> bool:
    from keras_tuner.src.distribute import utils as dist_utils

    return dist_utils.is_chief_oracle()


class SearchDirError(ValueError):
    pass


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
                raise SearchDirError(f"{search_dir} holds another search (differs in {', '.join(keys)}); pass "
                                     "--overwrite to replace it or --dir to search elsewhere")
            return True
    os.makedirs(search_dir, exist_ok=True)
    partial = f"{marker}.{os.getpid()}.tmp"
    with open(partial, "w") as f:
        json.dump(described, f, indent=2)
    os.replace(partial, marker)  # atomic: a worker starting at the same time sees all of it or nothing
    return False


def export_best(tuner, search: Search, search_dir: str) -> dict | None:
    """Copy the best finished trial's run directory to ``<search_dir>/best`` and return a summary."""
    trials = tuner.oracle.get_best_trials(1)
    if not trials:
        return None
    best = trials[0]
    source = trial_dir(search_dir, best.trial_id)
    target = os.path.join(search_dir, "best")
    if os.path.isdir(target):
        shutil.rmtree(target)
    shutil.copytree(source, target)
    name, _ = OBJECTIVES[search.objective_key]
    summary = {"trial_id": best.trial_id, "objective": name, "score": best.score,
               "values": search.point(best.hyperparameters), "run_dir": source}
    with open(os.path.join(target, "best_trial.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def summary_rows(tuner, search: Search) -> list[dict]:
    """Every finished trial: id, values, val_loss, val_auroc (when measured), status."""
    rows = []
    for trial in tuner.oracle.trials.values():
        metrics = {}
        for name in ("val_loss", "val_auroc"):
            if trial.metrics.exists(name):
                metrics[name] = trial.metrics.get_last_value(name)
        rows.append({"trial_id": trial.trial_id, "status": str(trial.status), **search.point(trial.hyperparameters),
                     **metrics, "score": trial.score})
    return sorted(rows, key=lambda r: r["trial_id"])
