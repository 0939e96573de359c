"""Thresholds calibrated on healthy validation slices (never test labels), and the run's store of
them (``thresholds.json``).

``calibrate`` scores at most ``scoring.MAX_CALIBRATION_SLICES`` healthy validation slices and
returns, per variant (raw / post-processed) and predictor, the thresholds that flag the given
false-positive rates of their brain pixels. ``ThresholdStore`` keeps such thresholds in one small
JSON file per run, each entry keyed by everything it depends on -- the checkpoint file's content
(SHA-256), the predictor, the config sections that shape the maps and the post-processing -- so a
different predictor, post-processing or checkpoint is a new calibration and never a stale threshold.
"""

from __future__ import annotations

import json
import os

import numpy as np

from tfvae import metrics
from tfvae.utils import files
from tfvae.utils.files import file_digest  # noqa: F401 (SHA-256 of a file; kept here for callers)
from tfvae.utils.console import Stage
from tfvae.maps.scoring import FLAG_KEY, MAX_CALIBRATION_SLICES, Scorer, as_volumes, variants

FPRS = {"dice_fpr01": 0.01, "dice_fpr05": 0.05}  # the rates every evaluation reports Dice at
DISPLAY_FPRS = {"display_low": 0.99, "display_high": 0.001}  # a map's colour scale: healthy 1st-99.9th percentile
HISTOGRAM_BITS = 22  # 4M bins per class when the exact mode overflows: ~1e-5 of AUROC, 64 MB each
MAP_SECTIONS = ("predictors", "postprocess", "recommended")  # config sections a map depends on


def calibrate(scorer: Scorer, validation, predictors, settings: dict, ensemble=None,
              fprs=tuple(FPRS.values()), verbose: bool = False) -> dict:
    """``{variant: {predictor: {fpr: threshold}}}``: the thresholds that flag each false-positive
    rate of ``fprs`` of the healthy validation brain pixels (``validation``: the split, or a list of
    healthy ``Volume`` s such as a user's own scans; at most ``MAX_CALIBRATION_SLICES`` slices);
    ``verbose``: announce it and show its progress."""
    hists: dict = {}
    taken = 0
    stage = Stage(f"calibrating the thresholds of {len(predictors)} map(s) on healthy slices", "slice", verbose)
    for volume in as_volumes(validation):
        if taken >= MAX_CALIBRATION_SLICES:
            break
        volume.maps = scorer(volume.image, volume.brain_mask, volume.geometry.voxel_mm())
        if ensemble is not None and "ensemble" in predictors:
            volume.maps["ensemble"] = ensemble.score(volume.maps)
        brain = volume.brain_mask > 0
        for variant, maps in variants(volume, predictors, settings).items():
            for p, score in maps.items():
                hist = hists.setdefault(variant, {}).setdefault(p, metrics.PixelHistogram(bits=HISTOGRAM_BITS))
                hist.update(score, np.zeros_like(volume.label), mask=brain)
        taken += len(volume.image)
        stage.update(taken)
    stage.done()
    return {variant: {p: {float(fpr): h.threshold_at_fpr(fpr) for fpr in fprs} for p, h in by_p.items()}
            for variant, by_p in hists.items()}


HEALTHY_DATA_KEYS = ("name", "config", "image_size", "validation_split")  # which healthy split a calibration saw


def map_settings(config: dict) -> dict:
    """The config values a map's scores and its calibration depend on (beside the model): its
    sections, the clip and the healthy split the thresholds come from."""
    sections = {s: dict(config[s]) for s in MAP_SECTIONS}
    if not sections["recommended"].get("second_restoration", False):  # off (the default): the key of before it
        sections["recommended"].pop("second_restoration", None)
    return {**sections, "data.clip": config["data"].get("clip"),
            **{f"data.{k}": config["data"][k] for k in HEALTHY_DATA_KEYS}}


class CalibrationError(ValueError):
    """A calibration on healthy scans (``threshold.calibration``) is unknown or unusable; one line."""


