"""Run configurations: JSON files validated against one schema.

A config file may give any subset of the keys below; the rest take their defaults. An unknown key,
a value of the wrong type or an impossible value is a ``ConfigError`` whose one-line message names
the file and the dotted key. ``--set data.config=tiny train.epochs=2`` style overrides go through
the same validation (values are parsed as JSON when they parse, else taken as strings).

Schema (dotted key: type, default -- meaning):

- ``name``: str, "run" -- a label for the run (TensorBoard hparams, default run directory).
- ``seed``: int, 0 -- seeds weight init, sampling of z, shuffling (0 to 2**31 - 1).
- ``data.name``: str, "brain_phantom" -- TFDS builder (see ``tfvae.data.pipelines.BUILDERS``).
- ``data.config``: str, "default" -- the builder's BuilderConfig.
- ``data.data_dir``: str or null -- where TFDS keeps built datasets (null: TFDS's default).
- ``data.image_size``: int, 64 -- slices are resampled to image_size x image_size (power of 2).
- ``data.train_split`` / ``validation_split`` / ``test_split``: str -- split names.
- ``data.manual_dir``: str or null -- the folder holding data the user downloaded (HCP, BraTS,
  NIfTI scans; a ``<dataset>/`` subfolder of it is used when present, so one folder can hold
  ``hcp_t2/`` and ``brats/``). null: the environment variable ``TFVAE_MANUAL_DIR``, else TFDS's
  ``<data_dir>/downloads/manual``. ``train.py --manual-dir DIR`` sets it.
- ``data.skip_bad``: bool, false -- when building a real dataset, skip (and report) cases whose
  files are corrupt, missing or inconsistent instead of stopping at the first one.
- ``data.preprocess``: bool, false -- raw heads (skull on, each in its own pose, as IXI ships them):
  a ``nifti_folder`` or ``brats`` dataset preprocesses each scan (``tfvae.data.head_preprocessing``:
  1 mm, N4, registration to MNI152 2009a, brain extraction, crop; cached in TFDS's
  ``<data_dir>/downloads``) before slicing, built as a config of its own (``<config>_preprocessed``);
  ``ixi`` always does; ``hcp_t2`` and ``brain_phantom`` (preprocessed scans) refuse it. Shared with
  the test dataset (``data.test_name``), as ``skip_bad`` is.
- ``data.test_name`` / ``data.test_config``: str or null -- the dataset (and its config; null:
  "default") scored by evaluation when it differs from the training one, e.g. train on ``hcp_t2``
  and test on ``brats``. null: the test split of ``data.name`` itself (see ``data.test_data_config``).
  Healthy validation slices for calibration always come from the training dataset.
- ``data.clip``: float or null, null -- clip the z-scored intensities to [-clip, clip] (Zimmerer
  et al.'s preprocessing clips to +-1.5); applied to every split and to scans given to localize.
  Off by default and in the paper configs: the paper only z-scores, and clipping at 1.5 also
  flattens the bright tumours and CSF of T2 scans.
- ``model.latent_dim``: int, 64 -- l, the size of z.
- ``model.beta``: float, 1.0 -- weight of the KL term (beta-VAE); 1 is the plain VAE.
- ``model.filters``: list of int or null -- encoder feature maps per stride-2 level; null gives
  the paper's 16-32-64-256 at 64x64 (adapted to other sizes by ``networks.default_filters``).
- ``train.epochs``: int, 500; ``train.batch_size``: int, 64; ``train.learning_rate``: float, 1e-4
  (Adam, as in the paper).
- ``train.shuffle_buffer``: int, 10000 -- slices held by the shuffle buffer; the order of the
  volumes is shuffled every epoch as well (see ``data.images``).
- ``train.image_every``: int, 10 -- write input/reconstruction/sample images every N epochs.
- ``train.num_images``: int, 8 -- how many slices those image summaries show.
- ``train.distribute``: "none", "mirrored" or "multi_worker" -- "mirrored" trains under
  ``tf.distribute.MirroredStrategy`` on all local GPUs, "multi_worker" under
  ``MultiWorkerMirroredStrategy`` on the machines of ``TF_CONFIG`` (or Slurm's); either way
  ``train.batch_size`` is the global batch and only the chief writes the run directory.
- ``train.precision``: "float32" (default), "mixed_bfloat16", "mixed_float16" or "auto" -- the
  layers' precision (the distributions and the loss stay float32; anomaly maps are always computed
  in float32). "auto": bfloat16 on CPUs with native bfloat16 (``avx512_bf16`` / ``amx_bf16``) and
  GPUs of compute capability >= 8.0, float16 on older GPUs, else float32; float16 without a GPU,
  and bfloat16 where TensorFlow cannot run bfloat16 convolutions (oneDNN limited below AVX-512 by
  ``ONEDNN_MAX_CPU_ISA`` on an AVX-512 CPU), fall back to float32 with a warning. The precision
  used is printed and logged (HParams).
- ``train.mixed_precision``: bool, false -- the older spelling of ``train.precision: mixed_float16``.
- ``train.patience``: int, 0 -- stop when the validation loss has not improved for this many
  epochs (``train.epochs`` is then the maximum) and keep the best epoch's weights; 0: off.
- ``augment.*`` -- on-the-fly augmentation of the training split only (never validation or test),
  deterministic given ``seed`` (see ``tfvae.data.augment``); every one off by default:
  ``noise_std``: float or [low, high], 0 -- std of Gaussian noise added inside the brain (z-score
  units; a range draws each slice's std); ``rotation_deg``: float, 0 -- random rotation in [-r, r]
  degrees; ``scale``: float or [low, high], 0 -- random zoom by a factor in [1 - s, 1 + s] (or in
  [low, high]); ``flip``: bool, false -- random left-right flip; ``brightness``: float, 0 -- add
  U(-b, b) inside the brain; ``contrast``: float or [low, high], 0 -- multiply by U(1 - c, 1 + c)
  (or U(low, high)); ``gamma``: float, 0 -- gamma exp(U(-g, g)) on the brain's min-max range.
  The paper configs set the reference's values (flip, 5.73 degrees, scale [0.9, 1.2], contrast
  [0.95, 1.1], noise_std [0, 0.05]).
- ``predictors.n_samples``: int, 0 -- 0 computes the maps at z = mu (the paper); n > 0 averages
  them over n sampled z.
- ``predictors.combi``: "zimmerer" (the reference code: smooth(min-max(|dKL/dx|)) times the
  per-pixel negative log-likelihood, the min-max range fixed from healthy validation maps) or
  "paper" (|dKL/dx| * rec_error, the product as the paper writes it). See ``tfvae.maps.predictors``.
- ``predictors.elbo_grad``: "beta" (default: |d(Lrec + beta * KL)/dx|, the loss the model was trained
  with) or "reference" (|d(Lrec + KL)/dx|: Zimmerer et al.'s code, whose ELBO has no beta weight);
  the same map at beta = 1.
- ``predictors.smooth_gradients``: bool, true -- smooth ELBO-, KL- and Rec-grad with the reference
  code's normalised 7x7 Gaussian (sigma 3 px, zero padding), as Zimmerer et al. do.
- ``predictors.smooth_sigma``: float, 0 -- Gaussian smoothing of every map, in pixels (0: off).
- ``predictors.projection_steps``: int, 100; ``projection_lambda``: float, 1.0;
  ``projection_lr``: float, 0.03 -- the energy-based projection (see ``tfvae.maps.projection``).
- ``postprocess.erode_brain`` (voxels), ``median_size`` (voxels), ``min_component_voxels``: ints,
  0 = off; ``postprocess.positive_only``: bool, false -- 3D post-processing of the maps, see
  ``tfvae.maps.postprocessing``. When any is on, ``evaluate.py`` reports metrics with and without it.
- ``recommended.*`` -- the ``recommended`` map (``tfvae.maps.recommended``): ``restore``: bool, true --
  residual of the restored (projected) image, else of the plain reconstruction;
  ``median_mm``: float or null -- 3D median filter over that many millimetres on every axis (0:
  off); ``gaussian_sigma_mm``: float or null -- 3D Gaussian, sigma in millimetres (0: off); both
  converted per axis for each scan's grid (``recommended.filter_sizes``: the median's window is the
  odd number of voxels nearest to mm / voxel size); null: chosen on the healthy validation volumes
  with synthetic lesions; ``synthetic_copies``: int, 3 -- lesioned copies of each validation volume
  for that choice; ``second_restoration``: bool, false -- restore each scan again with the region
  the map flags at its healthy 1 % FPR threshold left free of the projection's data term (the
  large-lesion remedy measured in docs/results_phantom.md; needs ``restore``). (Before, ``median_size`` / ``gaussian_sigma`` counted voxels of the validation
  grid on every axis; a config that still gives them a value is refused with the conversion, one
  that gives them null -- every saved run config -- reads as the new keys' null.)
- ``ensemble.features``: list, ["rec_error", "kl_grad", "rec_grad"] (the paper's) -- the maps the
  logistic-regression ensemble combines; any predictor but the ensemble itself.
- ``threshold.mode``: "per_scan" (default) or "fixed" -- how a scan is thresholded at a calibrated
  false-positive rate (Dice@1%/5% FPR in evaluation, localize's mask): "per_scan" moves the
  calibrated threshold with the scan's own score distribution (straight-line fits of its Q-Q plot
  against the healthy reference, the estimated lesion share discounted so that a large lesion does
  not lift it; no label; see ``tfvae.thresholds.scan_threshold``), so the rate holds on scans from other sites;
  "fixed" uses the calibrated threshold as it is.
- ``threshold.calibration``: str or null, null -- the name of a calibration made with ``tfvae
  calibrate`` on healthy scans of the user's own scanner (``Run.calibrate``): its thresholds and
  recommended-map settings replace those of the healthy validation split.
- ``evaluate.predictors``: list or null (all) -- which predictors ``evaluate.py`` scores.
- ``evaluate.batch_size``: int, 64; ``evaluate.ensemble_fraction``: float, 0.1 -- share of test
  volumes the logistic-regression ensemble is fitted on; ``evaluate.num_figures``: int, 4 -- figures
  per kind (with / without tumour); ``evaluate.write_nifti``: bool, true -- NIfTI maps per volume
  (with its preprocessed image and label), of the predictors ``evaluate.nifti_maps`` names: list,
  ["recommended"], or "all" (every scored map: ~14 MB per phantom volume against ~2.5 MB); when none
  of those is scored (e.g. ``--predictors rec_error``), every scored map is written.
- ``evaluate.pixel_set``: "fov" (default) or "reference" -- "reference" also reports AUROC / AUPRC
  over the pixels Zimmerer et al.'s code scores (``auroc_reference``, ``auprc_reference``): every
  axial slice of the scan but the first and last ``evaluate.reference_skip`` (int, 20), each whole
  slice resized to the image size, background included -- the population the paper's AUROC is
  over (ours crops a 192 mm field of view and keeps slices with 20% of the largest brain area).
  Its labels are each test volume's original segmentation resampled once into that crop (nearest
  neighbour; read from the dataset's source files, the phantom made again), the slices our
  preprocessing leaves out included with their true labels and maps of 0 (``tfvae.data.reference_labels``).
- ``evaluate.exclude_volumes``: list of str, [] -- test volumes (ids) evaluation leaves out: a
  hyperparameter search whose ``auroc`` objective selected the model with the labels of held-apart
  test volumes writes their ids here in each trial's config (``tfvae.runs.tuning``).
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Callable

from tfvae.utils import files


class ConfigError(ValueError):
    """A config problem; the message is one line naming the source and the dotted key."""


@dataclass(frozen=True)
class Field:
    types: tuple
    default: Any
    check: Callable[[Any], str | None] | None = None  # returns a reason when the value is impossible


def _seed(v):
    return None if 0 <= v < 2**31 else "must be between 0 and 2**31 - 1"


def _positive(v):
    return None if v > 0 else "must be > 0"


def _non_negative(v):
    return None if v >= 0 else "must be >= 0"


def _below_one(v):
    return None if 0 <= v < 1 else "must be >= 0 and < 1"


def _at_most(limit):
    def check(v):
        return None if 0 <= v <= limit else f"must be between 0 and {limit:g}"
    return check


def _power_of_two(v):
    if v < 8 or v & (v - 1):
        return "must be a power of 2 and at least 8 (e.g. 32, 64, 128)"
    return None


def _positive_ints(v):
    if v is None:
        return None
    if not v or not all(isinstance(f, int) and not isinstance(f, bool) and f > 0 for f in v):
        return "must be a non-empty list of positive integers"
    return None


def _one_of(*choices):
    def check(v):
        return None if v in choices else f"must be one of {', '.join(map(repr, choices))}"
    return check


def _volume_ids(v):
    return None if all(isinstance(item, str) for item in v) else "must be a list of volume ids (strings)"


def _predictor_names(v):
    from tfvae.config.predictor_names import ALL_PREDICTORS

    unknown = [p for p in v if p not in ALL_PREDICTORS]
    if not v or unknown:
        return f"must be a non-empty list of predictors from {', '.join(ALL_PREDICTORS)}"
    return None


def _nifti_maps(v):
    if v == "all":
        return None
    if isinstance(v, str):
        return 'must be a list of predictors or "all"'
    return _predictor_names(v)


def _ensemble_features(v):
    from tfvae.config.predictor_names import LOCALIZABLE as known  # every map but the ensemble's own
    if not v or any(p not in known for p in v) or len(set(v)) != len(v):
        return f"must be a non-empty list of distinct predictors from {', '.join(known)}"
    return None


def _range_or(check_number, low: float, exclusive: bool = False):
    """A number checked by ``check_number``, or a range ``[lo, hi]`` with ``low <= lo <= hi``
    (for factors: ``lo > low``)."""
    def check(v):
        if not isinstance(v, list):
            return check_number(v)
        ok = (len(v) == 2 and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in v)
              and (v[0] > low if exclusive else v[0] >= low) and v[0] <= v[1])
        return None if ok else f"must be a number or a range [low, high] with {'>' if exclusive else '>='} {low:g} <= low <= high"
    return check


def _calibration_name(v):
    import re

    return None if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", v) else \
        "must be a name of letters, digits, '_', '.' or '-' (at most 64 characters), as calibrations are named"


def _folder(v):
    if v is None:
        return None
    found = files.file_in_path(v)
    if found is None:
        return None
    if found == os.path.abspath(os.path.expanduser(v)):
        return "is a file, not a folder"
    return f"is below {found}, a file, not a folder"


def _fraction(v):
    return None if 0 < v < 1 else "must be between 0 and 1 (exclusive)"


STR, INT, FLOAT, LIST, BOOL = (str,), (int,), (float, int), (list,), (bool,)

SCHEMA: dict[str, Any] = {
    "name": Field(STR, "run"),
    "seed": Field(INT, 0, _seed),
    "data": {
        "name": Field(STR, "brain_phantom"),
        "config": Field(STR, "default"),
        "data_dir": Field(STR + (type(None),), None, _folder),
        "image_size": Field(INT, 64, _power_of_two),
        "train_split": Field(STR, "train"),
        "validation_split": Field(STR, "validation"),
        "test_split": Field(STR, "test"),
        "manual_dir": Field(STR + (type(None),), None, _folder),
        "skip_bad": Field(BOOL, False),
        "preprocess": Field(BOOL, False),
        "test_name": Field(STR + (type(None),), None),
        "test_config": Field(STR + (type(None),), None),
        "clip": Field(FLOAT + (type(None),), None, _positive),
    },
    "model": {
        "latent_dim": Field(INT, 64, _positive),
        "beta": Field(FLOAT, 1.0, _non_negative),
        "filters": Field(LIST + (type(None),), None, _positive_ints),
    },
    "train": {
        "epochs": Field(INT, 500, _positive),
        "batch_size": Field(INT, 64, _positive),
        "learning_rate": Field(FLOAT, 1e-4, _positive),
        "shuffle_buffer": Field(INT, 10000, _positive),
        "image_every": Field(INT, 10, _positive),
        "num_images": Field(INT, 8, _positive),
        "distribute": Field(STR, "none", _one_of("none", "mirrored", "multi_worker")),
        "mixed_precision": Field(BOOL, False),
        "precision": Field(STR, "float32", _one_of("float32", "mixed_bfloat16", "mixed_float16", "auto")),
        "patience": Field(INT, 0, _non_negative),
    },
    "augment": {
        "noise_std": Field(FLOAT + LIST, 0.0, _range_or(_non_negative, low=0.0)),
        "rotation_deg": Field(FLOAT, 0.0, _at_most(180.0)),
        "scale": Field(FLOAT + LIST, 0.0, _range_or(_below_one, low=0.0, exclusive=True)),
        "flip": Field(BOOL, False),
        "brightness": Field(FLOAT, 0.0, _non_negative),
        "contrast": Field(FLOAT + LIST, 0.0, _range_or(_below_one, low=0.0, exclusive=True)),
        "gamma": Field(FLOAT, 0.0, _non_negative),
    },
    "predictors": {
        "n_samples": Field(INT, 0, _non_negative),
        "combi": Field(STR, "zimmerer", _one_of("zimmerer", "paper")),
        "elbo_grad": Field(STR, "beta", _one_of("beta", "reference")),
        "smooth_gradients": Field(BOOL, True),
        "smooth_sigma": Field(FLOAT, 0.0, _non_negative),
        "projection_steps": Field(INT, 100, _non_negative),
        "projection_lambda": Field(FLOAT, 1.0, _non_negative),
        "projection_lr": Field(FLOAT, 0.03, _positive),
    },
    "postprocess": {
        "erode_brain": Field(INT, 0, _non_negative),
        "median_size": Field(INT, 0, _non_negative),
        "min_component_voxels": Field(INT, 0, _non_negative),
        "positive_only": Field(BOOL, False),
    },
    "recommended": {
        "restore": Field(BOOL, True),
        "median_mm": Field(FLOAT + (type(None),), None, _non_negative),
        "gaussian_sigma_mm": Field(FLOAT + (type(None),), None, _non_negative),
        "synthetic_copies": Field(INT, 3, _positive),
        "second_restoration": Field(BOOL, False),
    },
    "ensemble": {
        "features": Field(LIST, ["rec_error", "kl_grad", "rec_grad"], _ensemble_features),
    },
    "threshold": {
        "mode": Field(STR, "per_scan", _one_of("per_scan", "fixed")),
        "calibration": Field(STR + (type(None),), None, _calibration_name),
    },
    "evaluate": {
        "predictors": Field(LIST + (type(None),), None, _predictor_names),
        "batch_size": Field(INT, 64, _positive),
        "ensemble_fraction": Field(FLOAT, 0.1, _fraction),
        "num_figures": Field(INT, 4, _non_negative),
        "write_nifti": Field(BOOL, True),
        "nifti_maps": Field(LIST + STR, ["recommended"], _nifti_maps),
        "pixel_set": Field(STR, "fov", _one_of("fov", "reference")),
        "reference_skip": Field(INT, 20, _non_negative),
        "exclude_volumes": Field(LIST, [], _volume_ids),
    },
}


def defaults(schema: dict | None = None) -> dict:
    """The config with every key at its default."""
    schema = SCHEMA if schema is None else schema
    return {k: defaults(v) if isinstance(v, dict) else copy.deepcopy(v.default) for k, v in schema.items()}


def _type_name(types: tuple) -> str:
    names = {str: "string", int: "integer", float: "number", list: "list", dict: "object", bool: "boolean",
             type(None): "null"}
    text = " or ".join(dict.fromkeys(names[t] for t in types))
    return ("an " if text[0] in "aeiou" else "a ") + text


def _check_value(field: Field, value, key: str, source: str):
    ok = isinstance(value, field.types) and not (isinstance(value, bool) and bool not in field.types)
    if not ok:
        raise ConfigError(f"{source}: {key} must be {_type_name(field.types)}, got {value!r}")
    if float in field.types and isinstance(value, int):
        value = float(value)
    numbers = value if isinstance(value, list) else [value]
    if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
        raise ConfigError(f"{source}: {key} must be a finite number, got {value!r}")
    if field.check is not None and value is not None:
        reason = field.check(value)
        if reason:
            raise ConfigError(f"{source}: {key} {reason}, got {value!r}")
    return value


# keys replaced by others whose values mean something else: null (the default) reads as the new key's null
# (so saved run configs still load), a value is refused with what to give instead
REPLACED = {
    "recommended.median_size": "counted voxels of the validation grid on every axis; give recommended.median_mm, "
                               "millimetres on every axis (k voxels of v mm are k * v mm: 3 voxels of 3 mm pixels "
                               "are 9 mm)",
    "recommended.gaussian_sigma": "counted voxels of the validation grid on every axis; give "
                                  "recommended.gaussian_sigma_mm, millimetres (s voxels of v mm are s * v mm: 2 "
                                  "voxels of 3 mm pixels are 6 mm)",
}


def _merge(base: dict, update: dict, schema: dict, source: str, prefix: str = "") -> None:
    if not isinstance(update, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'the config'} must be a JSON object")
    for key, value in update.items():
        dotted = prefix + key
        if key not in schema and dotted in REPLACED and schema is SCHEMA.get(prefix.rstrip(".")):
            if value is None:
                continue
            raise ConfigError(f"{source}: {dotted} {REPLACED[dotted]}, got {value!r}")
        if key not in schema:
            known = ", ".join(prefix + k for k in schema)
            raise ConfigError(f"{source}: unknown key {dotted!r} (known: {known})")
        if isinstance(schema[key], dict):
            _merge(base[key], value, schema[key], source, dotted + ".")
        else:
            base[key] = _check_value(schema[key], value, dotted, source)


REQUIRED = ...  # the default of a key a config must give (Ellipsis deep-copies to itself)


def validate(raw, schema: dict, source: str, what: str = "a config") -> dict:
    """``raw`` over the defaults of ``schema`` (any schema of ``Field`` s, e.g. ``SCHEMA`` or a search
    config's), every key checked as run configs are; an unknown key, a wrong type, an impossible
    value or a missing ``REQUIRED`` key is a one-line ``ConfigError`` naming ``source`` and the key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {what} must be a JSON object")
    out = defaults(schema)
    _merge(out, raw, schema, source)
    missing = [k for k, v in out.items() if v is REQUIRED]
    if missing:
        raise ConfigError(f"{source}: missing key {missing[0]!r}")
    return out


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=2")
    key, raw = item.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip().split("."), value


def check_distinct(items) -> None:
    """Each key set once: ``items`` are ``(origin, "KEY=VALUE")`` pairs (origin: how the user gave it,
    e.g. ``"--set"`` or ``"--projection-steps 5"``), or plain ``"KEY=VALUE"`` strings (from ``--set``).
    A key given twice is a one-line ``ConfigError`` naming it and both places, never "the last wins"."""
    seen: dict[str, str] = {}
    for entry in items:
        origin, item = entry if isinstance(entry, tuple) else ("--set", entry)
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=2")
        key = item.split("=", 1)[0].strip()
        said = f"--set {item}" if origin == "--set" else origin
        if key in seen:
            raise ConfigError(f"{key} is set twice ({seen[key]}, then {said}); give it once")
        seen[key] = said


def check_value(key: str, value, source: str) -> Any:
    """``value`` checked as the dotted config ``key`` takes it (type, range), before it becomes an
    override: a one-line ``ConfigError`` that names ``source`` -- the flag or argument the user gave
    (``--name``, ``name=``) -- and the reason, not the config key it is stored under."""
    field: Any = SCHEMA
    for part in key.split("."):
        field = field[part]
    try:
        return _check_value(field, value, key, source)
    except ConfigError as e:
        reason = str(e)[len(f"{source}: {key} "):]
        raise ConfigError(f"{source} {value!r}: {reason.rsplit(', got ', 1)[0]}") from None


def _check_together(config: dict, source: str) -> None:
    """Keys that must agree with each other (each valid alone): ``model.filters`` has one entry per
    stride-2 level from ``data.image_size`` down to 4x4 (``tfvae.model.networks``)."""
    filters, size = config["model"]["filters"], config["data"]["image_size"]
    levels = int(round(math.log2(size / 4)))
    if filters is not None and len(filters) != levels:
        raise ConfigError(f"{source}: model.filters has {len(filters)} entries but data.image_size {size} needs "
                          f"{levels} (one per stride-2 level down to 4x4), got {filters!r}")


def resolve(config: dict, overrides: list[str] = (), source: str = "config") -> dict:
    """Defaults, then ``config``, then ``KEY=VALUE`` overrides; validated, each key alone and the
    keys that must agree together (``_check_together``)."""
    resolved = defaults()
    _merge(resolved, config, SCHEMA, source)
    for item in overrides:
        path, value = _parse_override(item)
        nested: Any = value
        for part in reversed(path):
            nested = {part: nested}
        _merge(resolved, nested, SCHEMA, f"--set {item}")
    _check_together(resolved, source if not overrides else f"{source} with --set {' '.join(overrides)}")
    return resolved


class _Pairs(dict):
    """A JSON object as read, remembering a key that appeared more than once (``_object``)."""

    duplicate: str | None = None


def _object(pairs) -> dict:
    out = _Pairs()
    for key, value in pairs:
        if key in out and out.duplicate is None:
            out.duplicate = key
        out[key] = value
    return out


def _duplicate_key(value, prefix: str = "") -> str | None:
    """The dotted key of the first object member given twice in a JSON document read with ``_object``."""
    if isinstance(value, _Pairs) and value.duplicate is not None:
        return prefix + value.duplicate
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        found = _duplicate_key(child, f"{prefix}{key}." if isinstance(value, dict) else f"{prefix.rstrip('.')}[{key}].")
        if found:
            return found
    return None


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def read_json(path: str | os.PathLike, what: str = "config file"):
    """The JSON at ``path``; a missing, unreadable, non-UTF-8 or invalid file (or a folder), or a key
    given twice in one object (JSON parsers keep the last silently), is a one-line ``ConfigError``
    naming it (``what``: e.g. "config file", "search config"). A UTF-8 byte-order mark (Windows
    editors' "UTF-8 with BOM") and CRLF line ends are read as plain UTF-8."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8-sig") as f:
            value = json.load(f, object_pairs_hook=_object)
        duplicate = _duplicate_key(value)
        if duplicate is not None:
            raise ConfigError(f"{path}: key {duplicate!r} is given twice; keep one of them (JSON would keep the "
                              "last silently)")
        return _plain(value)
    except FileNotFoundError:
        folder = shipped_configs()
        shipped = sorted(n[:-5] for n in os.listdir(folder) if n.endswith(".json")) if folder else []
        names = f" (shipped, found by name from any folder: {', '.join(shipped)})" if shipped else ""
        raise ConfigError(f"{path}: {what} not found{names}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a {what}") from None
    except PermissionError:
        raise ConfigError(f"{path}: cannot be read (permission denied)") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save the {what} as UTF-8 JSON") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None


SHIPPED_PACKAGE = "tfvae_configs"  # configs/ as installed with the package (setup.py)


def shipped_configs() -> str | None:
    """The folder of the configs shipped with the package (``configs/`` of the source tree, or its
    installed copy), or None."""
    import importlib.util

    spec = importlib.util.find_spec(SHIPPED_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if os.path.isdir(folder):
            return folder
    return None


def locate(path: str | os.PathLike) -> str:
    """``path`` when it is a file; else, when it names a shipped config (``quickstart``,
    ``beta10.json``, ``search_paper``), that file, found from any folder; else ``path`` as given
    (reading it then says it is not found, naming the shipped configs)."""
    path = os.fspath(path)
    if os.path.exists(path) or os.path.dirname(path):
        return path
    folder = shipped_configs()
    if folder:
        found = os.path.join(folder, path if path.endswith(".json") else path + ".json")
        if os.path.isfile(found):
            return found
    return path


def load(path: str | os.PathLike, overrides: list[str] = ()) -> dict:
    """Read, merge with defaults, apply overrides and validate the JSON config at ``path`` (a file,
    or the name of a shipped config: ``locate``)."""
    path = locate(path)
    return resolve(read_json(path), overrides, source=path)


def flatten(config: dict) -> dict:
    """The config's scalar settings with dotted keys (lists as strings), as TensorBoard's HParams
    dashboard wants them and as runs are compared."""
    flat = {}
    for section, values in config.items():
        for key, value in (values.items() if isinstance(values, dict) else [(None, values)]):
            name = f"{section}.{key}" if key else section
            if isinstance(value, (bool, int, float, str)):
                flat[name] = value
            elif value is not None:
                flat[name] = str(value)
    return flat


def save(config: dict, path: str | os.PathLike) -> None:
    """Write ``config`` as JSON, whole or not at all (a temporary file, then a rename)."""
    files.write_json(path, config)
