"""``Run``: a run directory, and every job on it -- train, evaluate, calibrate, localize -- from Python.

    import tfvae
    run = tfvae.Run.create("runs/demo", tfvae.config.load("configs/quickstart.json"))
    run.train()
    results = run.evaluate()
    run.calibrate(["healthy_scans/"], name="mysite")        # optional: thresholds from your own healthy scans
    found = run.localize("scan_t2.nii.gz", fpr=0.01)      # maps in the scan's own grid
    found.components                                     # one row per connected finding

The layout of a run directory, the marker, folder swaps and the run's lock are ``tfvae.utils.rundir``
(a layer that imports no job); ``Run`` is the face on top of it that calls every job.

The scripts (``scripts/*.py``) are this class's command-line face: they parse arguments, call it
and print a summary.

Nothing a user made is deleted. Folders tfvae makes carry a marker file (``.tfvae``: kind and
version); a folder without it is never deleted, whatever ``overwrite`` says. ``Run.create(...,
overwrite=True)`` moves the previous run aside (``.<name>.tfvae-replaced``, a sibling) and deletes it
only once the new run has trained (a failure puts it back; after an interruption it stays aside, and
a later ``overwrite`` replaces the interrupted run, not it). An evaluation is written into a
temporary sibling and renamed into place when complete, the previous one moved aside and deleted
only then; a temporary sibling left by a kill is named in the error and cleared by ``overwrite``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os

from tfvae import config as config_lib
from tfvae.utils import files
from tfvae.utils.console import option
from tfvae.utils.rundir import (BACKUP_DIR, CHECKPOINTS, CHECKPOINTS_DIR, CONFIG_FILE, EVAL_DIR, HISTORY_FILE,  # noqa: F401
                          LOGS_DIR, MARKER_FILE, MARKER_VERSION, MODEL_FILES, RESULTS_FILE, RESUMABLE_KEYS,
                          THRESHOLDS_FILE, RunDir, RunDirError, RunLockError, delete_whole, is_ours, lock, mark,
                          marker, remove_ours, sibling, swap_in)


def _holding(job: str):
    """A ``Run`` method that holds the run's lock for ``job`` while it runs (``Run.lock``)."""
    def wrap(method):
        @functools.wraps(method)
        def locked(self, *args, **kwargs):
            from tfvae.utils.console import quiet_tensorflow

            quiet_tensorflow()  # a notebook as quiet as the scripts
            with self.lock(job, self.config() if self.is_run or self._config is not None else None):
                return method(self, *args, **kwargs)
        return locked
    return wrap