class ThresholdStore:
    """``thresholds.json`` of a run: calibrations keyed by (checkpoint digest, predictor, map settings
    and, for a calibration on the user's own healthy scans, that set of scans).

    An entry holds ``thresholds`` (FPR as a string -> threshold, for the variant the settings
    select: post-processed when any post-processing is on, else raw) and ``reference`` (what
    ``Scorer.fit`` took from the healthy volumes). ``healthy_sets`` records each named set of
    healthy scans (``tfvae calibrate``): the files and a SHA-256 of their content, which is part of
    the key, so scans changed under the same name are a new calibration. Writes are atomic
    (temporary file, rename)."""

    def __init__(self, path: str):
        self.path = path
        self.entries: list[dict] = []
        self.healthy_sets: dict[str, dict] = {}
        if os.path.isfile(path):
            stored = self._read(path)
            self.entries = stored.get("calibrations", [])
            self.healthy_sets = stored.get("healthy_sets", {})

    @staticmethod
    def _read(path: str) -> dict:
        """The stored calibrations; a file that cannot be read as them (cut short by a copy that
        stopped, edited by hand, not UTF-8) is a one-line ``CalibrationError`` naming it and what to do."""
        from tfvae.utils.console import option

        try:
            with open(path, encoding="utf-8") as f:
                stored = json.load(f)
            problem = None if isinstance(stored, dict) and isinstance(stored.get("calibrations", []), list) \
                and isinstance(stored.get("healthy_sets", {}), dict) else "not the calibrations tfvae writes"
        except json.JSONDecodeError as e:
            problem = f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}; cut short or damaged?)"
        except UnicodeDecodeError as e:
            problem = f"not UTF-8 text (byte {e.start}; damaged?)"
        if problem is None:
            return stored
        calibrate = option("tfvae calibrate --name NAME", "Run.calibrate(name=...)")
        raise CalibrationError(f"{path}: {problem}; it holds only thresholds and calibrations, made again when "
                               f"missing: move it away (or put back a good copy) and run again -- calibrations of "
                               f"your own scans ({calibrate}) must then be made again")

    def key(self, digest: str, predictor: str, config: dict) -> dict:
        """The key of a calibration of the checkpoint with content ``digest``: its predictor, the map
        settings of ``config`` and its healthy set (``threshold.calibration``; none: validation)."""
        key = {"checkpoint_sha256": digest, "predictor": predictor, "settings": map_settings(config)}
        name = config["threshold"]["calibration"]
        if name:
            key["healthy_set"] = {"name": name, "sha256": self.healthy_set(name)["sha256"]}
        return key

    def healthy_set(self, name: str) -> dict:
        """The record of the healthy scans calibrated as ``name``; ``CalibrationError`` if none."""
        if name not in self.healthy_sets:
            known = ", ".join(sorted(self.healthy_sets)) or "none yet"
            raise CalibrationError(f"{self.path}: no calibration named {name!r} (known: {known}); make it with "
                                   f"tfvae calibrate --run-dir RUN --name {name} HEALTHY_SCANS")
        return self.healthy_sets[name]

    def put_healthy_set(self, name: str, record: dict) -> None:
        """Record (or replace) the healthy set ``name``."""
        self.healthy_sets[name] = json.loads(json.dumps(record))
        self.save()

    def find(self, key: dict) -> dict | None:
        return next((e for e in self.entries if e["key"] == json.loads(json.dumps(key))), None)

    def threshold(self, key: dict, fpr: float) -> float | None:
        entry = self.find(key)
        return None if entry is None else entry["thresholds"].get(_fpr_key(fpr))

    def thresholds(self, key: dict) -> dict[float, float]:
        """Every stored threshold of ``key``, by false-positive rate (empty when none)."""
        entry = self.find(key)
        return {} if entry is None else {float(f): float(t) for f, t in entry["thresholds"].items()}

    def reference(self, key: dict) -> dict | None:
        entry = self.find(key)
        return None if entry is None else entry.get("reference")

    def put(self, key: dict, thresholds: dict[float, float], reference: dict | None = None) -> None:
        entry = self.find(key)
        if entry is None:
            entry = {"key": json.loads(json.dumps(key)), "thresholds": {}, "reference": {}}
            self.entries.append(entry)
        entry["thresholds"].update({_fpr_key(f): float(t) for f, t in thresholds.items()})
        if reference:
            entry["reference"] = json.loads(json.dumps(reference))
        self.save()

    def save(self) -> None:
        files.write_json(self.path, {"calibrations": self.entries, "healthy_sets": self.healthy_sets})


def _fpr_key(fpr: float) -> str:
    return f"{float(fpr):g}"


def store_evaluation(run, config: dict, checkpoint: str, results: dict) -> None:
    """The thresholds evaluation calibrated (1 % and 5 % FPR), and what the maps took from the
    validation volumes, into the run's ``thresholds.json`` for localize to use."""
    from tfvae.maps import postprocessing

    store = ThresholdStore(run.thresholds_path)
    digest = run.model_digest(checkpoint)
    pp = postprocessing.enabled(config["postprocess"])
    for predictor, result in results.items():
        if predictor == "ensemble":  # fitted on labelled test volumes: not for new scans
            continue
        source = result.get("postprocessed", {}) if pp else result
        thresholds = {float(rate): t for rate, t in source.get("healthy_reference", {}).items()}
        thresholds.update({fpr: source[f"{key}_threshold"] for key, fpr in FPRS.items() if f"{key}_threshold" in source})
        if not pp and "display_range" in result:  # the top of the colour scale of overlays
            thresholds[DISPLAY_FPRS["display_high"]] = result["display_range"][1]
        reference = {}
        if "settings" in result:  # a filtered map's sizes, with how they were chosen when they were
            reference[predictor] = result.get("selection", result["settings"])
        if "kl_grad_range" in result:
            reference["kl_grad_range"] = result["kl_grad_range"]
        if FLAG_KEY in result:  # the recommended map's second restoration
            reference[FLAG_KEY] = result[FLAG_KEY]
        store.put(store.key(digest, predictor, config), thresholds, reference)