class Run(RunDir):
    """A run directory (its layout: ``tfvae.utils.rundir``) and every job on it."""

    def __init__(self, run_dir: str | os.PathLike):
        super().__init__(run_dir)
        self.restored_previous = False  # set by train(): a failed --overwrite put the previous run back
        self._replacing = False  # set by create(overwrite=True): the previous run waits aside
        self._localizers: dict = {}  # localize(): the Localizer of the latest settings, reused
        self._digests: dict = {}  # model(): the SHA-256 of the bytes each checkpoint was loaded from
        self._config: dict | None = None  # create() on a non-chief worker: the config, not written here

    def __repr__(self) -> str:
        return f"Run({self.dir!r})"

    def lock(self, job: str, config: dict | None = None):
        """``rundir.lock`` on this run for ``job`` (a context manager): one job at a time. A
        non-chief worker of a multi-worker training (``TF_CONFIG``, or a Slurm rank other than 0;
        ``_follows``) writes nothing here and takes no ``train`` lock (the chief holds it for the
        cluster); every other job locks on every process."""
        if job == "train" and _follows(config):
            return contextlib.nullcontext()
        return lock(self.dir, job)

    # --- config and model --------------------------------------------------------------------------
    def config(self, overrides=()) -> dict:
        """The run's saved config, with ``KEY=VALUE`` overrides (validated); on a non-chief worker of a
        multi-worker training, the config ``create`` was given (the chief saves it)."""
        if self._config is not None:
            return config_lib.resolve(self._config, list(overrides)) if overrides else self._config
        if not self.is_run:
            raise RunDirError(f"{self.dir}: not a tfvae run directory (no {CONFIG_FILE})")
        return config_lib.load(self.config_path, overrides)

    def model(self, checkpoint: str = "final"):
        """The saved model (``checkpoint``: final, best or last), its layers in float32. Its file is
        read once: the model is loaded from those bytes and their SHA-256 kept (``model_digest``), so
        thresholds are keyed by the model that made them even if the file changes meanwhile. A model
        whose architecture is not the run config's (latent size, image size, filters) is refused."""
        import hashlib
        import tempfile

        from tfvae.utils.console import quiet_tensorflow

        quiet_tensorflow()
        from tfvae.model import networks
        from tfvae.model.vae import load

        path = self.trained_model_path(checkpoint)
        with open(path, "rb") as f:
            blob = f.read()
        with tempfile.TemporaryDirectory(prefix="tfvae-model-") as folder:
            copy = os.path.join(folder, "model.keras")  # Keras loads from a path: these very bytes
            with open(copy, "wb") as f:
                f.write(blob)
            try:
                model = load(copy)
            except Exception as e:  # Keras reports a truncated zip as "File not found", a bad member as BadZipFile
                reason = " ".join(str(e).split())[:200]
                raise RunDirError(f"{path}: cannot load the model (corrupt or truncated file? "
                                  f"{type(e).__name__}: {reason})") from None
        if self.is_run:
            config = self.config()
            expected = {"latent size": config["model"]["latent_dim"], "image size": config["data"]["image_size"],
                        "filters": list(networks.resolve_filters(config["data"]["image_size"],
                                                                 config["model"]["filters"]))}
            found = {"latent size": model.latent_dim, "image size": model.image_size, "filters": list(model.filters)}
            wrong = [f"{k} {found[k]} (config: {expected[k]})" for k in expected if found[k] != expected[k]]
            if wrong:
                raise RunDirError(f"{path}: this model is not the run's: its {', '.join(wrong)}; put the run's own "
                                  "model back, or train the run again")
        self._digests[checkpoint] = hashlib.sha256(blob).hexdigest()
        return model

    def model_digest(self, checkpoint: str = "final") -> str:
        """SHA-256 of the model file's content: of the bytes ``model`` loaded when it did, else read now."""
        from tfvae.thresholds import calibration

        if checkpoint not in self._digests:
            return calibration.file_digest(self.trained_model_path(checkpoint))
        return self._digests[checkpoint]

    # --- jobs --------------------------------------------------------------------------------------
    @classmethod
    def create(cls, run_dir, config: dict | None, *, resume: bool = False, overwrite: bool = False,
               overrides=()) -> "Run":
        """Create (or reopen with ``resume``, or replace with ``overwrite``) a run directory and save
        the config it trains with. A new run saves ``config``; ``resume`` continues with ``config``
        if given, else the saved one, changed by ``overrides`` (only ``train.*`` keys may differ:
        the model and its data are the run's); ``overwrite`` deletes a previous run first, and only
        a folder that is a run. On a non-chief worker of a multi-worker training (``TF_CONFIG``, or
        a Slurm rank other than 0) nothing is written, moved or locked: the chief, started with the
        same arguments, does it; the worker keeps the config in memory (``config()``), checks a
        resume as the chief does, and does not fail on the chief's run, made before or after it.
        Raises ``RunDirError`` / ``RunLockError`` (what was wrong, and where)."""
        run = cls(run_dir)
        if resume and overwrite:
            raise RunDirError(f"{option('--resume', 'resume=True')} and {option('--overwrite', 'overwrite=True')} "
                              "exclude each other")
        # the config this run will train with (a resume's with its overrides): it says who writes the run
        known = (cls._resumed_config(run, config, overrides) if resume and run.is_run
                 else config if config is not None else run.config() if run.is_run else None)
        if _follows(known):
            # a non-chief worker of a multi-worker training: the chief (started with the same command)
            # creates, resumes or replaces the run; this worker refuses what the chief refuses where it
            # can tell, so that no worker is left waiting for a chief that stopped, and writes nothing
            if not resume and os.path.exists(run.dir) and os.listdir(run.dir):
                cls._refuse_existing(run, overwrite, chiefs_config=known)
            run._config = cls._resumed_config(run, config, overrides) if resume else known
            return run
        with run.lock("train", known):
            return cls._create(run, config, resume=resume, overwrite=overwrite, overrides=overrides)

    @classmethod
    def check_new(cls, run_dir: str, config: dict, *, overwrite: bool = False) -> None:
        """What ``create`` refuses for a new run of ``config`` in ``run_dir`` because of what the folder
        holds (``RunDirError``), checked before TensorFlow loads: a command says it at once."""
        run = cls(run_dir)
        if os.path.isdir(run.dir) and os.listdir(run.dir):
            cls._refuse_existing(run, overwrite, chiefs_config=config if _follows(config) else None)

    @staticmethod
    def _refuse_existing(run: "Run", overwrite: bool, chiefs_config: dict | None = None) -> None:
        """What a new run refuses in a folder that is not empty: without ``overwrite``, anything --
        but, given ``chiefs_config`` (on a non-chief worker), the chief's own new run of that config,
        which may already be there (a run marker and that config, or only the marker); with
        ``overwrite``, a folder that is not a run."""
        if not overwrite:
            chiefs_new_run = chiefs_config is not None and set(os.listdir(run.dir)) <= {MARKER_FILE, CONFIG_FILE} \
                and is_ours(run.dir, "run") and (not run.is_run or config_lib.load(run.config_path) == chiefs_config)
            if chiefs_new_run:
                return
            raise RunDirError(f"{run.dir} already exists and is not empty; pass {option('--resume', 'resume=True')} "
                              f"to continue that run or {option('--overwrite', 'overwrite=True')} to replace it")
        if not is_ours(run.dir, "run"):
            raise RunDirError(f"{run.dir} is not a tfvae run directory (no {MARKER_FILE} marker); refusing to "
                              f"delete it (delete it yourself or choose another {option('--run-dir', 'run_dir')})")

    @staticmethod
    def _resumed_config(run: "Run", config: dict | None, overrides) -> dict:
        """The config a resumed run continues with: ``config`` (else the saved one) changed by
        ``overrides``, where only ``train.*`` keys may differ from the saved config."""
        if not run.is_run:
            raise RunDirError(f"{run.dir}: cannot resume, no {CONFIG_FILE} there (start the run without "
                              f"{option('--resume', 'resume=True')})")
        saved = config_lib.load(run.config_path)
        config = config_lib.resolve(config if config is not None else saved, overrides, source=run.config_path)
        before, after = config_lib.flatten(saved), config_lib.flatten(config)
        changed = [k for k in after if not k.startswith("train.") and k not in RESUMABLE_KEYS
                   and before.get(k) != after[k]]
        if changed:
            raise RunDirError(f"{run.dir}: resuming cannot change {', '.join(changed)} (only train.* keys); "
                              "start a new run instead")
        return config

    @classmethod
    def _create(cls, run: "Run", config: dict | None, *, resume: bool, overwrite: bool, overrides) -> "Run":
        is_run = run.is_run
        if resume:
            config = cls._resumed_config(run, config, overrides)
        elif os.path.exists(run.dir) and os.listdir(run.dir):
            cls._refuse_existing(run, overwrite)
            aside = sibling(run.dir, "replaced")
            if os.path.exists(aside) and not os.path.isfile(run.model_path("final")):
                # an earlier --overwrite was interrupted: the aside folder holds the run it was replacing
                # (the one the user had) and run.dir that earlier attempt's partial run; the partial run
                # goes, the user's run stays aside until this one has trained
                remove_ours(run.dir, "run")
            else:
                if os.path.exists(aside):  # the earlier replacement had finished; only its cleanup was cut short
                    remove_ours(aside, "run")
                os.rename(run.dir, aside)  # kept until the new run has trained
            run._replacing = True
        if config is None:
            raise RunDirError(f"{run.dir}: a config is needed to start a new run")
        os.makedirs(run.dir, exist_ok=True)
        if not resume or marker(run.dir) is None:
            mark(run.dir, "run")
        config_lib.save(config, run.config_path)
        return run

    @property
    def replaced(self) -> str:
        """Where ``create(overwrite=True)`` keeps the previous run until the new one has trained."""
        return sibling(self.dir, "replaced")

    @_holding("train")
    def train(self, *, verbose="auto", extra_callbacks=()):
        """Train (continuing from the backup when there is one); returns Keras's History. With
        ``verbose`` (progress shown) it ends with a line saying where the run is and its size."""
        from tfvae.runs import training

        self.restored_previous = False
        try:
            history = training.train(self.config(), self.dir, verbose=verbose, extra_callbacks=extra_callbacks)
        except Exception:  # not KeyboardInterrupt: an interrupted run stays, to be resumed or overwritten
            # only the --overwrite that moved the previous run aside puts it back on failure; a --resume
            # of an interrupted replacement keeps what it trained (its checkpoints), the previous run aside
            if self._replacing and os.path.exists(self.replaced) and not os.path.isfile(self.model_path("final")):
                remove_ours(self.dir, "run")  # the new run failed: the previous one comes back
                os.rename(self.replaced, self.dir)
                self.restored_previous = True
            raise
        if self._config is None and os.path.exists(self.replaced):  # the chief's to remove, not a follower's
            remove_ours(self.replaced, "run")
        if self._config is None:  # what localize needs from the training data, kept in the run (the chief's)
            from tfvae.evaluation import localization

            localization.training_scans(self, self.config())
        if verbose:
            print(f"run: {os.path.abspath(self.dir)} ({files.disk_use(self.dir)})")
        return history

    @_holding("evaluate")
    def evaluate(self, *, overrides=(), config: dict | None = None, checkpoint: str = "final",
                 out_dir: str | None = None, overwrite: bool = False, verbose: bool = True,
                 say_where: bool = True) -> dict:
        """Score the test split with every predictor of the config (``evaluate.predictors``; e.g.
        ``overrides=['evaluate.predictors=["recommended", "intensity"]']``) and write
        ``eval/`` (or ``out_dir``): results, maps, figures (``config``: a whole config instead of
        the run's with ``overrides``). Its thresholds go to ``thresholds.json``. An existing
        evaluation folder is replaced only with ``overwrite``, and only when complete. Returns the
        results; with ``verbose`` and ``say_where`` it ends with a line saying where they were written
        and their size (the command says it after its table)."""
        from tfvae.data import pipelines as data
        from tfvae.evaluation import evaluate as evaluation

        config = config or self.config(overrides)
        out_dir, partial = self.evaluation_target(out_dir, overwrite, repair=True)
        data.check_lesions(data.test_data_config(config["data"]), config["data"]["test_split"],  # before scoring
                           exclude=config["evaluate"]["exclude_volumes"])
        try:
            with files.naming(out_dir):  # a writer's error that names no file (a full disk) names the evaluation
                mark(partial, "evaluation")
                results = evaluation.evaluate_run(self, config, partial, checkpoint=checkpoint, verbose=verbose)[0]
                swap_in(partial, out_dir)  # a previous out_dir is ours: checked above (or empty)
            if verbose and say_where:
                print(f"results, maps and figures: {out_dir} ({files.disk_use(out_dir)})")
        except (Exception, KeyboardInterrupt) as e:  # refused, failed or Ctrl-C: our temporary folder goes (a kill
            # runs no cleanup: its folder is named by the next evaluation and cleared by overwrite)
            _discard_partial(partial)
            if isinstance(e, OSError) and e.filename and os.fspath(e.filename).startswith(partial + os.sep):
                e.filename = out_dir + os.fspath(e.filename)[len(partial):]  # the name it would have had
            raise
        return results

    def evaluation_target(self, out_dir: str | None, overwrite: bool, *, repair: bool = False) -> tuple[str, str]:
        """``(out_dir, its temporary sibling)`` of an evaluation, checked before anything is scored: a
        file, an existing evaluation (without ``overwrite``), a folder that is not ours, or a partial
        evaluation left by a kill (without ``overwrite``) is a one-line ``RunDirError``. ``repair``
        (the evaluation itself) finishes a swap a kill interrupted and clears a partial one."""
        out_dir = os.path.abspath(out_dir or self.eval_dir)
        other = option("--out DIR", "out_dir=...")
        if os.path.exists(out_dir) and not os.path.isdir(out_dir):
            raise RunDirError(f"{out_dir} is a file, not a folder; choose another folder ({other})")
        partial, aside = sibling(out_dir, "partial"), sibling(out_dir, "replaced")
        if repair and os.path.exists(aside):  # a kill during an earlier swap
            if os.path.exists(out_dir):
                remove_ours(aside, "evaluation")  # the swap had finished: the aside one was replaced
            else:
                os.rename(aside, out_dir)  # it had not: the previous evaluation goes back
        if os.path.exists(partial):  # left by an interrupted evaluation
            if not overwrite:
                raise RunDirError(f"{partial} holds an evaluation that was killed before it finished; pass "
                                  f"{option('--overwrite', 'overwrite=True')} to clear it")
            if repair:
                remove_ours(partial, "evaluation")
        if os.path.exists(out_dir) and os.listdir(out_dir):
            if not overwrite:
                raise RunDirError(f"{out_dir} already exists; pass {option('--overwrite', 'overwrite=True')} to "
                                  f"replace it, or evaluate into another folder ({other})")
            if not is_ours(out_dir, "evaluation"):
                raise RunDirError(f"{out_dir} is not a tfvae evaluation (no {MARKER_FILE} marker); refusing to "
                                  "replace it")
        return out_dir, partial

    def finished_evaluation(self, config: dict, out_dir: str | None = None) -> dict | None:
        """The results in ``out_dir`` (default ``eval/``; a name is taken inside the run) when that
        evaluation is complete and was made with exactly ``config``, else None (nothing computed)."""
        folder = os.path.join(self.dir, out_dir or EVAL_DIR)
        results, saved = os.path.join(folder, RESULTS_FILE), os.path.join(folder, CONFIG_FILE)
        if os.path.isfile(results) and os.path.isfile(saved) and config_lib.load(saved) == config:
            with open(results) as f:
                return json.load(f)
        return None

    def scorer(self, predictors, *, config: dict | None = None, checkpoint: str = "final"):
        """A fitted ``scoring.Scorer`` for ``predictors``: what the maps need from healthy validation
        volumes is read from ``thresholds.json`` when a calibration of the same checkpoint and map
        settings stored it, else computed (and stored by ``threshold``)."""
        from tfvae.thresholds import calibration
        from tfvae.maps.scoring import Scorer

        config = config or self.config()
        scorer = Scorer(self.model(checkpoint), config, predictors)
        store = calibration.ThresholdStore(self.thresholds_path)
        digest = self.model_digest(checkpoint)
        stored: dict = {}
        for p in predictors:
            stored.update(store.reference(store.key(digest, p, config)) or {})
        needed = [p for p in predictors if p in ("recommended", "intensity_filtered", "combi")]
        if all(set(_reference_keys(p, config)) <= set(stored) for p in needed):
            scorer.fit(None, stored=stored)  # nothing to compute: no healthy scan is read
        else:
            scorer.fit(self.healthy_split(config), stored=stored, verbose=True)  # each stage announced
        return scorer

    def healthy_split(self, config: dict | None = None):
        """Where the run takes healthy statistics from (thresholds, the recommended map's sizes):
        the validation split of its training data, or the user's own healthy scans of the
        calibration ``threshold.calibration`` names (``tfvae.thresholds.healthy_scans``, read again and checked
        against their fingerprint)."""
        from tfvae.thresholds import calibration, healthy_scans
        from tfvae.data import pipelines as data

        config = config or self.config()
        name = config["threshold"]["calibration"]
        if not name:
            return data.load_split(config["data"], config["data"]["validation_split"])
        record = calibration.ThresholdStore(self.thresholds_path).healthy_set(name)
        return healthy_scans.load(record, config, data.builder(config["data"]).builder_config, name=name)

    @_holding("calibrate")
    def calibrate(self, scans, *, name: str, predictors=None, overrides=(), checkpoint: str = "final",
                  force: bool = False) -> dict:
        """Calibrate on healthy scans of the user's own scanner (NIfTI files or folders; a scan's
        ``<scan>_mask`` beside it is its brain mask): the thresholds of ``predictors`` (default:
        every map localize can make) at every rate a per-scan threshold needs, and the recommended
        map's filter sizes, chosen on these scans with synthetic lesions. Stored in
        ``thresholds.json`` under ``name`` (a set calibrated again under the same name replaces
        it); used by evaluate and localize with ``threshold.calibration=name`` (``--calibration``).

        The set is screened first (``healthy_scans.screen``, 2 scans or more): each scan's map --
        the recommended map when it is calibrated, else the first of ``predictors`` -- is compared
        with the other scans', and a scan that looks lesioned or unlike the rest is left out; the
        thresholds and filter sizes are then calibrated on the scans kept, from scratch (what
        calibrating without it gives). Scans of another voxel size or contrast than the set's are
        warned about. Returns the set's record (``healthy_scans.record``: ``scans`` kept,
        ``left_out`` and ``warnings``, each with its ``reason`` and ``advice``) and each
        predictor's thresholds at 1 % and 5 % FPR. Errors (one line): an unreadable scan, a
        ``calibration.CalibrationError`` when too few scans would be left (``healthy_scans.MIN_KEPT``,
        or more than half the set left out)."""
        from tfvae import config as config_lib
        from tfvae.thresholds import calibration, healthy_scans
        from tfvae.data import pipelines as data
        from tfvae.config.predictor_names import LOCALIZABLE
        from tfvae.data.scans import find as find_scans

        config_lib.check_value("threshold.calibration", name, option("--name", "name"))
        config = config_lib.resolve(self.config(overrides), [f"threshold.calibration={name}"])
        predictors = list(predictors or LOCALIZABLE)
        unknown = [p for p in predictors if p not in LOCALIZABLE]
        if unknown:
            raise ValueError(f"predictor(s) {', '.join(unknown)}: choose from {', '.join(LOCALIZABLE)}")
        pairs = find_scans(scans)
        volumes = healthy_scans.read(pairs, config, data.builder(config["data"]).builder_config, force=force)
        screening, scorer = self._screen(pairs, volumes, predictors, config, checkpoint, name)
        if screening.left_out and scorer is not None:  # its fit saw the scans left out: fit again without them
            scorer.release()
            scorer = None
        kept = [pairs[i] for i in screening.kept]
        healthy = [volumes[i] for i in screening.kept]
        store = calibration.ThresholdStore(self.thresholds_path)
        store.put_healthy_set(name, healthy_scans.record(kept, healthy, screening))
        try:
            references = self._calibrate(predictors, config, checkpoint, healthy=healthy, scorer=scorer)
        finally:
            if scorer is not None:
                scorer.release()
        return {"name": name, **store.healthy_set(name),
                "thresholds": {p: {f"{f:g}": r.threshold(f) for f in (0.01, 0.05)} for p, r in references.items()}}

    def _screen(self, pairs, volumes, predictors, config: dict, checkpoint: str, name: str):
        """``(healthy_scans.Screening, scorer)``: the healthy set screened with the map the thresholds
        of ``predictors`` are calibrated on (post-processed when the config post-processes), scored by
        a ``Scorer`` of every predictor fitted on the whole set -- returned, to calibrate with when no
        scan is left out (its network outputs kept); None below 2 scans (nothing to compare)."""
        import numpy as np

        from tfvae.thresholds import healthy_scans
        from tfvae.maps import postprocessing
        from tfvae.maps.scoring import Scorer, variants

        if len(volumes) < 2:
            return healthy_scans.screen(pairs, volumes, None, predictor=None, name=name), None
        predictor = "recommended" if "recommended" in predictors else predictors[0]
        scorer = Scorer(self.model(checkpoint), config, predictors)
        scorer.fit(volumes, verbose=True)
        variant = "postprocessed" if postprocessing.enabled(config["postprocess"]) else "raw"
        maps = []
        for volume in volumes:
            volume.maps = scorer(volume.image, volume.brain_mask, volume.geometry.voxel_mm())
            score = variants(volume, [predictor], config["postprocess"])[variant][predictor][..., 0]
            maps.append(score[np.asarray(volume.brain_mask)[..., 0] > 0])  # the brain's scores, as calibrated
            volume.maps = {}
        return healthy_scans.screen(pairs, volumes, maps, predictor=predictor, name=name), scorer

    def _calibrate(self, predictors, config: dict, checkpoint: str, *, rates=(), scorer=None, healthy=None) -> dict:
        """``{predictor: scan_threshold.HealthyReference}``: the stored thresholds of each predictor at
        ``scan_threshold.REFERENCE_FPRS``, ``calibration.FPRS`` and ``rates``; those missing are
        calibrated now (under the run's lock) in one pass over the healthy split (``healthy_split``,
        or the volumes ``healthy``) and stored -- a stored threshold is never replaced."""
        from tfvae.thresholds import calibration, scan_threshold
        from tfvae.maps import postprocessing
        from tfvae.maps.scoring import Scorer

        rates = set(scan_threshold.REFERENCE_FPRS) | set(calibration.FPRS.values()) | {float(r) for r in rates}
        digest = self.model_digest(checkpoint)

        def stored_now():
            store = calibration.ThresholdStore(self.thresholds_path)
            return store, {p: store.thresholds(store.key(digest, p, config)) for p in predictors}

        store, stored = stored_now()
        if all(rates <= set(stored[p]) for p in predictors):
            return {p: scan_threshold.HealthyReference(stored[p]) for p in predictors}
        with self.lock("calibrate"):
            store, stored = stored_now()  # read again under the lock
            missing = [p for p in predictors if not rates <= set(stored[p])]
            healthy = healthy if healthy is not None else self.healthy_split(config)
            if scorer is None:
                scorer = Scorer(self.model(checkpoint), config, missing)
                scorer.fit(healthy, stored={k: v for p in missing for k, v in
                                            (store.reference(store.key(digest, p, config)) or {}).items()},
                           verbose=True)
            by_variant = calibration.calibrate(scorer, healthy, missing, config["postprocess"], fprs=sorted(rates),
                                               verbose=True)
            scorer.release()
            variant = "postprocessed" if postprocessing.enabled(config["postprocess"]) else "raw"
            for p in missing:
                computed = by_variant[variant][p]
                store.put(store.key(digest, p, config), {r: t for r, t in computed.items() if r not in stored[p]},
                          _reference_for(scorer.reference, p, config))
                stored[p] = {**computed, **stored[p]}
        return {p: scan_threshold.HealthyReference(stored[p]) for p in predictors}

    def healthy_reference(self, predictor: str, fpr: float | None = None, *, config: dict | None = None,
                          checkpoint: str = "final", scorer=None):
        """The healthy distribution of ``predictor``'s maps (post-processed when the config
        post-processes) as a ``scan_threshold.HealthyReference``: its thresholds at
        ``scan_threshold.REFERENCE_FPRS`` and ``fpr`` from ``thresholds.json`` (keyed by this
        checkpoint's content, the predictor, the map settings and the healthy set); the rates
        missing there are calibrated now on the healthy split (``healthy_split``) and stored -- a
        stored threshold is never replaced."""
        config = config or self.config()
        return self._calibrate([predictor], config, checkpoint, rates=[fpr] if fpr is not None else [],
                               scorer=scorer)[predictor]

    def threshold(self, predictor: str, fpr: float, *, config: dict | None = None, checkpoint: str = "final",
                  scorer=None) -> float:
        """The threshold of ``predictor`` (post-processed when the config post-processes) that flags
        ``fpr`` of the healthy validation brain pixels: from ``thresholds.json`` when it holds one for
        this checkpoint's content, predictor and map settings, else calibrated now and stored (with
        the rest of the healthy reference, ``healthy_reference``). The threshold each scan is cut at
        moves from it with the scan (``threshold.mode``, ``scan_threshold.for_scan``)."""
        if not 0 < fpr < 1:
            raise ValueError(f"fpr must be between 0 and 1, got {fpr}")
        return self.healthy_reference(predictor, fpr, config=config, checkpoint=checkpoint,
                                      scorer=scorer).threshold(fpr)

    @_holding("export")
    def export(self, out_dir: str, *, checkpoint: str = "final") -> str:
        """The model as a TensorFlow SavedModel with serving signatures (``tfvae.runs.export``)."""
        from tfvae.runs import export

        return export.export(self.model(checkpoint), out_dir,
                             smooth_gradients=self.config()["predictors"]["smooth_gradients"])

    @_holding("localize")
    def localize(self, scan, *, fpr: float = 0.01, predictor: str = "recommended", mask=None, affine=None,
                 overrides=(), checkpoint: str = "final", force: bool = False, preprocess=False,
                 preprocess_dir=None):
        """Anomaly score, calibrated mask and connected findings of one scan (a NIfTI path, or an
        array with ``affine``), in the scan's own grid: a ``localization.Localized`` whose
        ``warnings`` list what differs from the training scans. ``mask``: a brain mask (path or
        array; default: the scan's non-zero voxels). A scan with more than 2 % of its brain outside
        the run's field of view is refused unless ``force``. Calls with the same settings reuse one
        ``localization.Localizer`` (model, threshold, healthy statistics, compiled projection).
        ``preprocess`` (True, or ``head_preprocessing.Settings``): ``scan`` is a raw head (skull on,
        any pose), preprocessed first into ``preprocess_dir`` (a temporary folder when None; reused
        there when made before), maps in its raw grid (``localization.localize_raw``)."""
        from tfvae.evaluation import localization

        config = self.config(overrides)
        def stamp(path):  # a model retrained, or thresholds stored by evaluate since: a new Localizer
            return (os.stat(path).st_mtime_ns, os.stat(path).st_size) if os.path.isfile(path) else None

        key = (json.dumps(config, sort_keys=True), predictor, fpr, checkpoint,
               stamp(self.model_path(checkpoint)), stamp(self.thresholds_path))
        localizer = self._localizers.get(key)
        if localizer is None:
            localizer = localization.Localizer(self, config, predictor=predictor, fpr=fpr, checkpoint=checkpoint)
            self._localizers = {key: localizer}  # the latest settings only: a model stays in memory once
        localizer.force = force
        return localizer(scan, mask=mask, affine=affine, preprocess=preprocess, preprocess_dir=preprocess_dir)


def _discard_partial(partial: str) -> None:
    """Delete the temporary folder of an evaluation that did not finish (ours: it carries the marker;
    a folder without it is left alone); a failure to delete it (the disk it could not write to) is
    not the error to report, and the next evaluation with ``overwrite`` clears what is left."""
    if os.path.exists(partial) and is_ours(partial, "evaluation"):
        with contextlib.suppress(OSError):
            delete_whole(partial)
    elif os.path.isdir(partial) and not os.listdir(partial):
        with contextlib.suppress(OSError):
            os.rmdir(partial)


def _reference_keys(predictor: str, config: dict | None = None) -> tuple:
    """The keys of ``Scorer.reference`` a predictor's maps depend on under ``config`` (the second
    restoration's threshold only where ``recommended.second_restoration`` is on)."""
    from tfvae.maps.scoring import FLAG_KEY

    keys = {"recommended": ("recommended",), "intensity_filtered": ("intensity_filtered",),
            "combi": ("kl_grad_range",)}.get(predictor, ())
    r = (config or {}).get("recommended", {})
    if predictor == "recommended" and r.get("second_restoration") and r.get("restore", True):
        keys += (FLAG_KEY,)
    return keys


def _reference_for(reference: dict, predictor: str, config: dict | None = None) -> dict:
    """The part of ``Scorer.reference`` a predictor's maps depend on (``_reference_keys``)."""
    return {k: reference[k] for k in _reference_keys(predictor, config) if k in reference}


def _follows(config: dict | None) -> bool:
    """Whether this process is a non-chief worker of a multi-worker training of ``config``: it reads
    the run the chief writes, and writes and locks nothing there."""
    return config is not None and config["train"]["distribute"] == "multi_worker" and not _writes_run()


def _writes_run() -> bool:
    """Whether this process is the one of a multi-worker cluster that writes the run (``TF_CONFIG``:
    the ``chief`` task, else worker 0; under Slurm without ``TF_CONFIG``: rank 0, ``SLURM_PROCID``),
    as ``training.is_chief`` decides it -- read from the environment, before TensorFlow starts.
    Without either, every process counts as the writer."""
    if "TF_CONFIG" not in os.environ and "SLURM_JOB_ID" in os.environ:  # training.strategy's Slurm resolver
        return os.environ.get("SLURM_PROCID", "0") == "0"
    try:
        tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    except ValueError:
        return True
    task, cluster = tf_config.get("task", {}), tf_config.get("cluster", {})
    if not task:
        return True
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0 and "chief" not in cluster
