"""Anomaly maps for scans that are in no dataset: what ``scripts/localize.py`` runs.

A scan goes through exactly the preprocessing of the run's training data
(``preprocessing.volume_to_slices`` with the run's image size, field of view and slice selection;
orientation from the affine, brain mask from the given mask or the non-zero voxels, brain z-score),
every kept slice is scored in batches, the maps are post-processed as the config says
(``tfvae.maps.postprocessing``) and thresholded at a false-positive rate calibrated on the run's healthy
validation slices, and score and mask are written back into the scan's own grid. Slices the
preprocessing skips (little brain) get score 0.

``Localizer`` (what ``Run.localize`` uses) holds the fitted scorer and the threshold of one run,
predictor and FPR, and localizes scans one after another; ``localize_files`` does what
``scripts/localize.py`` does: scans and folders in, maps, masks, overlays and ``summary.csv`` out,
never writing over an input or, unless asked, an earlier output.

Resuming: each scan's outputs are followed by its record (``<name>_tfvae_record.json``, written
whole), which holds the settings its outputs were made with (``batch_settings``: run, checkpoint
and model digest, predictor, FPR, threshold mode, calibration, map settings; the scan, its brain
mask and their digests). A scan is done when its record says so and its outputs are there; a
later call into the same folder skips it when the settings are the same and refuses in one line
naming the setting that differs otherwise (``plan``). ``summary.csv`` and ``index.html`` are
rewritten from the records after every scan, so an interrupted batch lists what it finished.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os

import nibabel as nib
import numpy as np

from tfvae.utils import files
from tfvae.data import labelmaps, nifti, preprocessing
from tfvae.maps import postprocessing
from tfvae.thresholds import scan_threshold
from tfvae.thresholds.scan_threshold import HealthyReference, ScanThreshold
from tfvae.data.nifti import modality_from_name  # noqa: F401 (the one reader's; re-exported for callers)
from tfvae.data.scans import slice_scan, stem, training_modality
from tfvae.maps.scoring import Scorer, Volume, variants


def scan_warnings(path: str, data: np.ndarray, affine: np.ndarray, reference: dict) -> list[str]:
    """Differences from what the run was trained on: shape and voxel size (the modality, by name and
    by the fluid's brightness, is judged by the reader: ``nifti.load_volume(expect_modality=...)``)."""
    warnings = []
    voxel = [round(float(v), 2) for v in nib.affines.voxel_sizes(affine)]
    if reference.get("voxel_mm") is not None:
        ref_voxel = [round(float(v), 2) for v in reference["voxel_mm"]]
        if sorted(voxel) != sorted(ref_voxel) or sorted(data.shape) != sorted(reference["shape"]):
            warnings.append(f"{path}: shape {tuple(data.shape)} at {tuple(voxel)} mm differs from the training "
                            f"scans ({tuple(reference['shape'])} at {tuple(ref_voxel)} mm); resampled to the "
                            "run's field of view")
    return warnings


@dataclasses.dataclass
class Localized:
    score: np.ndarray       # float32, the scan's grid
    mask: np.ndarray        # uint8 0/1, the scan's grid
    voxel_ml: float
    n_components: int
    largest_voxels: int
    affine: np.ndarray | None = None
    threshold: float | None = None
    image: np.ndarray | None = None  # the scan itself, as read
    warnings: list = dataclasses.field(default_factory=list)
    scan_threshold: ScanThreshold | None = None  # how the threshold was chosen, and its estimated FPR
    brain_mask: str | None = None  # the brain mask file used; None: the scan's non-zero voxels (or an array given)
    preprocessing: dict | None = None  # a raw head preprocessed first (``preprocess``): its files, reused or not

    @property
    def estimated_fpr(self) -> float:
        """Label-free estimate of the share of the scan's healthy brain tissue the mask flags."""
        return float("nan") if self.scan_threshold is None else self.scan_threshold.estimated_fpr

    @property
    def volume_ml(self) -> float:
        return float(self.mask.sum()) * self.voxel_ml

    @property
    def components(self) -> list[dict]:
        """One row per 26-connected finding, largest first: voxels, ml, centroid in scanner mm,
        maximum and mean score."""
        from scipy import ndimage

        labels, n = ndimage.label(self.mask > 0, structure=np.ones((3, 3, 3)))
        rows = []
        for i in range(1, n + 1):
            where = labels == i
            centroid = np.argwhere(where).mean(axis=0)
            mm = (self.affine @ np.append(centroid, 1.0))[:3] if self.affine is not None else centroid
            scores = self.score[where]
            rows.append({"voxels": int(where.sum()), "ml": float(where.sum() * self.voxel_ml),
                         "centroid_mm": [round(float(v), 1) for v in mm], "max_score": float(scores.max()),
                         "mean_score": float(scores.mean())})
        rows.sort(key=lambda r: -r["voxels"])
        return [{"id": k + 1, **r} for k, r in enumerate(rows)]


def localize(scorer: Scorer, data: np.ndarray, affine: np.ndarray, *, predictor: str, reference: HealthyReference,
             fpr: float, settings: dict, image_size: int, fov_mm: float, min_brain_fraction: float,
             mask: np.ndarray | None = None, clip: float | None = None, force: bool = False,
             mode: str = "per_scan") -> Localized:
    """Score one scan (``data`` with ``affine``) and cut its map at the threshold ``scan_threshold.for_scan``
    chooses for the rate ``fpr`` from the healthy ``reference`` (``mode``: per_scan or fixed)."""
    sliced, outside = slice_scan(data, affine, image_size=image_size, fov_mm=fov_mm,
                                 min_brain_fraction=min_brain_fraction, mask=mask, clip=clip, force=force)
    volume = Volume("scan", sliced.image, sliced.label, sliced.brain_mask, sliced.slice_index,
                    sliced.geometry, maps=scorer(sliced.image, sliced.brain_mask, sliced.geometry.voxel_mm()))
    maps = variants(volume, [predictor], settings)
    score = maps.get("postprocessed", maps["raw"])[predictor][..., 0]
    brain = sliced.brain_mask[..., 0] > 0
    chosen = scan_threshold.for_scan(reference, score[brain], fpr, mode)
    binary = postprocessing.remove_small_components((score >= chosen.threshold) & brain,
                                                    settings["min_component_voxels"])
    score_volume = preprocessing.slices_to_volume(score, sliced.slice_index, sliced.geometry, order=1)
    mask_volume = preprocessing.slices_to_volume(binary.astype(np.float32), sliced.slice_index, sliced.geometry,
                                                 order=0).astype(np.uint8)
    n, largest = postprocessing.components(mask_volume)
    warnings = [f"{outside} and was not scored (forced)"] if outside else []
    warnings += chosen.warnings(flagged_share=float(binary[brain].mean()) if brain.any() else None)
    return Localized(score_volume, mask_volume, float(np.prod(nib.affines.voxel_sizes(affine))) / 1000.0, n, largest,
                     affine=np.asarray(affine), threshold=chosen.threshold, warnings=warnings, scan_threshold=chosen)


class Localizer:
    """Localizes scans with one run, predictor and false-positive rate (``Run.localize``)."""

    def __init__(self, run, config: dict, *, predictor: str = "recommended", fpr: float = 0.01,
                 checkpoint: str = "final", force: bool = False):
        from tfvae.data import pipelines as data
        from tfvae.config.predictor_names import LOCALIZABLE

        if predictor not in LOCALIZABLE:
            raise ValueError(f"predictor {predictor!r}: choose one of {', '.join(LOCALIZABLE)} "
                             "(the ensemble needs labelled scans)")
        if not 0 < fpr < 1:
            raise ValueError(f"fpr must be between 0 and 1, got {fpr}")
        self.run, self.config, self.predictor, self.fpr, self.checkpoint = run, config, predictor, fpr, checkpoint
        self.force = force
        from tfvae.thresholds import calibration

        try:
            self.scorer = run.scorer([predictor], config=config, checkpoint=checkpoint)
            store = calibration.ThresholdStore(run.thresholds_path)
            key = store.key(run.model_digest(checkpoint), predictor, config)
            name = config["threshold"]["calibration"]
            healthy = (f"the healthy scans of calibration {name}" if name
                       else "the validation slices of the training data")
            # which healthy set the threshold comes from, said wherever the threshold is (summary.csv,
            # index.html, the overlay's record): a named calibration or the run's own validation slices
            self.calibration_words = f" of calibration {name}" if name else ""  # the overlay's title
            self.threshold_source = (f"thresholds.json ({healthy})" if store.threshold(key, fpr) is not None
                                     else f"calibrated now on {healthy} (stored in thresholds.json)")
            self.reference = run.healthy_reference(predictor, fpr, config=config, checkpoint=checkpoint,
                                                   scorer=self.scorer)
        except data.MissingDataError as e:  # a run moved without its data, and nothing stored for these settings
            raise data.DataError(_needs_validation_data(run, config, predictor, fpr, checkpoint, e)) from None
        self.scorer.release()  # the healthy volumes' network outputs: not needed to score scans
        self.threshold = self.reference.threshold(fpr)  # the calibrated one; each scan's moves from it
        self.mode = config["threshold"]["mode"]
        self.builder_config = data.builder(config["data"]).builder_config
        self.notes: list[str] = []  # said once per batch, and in each scan's warnings
        self.training_scans = training_scans(run, config)
        if self.training_scans is None:
            self.training_scans = {"modality": training_modality(self.builder_config)}
            self.notes.append(
                f"{run.dir} does not record its training scans' shape and voxel size ({TRAINING_SCANS_FILE}: runs "
                f"trained by an older tfvae) and its training data ({config['data']['name']} in "
                f"{config['data']['data_dir'] or 'the default TFDS folder'}) is not here: scans are not compared "
                "with them (localize once where the data is to store them in the run)")
        # what decides this localizer's outputs (with each scan and its mask): a folder localized with
        # other settings is refused (plan)
        self.settings = batch_settings(run, config, predictor=predictor, fpr=fpr, checkpoint=checkpoint,
                                       digest=run.model_digest(checkpoint), force=force)

    def __call__(self, scan, *, mask=None, affine=None, preprocess=None, preprocess_dir=None) -> Localized:
        """``scan``: a NIfTI path, or an array with its ``affine``; ``mask``: a brain mask (path or
        array on the scan's grid). ``preprocess`` (True, or ``head_preprocessing.Settings``): ``scan``
        is a raw head, localized through ``localize_raw`` (its preprocessing written to
        ``preprocess_dir``, a temporary folder when None). Raises ``nifti.BadInputError`` /
        ``ValueError`` with one line."""
        from tfvae.data.nifti import check_same_grid, load_volume, modality_warning, read_background

        chosen = preprocess_settings(preprocess)
        if chosen is not None:
            if mask is not None:
                from tfvae.utils.console import option

                raise ValueError(f"{option('--preprocess', 'preprocess=...')} makes the scan's brain mask: give it "
                                 f"or {option('--mask', 'mask=...')}, not both")
            if not isinstance(scan, (str, os.PathLike)):
                raise ValueError("preprocess needs the raw head as a NIfTI file, not an array")
            if preprocess_dir is None:
                import tempfile

                with tempfile.TemporaryDirectory() as folder:
                    return localize_raw(self, os.fspath(scan), chosen, folder, keep=False)
            return localize_raw(self, os.fspath(scan), chosen, os.fspath(preprocess_dir))

        path = os.fspath(scan) if isinstance(scan, (str, os.PathLike)) else "array"
        notes: list[str] = []  # what the reader said: a forced orientation, the background, the modality
        modality = self.training_scans.get("modality") or "t2"
        if path != "array":
            data, affine = load_volume(path, allow_unknown_orientation=self.force, notes=notes,
                                       expect_modality=modality)
            labelmaps.refuse_label_map(path, data, "give the scan it labels")  # a segmentation given as a scan
        elif affine is None:
            raise ValueError("an array scan needs its affine (affine=...)")
        else:
            data, affine = np.asarray(scan, np.float32), np.asarray(affine, np.float64)
            data, said = read_background(data, "array")
            notes += said
        if mask is None and path != "array":
            mask = mask_beside(path)  # <scan>_mask.nii[.gz], as tfvae calibrate and the nifti_folder builder read it
        mask_path = os.path.abspath(os.fspath(mask)) if isinstance(mask, (str, os.PathLike)) else None
        if mask_path is not None:
            mask_data, mask_affine = load_volume(os.fspath(mask), allow_unknown_orientation=self.force, notes=notes)
            check_same_grid(os.fspath(mask), mask_data, mask_affine, path, data, affine, "brain mask")
            mask = mask_data
        if path == "array":
            said = modality_warning("array", data, modality,
                                    brain=None if mask is None else np.asarray(mask) > 0)
            notes += [said] if said else []
        warnings = self.notes + notes + scan_warnings(path, data, affine, self.training_scans)
        result = localize(self.scorer, data, affine, predictor=self.predictor, reference=self.reference, fpr=self.fpr,
                          settings=self.config["postprocess"], image_size=self.config["data"]["image_size"],
                          fov_mm=self.builder_config.fov_mm, min_brain_fraction=self.builder_config.min_brain_fraction,
                          mask=mask, clip=self.config["data"]["clip"], force=self.force, mode=self.mode)
        result.warnings, result.image = warnings + [f"{path}: {w}" for w in result.warnings], data
        result.brain_mask = mask_path
        return result


def preprocess_settings(preprocess):
    """``head_preprocessing.Settings`` of ``preprocess`` (True: the defaults; a ``Settings`` as it is),
    or None when off (None, False)."""
    if preprocess is None or preprocess is False:
        return None
    from tfvae.data import head_preprocessing as hp

    return hp.Settings() if preprocess is True else preprocess


def preprocess_record(preprocess) -> dict:
    """What a localize record keeps of ``preprocess`` (``batch_settings``): ``preprocess`` (on or
    off) and, when on, every setting of the preprocessing but its thread count, as ``preprocess.<key>``."""
    chosen = preprocess_settings(preprocess)
    if chosen is None:
        return {"preprocess": False}
    values = json.loads(json.dumps(dataclasses.asdict(chosen)))
    return {"preprocess": True, **{f"preprocess.{k}": v for k, v in values.items() if k != "threads"}}


def to_raw_grid(values: np.ndarray, affine: np.ndarray, raw_shape, raw_affine: np.ndarray,
                raw_to_template: np.ndarray, *, linear: bool) -> np.ndarray:
    """``values`` (on the grid of ``affine``, in template space) resampled onto the raw scan's grid
    through ``raw_to_template`` (4x4, raw world -> template world, RAS+ mm): linear or nearest
    neighbour, 0 outside ``values``' grid (float32)."""
    from tfvae.data import head_preprocessing as hp

    image = hp.to_sitk(np.asarray(values, np.float32), affine)
    reference = hp.to_sitk(np.zeros(tuple(raw_shape), np.float32), raw_affine)
    data, _ = hp.from_sitk(hp.resample(image, reference, np.asarray(raw_to_template, np.float64), linear=linear))
    return data.astype(np.float32)


def localize_raw(localizer: "Localizer", scan: str, settings, out_dir: str, *, keep: bool = True) -> Localized:
    """A raw head (skull on, any pose) localized: ``head_preprocessing.preprocess_scan`` writes its
    brain in template space, its brain mask in the raw grid and the transforms to ``out_dir``
    (reused when they are there already for this content and these ``settings``), the brain is
    localized in template space, and score and mask are carried back into the scan's own grid
    through the stored transform (score linear, mask nearest neighbour), 0 outside the brain mask.
    ``keep``: ``out_dir`` outlives the call (else the result names no file in it)."""
    from tfvae.data import head_preprocessing as hp
    from tfvae.data.nifti import load_volume

    hp.require_simpleitk()
    notes: list[str] = []
    data, affine = load_volume(scan, notes=notes)
    labelmaps.refuse_label_map(scan, data, "give the scan it labels")
    found = hp.reusable(scan, out_dir, settings)
    paths = found or hp.preprocess_scan(scan, out_dir, settings)
    record = hp.load_record(paths["record"])
    brain_mask, _ = load_volume(paths["brainmask"])
    brain = np.asarray(brain_mask) > 0
    if brain.shape != data.shape:
        raise ValueError(f"{paths['brainmask']}: shape {brain.shape} is not the scan's {data.shape}")
    result = localizer(paths["preprocessed"])
    to_template = np.asarray(record["raw_to_template"], np.float64)
    score = to_raw_grid(result.score, result.affine, data.shape, affine, to_template, linear=True)
    score = np.where(brain, score, 0.0).astype(np.float32)
    mask = (to_raw_grid(result.mask, result.affine, data.shape, affine, to_template, linear=False) >= 0.5) & brain
    mask = mask.astype(np.uint8)
    n, largest = postprocessing.components(mask)
    where = {"preprocessed": paths["preprocessed"], "brainmask": paths["brainmask"], "record": paths["record"]}
    preprocessing_info = {**(where if keep else {}), "reused": found is not None,
                          "brain_volume_ml": record.get("brain_volume_ml"), "template": record.get("template"),
                          "seconds": (record.get("times_s") or {}).get("total_s")}
    return Localized(score, mask, float(np.prod(nib.affines.voxel_sizes(affine))) / 1000.0, n, largest,
                     affine=np.asarray(affine, np.float64), threshold=result.threshold, image=data,
                     warnings=notes + result.warnings, scan_threshold=result.scan_threshold,
                     brain_mask=os.path.abspath(paths["brainmask"]) if keep else None,
                     preprocessing=preprocessing_info)


def _needs_validation_data(run, config: dict, predictor: str, fpr: float, checkpoint: str, error) -> str:
    """One line: the thresholds these settings need are not in the run's ``thresholds.json`` and the
    validation data that would calibrate them (``error``: ``data.MissingDataError``) is not here."""
    from tfvae.thresholds import calibration

    store = calibration.ThresholdStore(run.thresholds_path)
    stored = store.thresholds(store.key(run.model_digest(checkpoint), predictor, config))
    where = str(error).splitlines()[0]
    where = where[where.index("(") + 1:where.index(")")] if "(" in where and ")" in where else where
    rates = sorted(float(r) for r in stored if float(r) <= 0.1)
    other = (f"use an --fpr stored there ({', '.join(f'{r:g}' for r in rates)}), " if rates and fpr not in rates
             else "")
    return (f"{run.thresholds_path}: holds no {predictor} threshold at FPR {fpr:g} for this model and these settings, "
            f"and calibrating one needs the run's validation data ({config['data']['name']}: {where}), which is not "
            f"on this machine: {other}localize once where the data is and copy the run with its thresholds.json, or "
            "calibrate on healthy scans of your own (tfvae calibrate --run-dir RUN --name NAME SCANS, then "
            "--calibration NAME)")


TRAINING_SCANS_FILE = "training_scans.json"  # in the run: the training scans' modality, shape and voxel size
TRAINING_KEYS = ("name", "config", "train_split")  # the data config the record describes


def training_scans(run, config: dict, *, store: bool = True) -> dict | None:
    """What a scan is compared with (``scan_warnings``): the training scans' modality, shape and
    voxel size, from the run's ``training_scans.json`` (written when it is trained), else from its
    built training split when that is here (then stored in the run, with ``store``) -- never built
    for this, nor read from the source folder. None when neither is there (a run of an older tfvae
    moved without its data)."""
    from tfvae.data import pipelines as data

    key = {k: config["data"][k] for k in TRAINING_KEYS}
    path = os.path.join(run.dir, TRAINING_SCANS_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            stored = json.load(f)
        if isinstance(stored, dict) and stored.get("data") == key and stored.get("shape"):
            return stored
    except (OSError, ValueError):
        pass
    try:
        b = data.builder(config["data"])
        if not b.is_prepared() or key["train_split"] not in b.info.splits:
            return None
        example = next(iter(b.as_dataset(split=key["train_split"], shuffle_files=False).take(1)))
    except Exception:  # noqa: BLE001 -- only a warning depends on it: an unreadable build is "not here"
        return None
    found = {"data": key, "modality": training_modality(b.builder_config),
             "shape": [int(v) for v in example["source_shape"].numpy()],
             "voxel_mm": [float(v) for v in nib.affines.voxel_sizes(example["source_affine"].numpy())]}
    if store:
        try:
            files.write_json(path, found)
        except OSError:  # a read-only copy of the run: used, not stored
            pass
    return found


def write_outputs(result: Localized, out_dir: str, name: str, title: str, scale=None) -> dict:
    """``<name>_tfvae_score.nii.gz``, ``<name>_tfvae_mask.nii.gz`` (the scan's grid and affine),
    ``<name>_tfvae_overlay.png`` and ``<name>_tfvae_components.csv`` (one row per connected finding)
    in ``out_dir``; returns the scan's summary row."""
    from tfvae.evaluation import reporting

    os.makedirs(out_dir, exist_ok=True)
    with files.written_whole(os.path.join(out_dir, name + OUTPUTS[0])) as tmp:
        nib.save(nib.Nifti1Image(result.score.astype(np.float32), result.affine), tmp)
    with files.written_whole(os.path.join(out_dir, name + OUTPUTS[1])) as tmp:
        nib.save(nib.Nifti1Image(result.mask, result.affine), tmp)
    ras = [preprocessing.to_canonical(v, result.affine) for v in (result.image, result.score, result.mask)]
    with files.written_whole(os.path.join(out_dir, name + OUTPUTS[2])) as tmp:
        reporting.overlay_montage(*ras, tmp, title, scale=scale)
    files.write_csv(os.path.join(out_dir, name + OUTPUTS[3]),
                    [[c["id"], c["voxels"], f"{c['ml']:.3f}", *c["centroid_mm"], f"{c['max_score']:.6g}",
                      f"{c['mean_score']:.6g}"] for c in result.components],
                    header=["id", "voxels", "ml", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm", "max_score",
                            "mean_score"])
    chosen = result.scan_threshold
    estimates = {} if chosen is None else {
        "threshold_mode": chosen.mode + (f" (fallback to the calibrated threshold: {chosen.reason or 'not fitted'})"
                                         if chosen.fallback else ""),
        "calibrated_threshold": f"{chosen.reference_threshold:.6g}",
        # empty: not estimated (the scan's scores could not be fitted; threshold_mode or the warnings say why)
        "estimated_fpr": _estimate(chosen.estimated_fpr),
        "estimated_fpr_at_calibrated": _estimate(chosen.estimated_fpr_at_reference),
        "estimated_lesion_share": _estimate(chosen.lesion_share)}
    return {"threshold": f"{result.threshold:.6g}", **estimates, "anomalous_ml": f"{result.volume_ml:.2f}",
            "components": result.n_components, "largest_component_ml": f"{result.largest_voxels * result.voxel_ml:.2f}",
            "warnings": " | ".join(result.warnings)}


def _estimate(value: float) -> str:
    """A label-free estimate for summary.csv: four decimals, empty when NaN (not estimated)."""
    return f"{value:.4f}" if np.isfinite(value) else ""


OUTPUT_TAG = nifti.OUTPUT_TAG  # in every output name: never read back as a scan (nifti.ignored)
OUTPUTS = (f"{OUTPUT_TAG}score.nii.gz", f"{OUTPUT_TAG}mask.nii.gz", f"{OUTPUT_TAG}overlay.png",
           f"{OUTPUT_TAG}components.csv")
SUMMARY = "summary.csv"
BRAINMASK = f"{OUTPUT_TAG}brainmask.nii.gz"  # localize --preprocess: the brain mask made, in the scan's raw grid


def mask_beside(scan: str) -> str | None:
    """The brain mask beside ``scan``, ``<scan>_mask.nii[.gz]``, found as ``tfvae calibrate`` finds
    it (``scans.find``: one rule for every reader), or None."""
    from tfvae.data import scans

    return scans.find([scan])[0]["mask"]


def brain_masks(scans: list[str], mask=None) -> list[str | None]:
    """Each scan's brain mask: ``mask`` (``--mask``, one scan), else the one beside it, else None
    (its non-zero voxels)."""
    return [os.fspath(mask) if mask else mask_beside(scan) for scan in scans]


def check_outputs(scans: list[str], out_dir: str, overwrite: bool, mask=None) -> list[str]:
    """The output names of ``scans``; a one-line ``ValueError`` when ``out_dir`` is a file, two
    scans share a name, a ``mask`` is given for several scans or ``out_dir`` holds an input (a scan,
    or ``mask``; a mask beside a scan is in the scan's folder). (A scan localized there already is
    skipped by ``localize_files`` unless ``overwrite``, or refused when its settings differ: see
    ``plan``.)"""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out {out_dir} is a file, not a folder; choose a folder for the outputs")
    if mask and len(scans) != 1:
        raise ValueError(f"--mask {mask} applies to one scan, but {len(scans)} were given")
    names = [stem(f) for f in scans]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"several scans are named {', '.join(duplicated)}; their outputs would collide")
    out_real = os.path.realpath(out_dir)
    for item in scans + ([mask] if mask else []):
        if os.path.dirname(os.path.realpath(item)) == out_real:
            raise ValueError(f"--out {out_dir} holds the input {item}; choose another output folder")
    return names


# -- what a scan's outputs were made with, and resuming a folder ----------------------------------
RECORD = f"{OUTPUT_TAG}record.json"  # <name>_tfvae_record.json: written last, whole
RECORD_VERSION = 1
SETTING_NAMES = {"run": "--run-dir", "checkpoint": "--checkpoint", "model_sha256": "the model (SHA-256 of its file)",
                 "predictor": "--predictor", "fpr": "--fpr", "threshold_mode": "threshold.mode",
                 "calibration": "--calibration", "calibration_sha256": "the calibration's healthy scans (SHA-256)",
                 "preprocess": "--preprocess", "force": "--force"}
# what a record written before the setting existed was made with (the recommended map's filter sizes counted
# voxels of the validation grid before they were millimetres: such a scan is made again, not skipped)
SETTING_DEFAULTS = {"preprocess": False, "force": False,
                    "map.recommended.median_mm": "voxels (before mm)",
                    "map.recommended.gaussian_sigma_mm": "voxels (before mm)"}


def _flat(value, prefix: str = "") -> dict:
    """Nested dicts as one level of dotted keys (``{"postprocess": {"median_size": 3}}`` ->
    ``{"postprocess.median_size": 3}``), in JSON's types."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.loads(json.dumps(value))}


def batch_settings(run, config: dict, *, predictor: str, fpr: float, checkpoint: str, digest: str | None = None,
                   preprocess=None, force: bool = False) -> dict:
    """The settings every scan of one localize call is made with, as its record keeps them: the run,
    checkpoint and its model's SHA-256 (``digest``, else read from the file), predictor, FPR,
    threshold mode, calibration and the digest of its healthy scans, and the map settings the
    thresholds are keyed by (``calibration.map_settings``, flattened), and whether raw heads are
    preprocessed first with which settings (``preprocess_record``), and ``force`` (an assumed
    orientation, a brain partly outside the field of view scored). Cheap: no model is loaded."""
    from tfvae.thresholds import calibration

    name = config["threshold"]["calibration"]
    healthy = calibration.ThresholdStore(run.thresholds_path).healthy_set(name)["sha256"] if name else None
    return {"run": os.path.abspath(run.dir), "checkpoint": checkpoint,
            "model_sha256": digest or run.model_digest(checkpoint), "predictor": predictor, "fpr": float(fpr),
            "threshold_mode": config["threshold"]["mode"], "calibration": name, "calibration_sha256": healthy,
            **{f"map.{k}": v for k, v in _flat(calibration.map_settings(config)).items()},
            **preprocess_record(preprocess), "force": bool(force)}


def _file(path: str | None, known: dict | None = None) -> dict | None:
    """``{"path", "size", "mtime_ns", "sha256"}`` of an input file; the digest is taken from ``known``
    (a record's) when path, size and modification time are those it was taken at."""
    if path is None:
        return None
    path = os.path.abspath(path)
    st = os.stat(path)
    found = {"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if known and all(known.get(k) == found[k] for k in found) and known.get("sha256"):
        return {**found, "sha256": known["sha256"]}
    return {**found, "sha256": files.file_digest(path)}


def read_record(out_dir: str, name: str) -> dict | None:
    """The record of the scan named ``name`` in ``out_dir``, or None (none, or not readable)."""
    try:
        with open(os.path.join(out_dir, name + RECORD), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "settings" in record and "row" in record else None


def records(out_dir: str) -> list[dict]:
    """Every scan's record in ``out_dir``, in the order they were written."""
    try:
        names = [n[: -len(RECORD)] for n in os.listdir(out_dir) if n.endswith(RECORD) and not n.startswith(".")]
    except OSError:
        return []
    found = [r for r in (read_record(out_dir, n) for n in names) if r is not None]
    return sorted(found, key=lambda r: (r.get("finished", ""), r["row"].get("scan", "")))


def _shown(key: str, value) -> str:
    if key in ("preprocess", "force"):
        return "on" if value else "off"
    if value is None:
        return "none (its non-zero voxels)" if key == "mask" else "none"
    if key.endswith("sha256") and isinstance(value, str):
        return value[:12]
    return f"{value:g}" if isinstance(value, float) else str(value)


def differences(record: dict, settings: dict, scan: str, mask: str | None) -> list[tuple[str, str, str]]:
    """``[(setting, then, now)]``: how the settings of a done scan's ``record`` differ from
    ``settings`` with ``scan`` and its brain ``mask`` now (empty: the same outputs would be made)."""
    out = []
    old = record["settings"]
    for key in list(dict.fromkeys([*old, *settings])):
        then, now = old.get(key, SETTING_DEFAULTS.get(key)), settings.get(key, SETTING_DEFAULTS.get(key))
        if then != now:
            name = SETTING_NAMES.get(key, f"--set {key[4:]}" if key.startswith("map.") else key)
            out.append((name, _shown(key, then), _shown(key, now)))
    inputs = record.get("inputs") or {}
    then_scan = inputs.get("scan") or {}
    now_scan = _file(scan, then_scan)
    if then_scan.get("sha256") != now_scan["sha256"]:
        out.append(("scan", f"{then_scan.get('path')} (SHA-256 {_shown('sha256', then_scan.get('sha256'))})",
                    f"{now_scan['path']} (SHA-256 {_shown('sha256', now_scan['sha256'])})"))
    then_mask = inputs.get("mask")
    now_mask = _file(mask, then_mask if then_mask and then_mask.get("path") == os.path.abspath(mask or "") else None)
    if (then_mask or {}).get("path") != (now_mask or {}).get("path"):
        out.append(("brain mask", _shown("mask", (then_mask or {}).get("path")),
                    _shown("mask", (now_mask or {}).get("path"))))
    elif then_mask and then_mask.get("sha256") != now_mask["sha256"]:
        out.append(("brain mask", f"{then_mask['path']} (SHA-256 {_shown('sha256', then_mask['sha256'])})",
                    f"changed since (SHA-256 {_shown('sha256', now_mask['sha256'])})"))
    return out


LEGACY_SETTINGS = ("run", "checkpoint", "predictor", "fpr")  # what a summary.csv row of an older tfvae says


def _summary_rows(out_dir: str) -> list[dict]:
    summary = os.path.join(out_dir, SUMMARY)
    if not os.path.isfile(summary):
        return []
    with open(summary, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


class SettingsChanged(ValueError):
    """Scans of a localize call were localized in its output folder with other settings (one line)."""


def plan(scans: list[str], out_dir: str, settings: dict, *, overwrite: bool = False, mask=None,
         preprocess: bool = False) -> set[str]:
    """The scans of ``scans`` done in ``out_dir`` already with ``settings`` (and the same scan and
    brain mask): to be skipped. A scan is done when its record says so and its outputs are there; a
    scan done with other settings is a one-line ``SettingsChanged`` naming the first setting that
    differs, its value then and now, and the fix (another --out, or --overwrite). With ``overwrite``
    nothing is skipped. Scans without a record are localized (outputs a kill or a failure left are
    tfvae's, and made again); a folder written by an older tfvae (a ``summary.csv`` row, no record)
    is compared on what its row says (run, checkpoint, predictor, FPR). ``preprocess``: the scans are
    raw heads, whose brain masks are made (none is read beside them)."""
    if overwrite or not os.path.isdir(out_dir):
        return set()
    legacy = {os.path.abspath(r.get("scan", "")): r for r in _summary_rows(out_dir)
              if r.get("status", "done") == "done"}
    skip, refused = set(), []
    masks = [None] * len(scans) if preprocess else brain_masks(scans, mask)
    for scan, name, scan_mask in zip(scans, [stem(s) for s in scans], masks):
        if not all(os.path.isfile(os.path.join(out_dir, name + suffix)) for suffix in OUTPUTS):
            continue
        record = read_record(out_dir, name)
        if record is not None:
            if record["row"].get("status") != "done":
                continue
            changed = differences(record, settings, scan, scan_mask)
        elif os.path.abspath(scan) in legacy:
            row = legacy[os.path.abspath(scan)]
            then = {"run": row.get("run"), "checkpoint": row.get("checkpoint"), "predictor": row.get("predictor"),
                    "fpr": float(row["fpr"]) if row.get("fpr") else None}
            changed = [(SETTING_NAMES[k], _shown(k, then[k]), _shown(k, settings[k])) for k in LEGACY_SETTINGS
                       if then[k] != settings[k]]
        else:
            continue
        if changed:
            refused.append((name, changed))
        else:
            skip.add(scan)
    if refused:
        name, changed = refused[0]
        setting, then, now = changed[0]
        more = f" (and {len(changed) - 1} other setting(s))" if len(changed) > 1 else ""
        others = f"; {len(refused) - 1} more scan(s) there differ too" if len(refused) > 1 else ""
        raise SettingsChanged(
            f"{os.path.join(out_dir, name + OUTPUTS[0])}: {name} was localized there with {setting} {then}, this "
            f"command has {now}{more}{others}: give another --out, or pass --overwrite to localize "
            f"{'them' if len(refused) > 1 else 'it'} again with these settings")
    return skip


def write_record(out_dir: str, name: str, record: dict) -> None:
    files.write_json(os.path.join(out_dir, name + RECORD), {"version": RECORD_VERSION, **record})


def sync_summary(out_dir: str) -> None:
    """``summary.csv`` and ``index.html`` rewritten (whole) from the records in ``out_dir``: the rows
    of an older tfvae's summary that no record replaces first, then every scan's record, in the
    order they were written."""
    recorded = records(out_dir)
    if not recorded:
        return
    mine = {os.path.abspath(r["row"].get("scan", "")) for r in recorded}
    kept = [r for r in _summary_rows(out_dir) if os.path.abspath(r.get("scan", "")) not in mine]
    _write_summary_rows(os.path.join(out_dir, SUMMARY), kept + [r["row"] for r in recorded])
    write_index(out_dir)


def _write_summary_rows(path: str, rows: list[dict]) -> None:
    """``rows`` as ``summary.csv``, UTF-8 (scan names may be anything), whole; not touched when it
    holds them already."""
    import io

    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    _write_changed(path, text.getvalue())


def _write_changed(path: str, text: str) -> None:
    """``text`` to ``path`` (UTF-8, whole), unless it holds that already."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            if f.read() == text:
                return
    except (OSError, ValueError):
        pass
    with files.open_whole(path, newline="", encoding="utf-8") as f:
        f.write(text)


class LocalizeIncomplete(ValueError):
    """Some scans of a ``localize_files`` call failed; the others' outputs and summary rows are written."""


class LocalizeInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``localize_files``: the scans finished are recorded and listed; the message says
    what was finished and that the same call continues with the rest."""


def localize_files(localizer: Localizer, scans: list[str], out_dir: str, *, mask=None, overwrite: bool = False,
                   log=print, warn=print, preprocess=None) -> list[dict]:
    """Localize every scan of ``scans`` and write its outputs, its record and a ``summary.csv`` row
    to ``out_dir``; returns the rows written. A scan's brain mask is ``mask`` (one scan), else
    ``<scan>_mask.nii[.gz]`` beside it, else its non-zero voxels. A scan done there already with
    the same settings is skipped, one done with other settings refused (``plan``), unless
    ``overwrite``. After each scan its record is written and ``summary.csv`` and ``index.html`` are
    rewritten, so a kill or Ctrl-C (``LocalizeInterrupted``) leaves every finished scan listed and
    the same call completes the rest. A scan that fails (unreadable, refused, disk full) does not
    stop the others: its row says why (``status``), and ``LocalizeIncomplete`` names the failures at
    the end. With a single scan its error is raised as it is (one line naming the file).

    ``preprocess`` (True, or ``head_preprocessing.Settings``): the scans are raw heads, each
    preprocessed into ``out_dir`` first (``localize_raw``; reused when there already) and its maps
    written in its own raw grid; its brain mask is the one the preprocessing made (written as
    ``<name>_tfvae_brainmask.nii.gz``), never ``mask`` nor one beside it."""
    from tfvae.data.nifti import BadInputError

    chosen = preprocess_settings(preprocess)
    if chosen is not None:
        from tfvae.data import head_preprocessing as hp

        hp.require_simpleitk()  # before any scan: one line naming the extra
        if mask:
            from tfvae.utils.console import option

            raise ValueError(f"{option('--preprocess', 'preprocess=...')} makes each scan's brain mask: give it or "
                             f"{option('--mask', 'mask=...')}, not both")
    names = check_outputs(scans, out_dir, overwrite, mask)
    masks = [None] * len(scans) if chosen is not None else brain_masks(scans, mask)
    settings = {**localizer.settings, **preprocess_record(chosen)}
    done = plan(scans, out_dir, settings, overwrite=overwrite, mask=mask, preprocess=chosen is not None)
    if os.path.isdir(out_dir):
        sync_summary(out_dir)  # a kill between a scan's record and the summary: listed now
    rows, failed, said, started = [], [], set(), _now()
    base = {"run": settings["run"], "checkpoint": localizer.checkpoint, "predictor": localizer.predictor,
            "fpr": localizer.fpr}
    try:
        for k, (path, name, scan_mask) in enumerate(zip(scans, names, masks), 1):
            if path in done:
                log(f"{name}: already localized in {out_dir} with the same settings, skipped (--overwrite localizes "
                    "it again)")
                continue
            shown = name if len(name) <= 30 else f"{name[:14]}...{name[-13:]}"  # the line in 80 columns
            log(f"[{k}/{len(scans)}] {shown}: {'preprocessing, then ' if chosen is not None else ''}"
                "scoring ...")  # the stage a long scan is in, before its result line
            inputs = None
            try:
                inputs = {"scan": _file(path), "mask": _file(scan_mask)}
                if chosen is not None:
                    os.makedirs(out_dir, exist_ok=True)
                    result = localizer(path, preprocess=chosen, preprocess_dir=out_dir)
                else:
                    result = localizer(path, mask=scan_mask)
                for warning in result.warnings:
                    if warning not in said:  # a note on the run: once
                        warn(f"warning: {warning}")
                    said.update(localizer.notes)
                title = (f"{name}: {localizer.predictor}, mask at {100 * localizer.fpr:g}% FPR"
                         f"{localizer.calibration_words} ({result.volume_ml:.1f} ml)")
                row = write_outputs(result, out_dir, name, title,
                                    scale=(result.threshold, None))
                row = {"scan": os.path.abspath(path), **base, "brain_mask": result.brain_mask or "non-zero voxels",
                       **_preprocessed_column(result), **row, "threshold_from": localizer.threshold_source,
                       "status": "done"}
            except (BadInputError, ValueError, OSError) as e:
                message = str(e) if not isinstance(e, OSError) or not e.strerror else \
                    f"{e.filename or out_dir}: {e.strerror}"
                message = message if message.startswith((path, str(scan_mask))) else f"{path}: {message}"
                if len(scans) == 1:
                    raise (type(e)(message) if not isinstance(e, OSError) else ValueError(message)) from None
                warn(f"error: {message}")
                failed.append(message)
                row = {"scan": os.path.abspath(path), **base, "brain_mask": scan_mask or "non-zero voxels",
                       "status": f"failed: {message}"}
            write_record(out_dir, name, {"scan": os.path.abspath(path), "finished": _now(), "settings": settings,
                                         "inputs": inputs, "threshold_from": localizer.threshold_source, "row": row})
            rows.append(row)
            sync_summary(out_dir)
            if row["status"] == "done":
                log(f"{name}: {result.volume_ml:.1f} ml anomalous in {result.n_components} component(s)")
    except KeyboardInterrupt:
        try:  # Ctrl-C between a scan's record and the summary: listed all the same
            sync_summary(out_dir)
        except (OSError, ValueError):
            pass
        recorded = [read_record(out_dir, name) or {} for name in names]
        now_done = [r for r in recorded if r.get("row", {}).get("status") == "done"]
        finished = sum(1 for r in now_done if r.get("finished", "") >= started)  # by this call
        earlier = f", {len(done)} done before" if done else ""
        raise LocalizeInterrupted(
            f"interrupted: {finished} scan(s) localized in {out_dir}{earlier} (listed in its {SUMMARY} and "
            f"index.html); run the same command again to continue with the {len(scans) - len(now_done)} "
            "left") from None
    if failed:
        raise LocalizeIncomplete(f"{len(failed)} of {len(scans)} scan(s) failed (each named above and in "
                                 f"{os.path.join(out_dir, SUMMARY)}); the others are done: fix the cause and run the "
                                 "same command again to complete the rest")
    return rows


def _preprocessed_column(result: Localized) -> dict:
    """``{"preprocessed": ...}`` for a summary row of a raw head preprocessed first (empty otherwise):
    the brain in template space that was localized, and whether it was made now or reused."""
    info = result.preprocessing
    if info is None:
        return {}
    how = "reused" if info.get("reused") else "made now"
    return {"preprocessed": f"{info.get('preprocessed', '')} ({how}; maps resampled back to the scan's grid)"}


def _now() -> str:
    """The time, to the microsecond (records are ordered by it)."""
    import datetime

    return datetime.datetime.now().isoformat(timespec="microseconds")


def write_summary(path: str, rows: list[dict]) -> None:
    """Add ``rows`` to the summary CSV at ``path`` (a scan localized again replaces its row), whole
    or not at all."""
    kept = []
    if os.path.isfile(path):
        with open(path, newline="", encoding="utf-8") as f:
            again = {os.path.abspath(row["scan"]) for row in rows}  # older summaries kept paths as given
            kept = [r for r in csv.DictReader(f) if os.path.abspath(r.get("scan", "")) not in again]
    _write_summary_rows(path, kept + rows)


def write_index(out_dir: str) -> None:
    """``index.html``: every scan of ``summary.csv`` with its overlay, summary and components table,
    in one static page (relative links, no server, opens from disk). File names are URL-quoted in
    links (spaces, ``#``, non-ASCII) and HTML-escaped in text."""
    import html
    from urllib.parse import quote

    with open(os.path.join(out_dir, SUMMARY), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))

    def href(target: str) -> str:
        return html.escape(quote(target), quote=True)

    parts = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'><title>tfvae localize</title>",
             "<style>body{font-family:sans-serif;margin:2em} table{border-collapse:collapse} "
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px} img{max-width:100%}</style></head><body>",
             "<h1>Anomaly localization</h1>", f"<p>{len(rows)} scan(s). Maps and masks are NIfTI files beside this "
             "page, in each scan's own grid.</p>"]
    names = [stem(row["scan"]) for row in rows]
    parts.append("<ul>" + "".join(f"<li><a href='#{href(n)}'>{html.escape(n)}</a></li>" for n in names) + "</ul>")
    for name, row in zip(names, rows):
        parts.append(f"<section id='{html.escape(name, quote=True)}'><h2>{html.escape(name)}</h2>")
        parts.append("<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                                          for k, v in row.items()) + "</table>")
        if os.path.isfile(os.path.join(out_dir, name + OUTPUTS[2])):
            parts.append(f"<p><img src='{href(name + OUTPUTS[2])}' alt='overlay of {html.escape(name, quote=True)}'>"
                         "</p>")
        components = os.path.join(out_dir, name + OUTPUTS[3])
        if os.path.isfile(components):
            with open(components, newline="", encoding="utf-8") as f:
                table = list(csv.reader(f))
            parts.append("<table>" + "".join(
                "<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{html.escape(c)}</{'th' if i == 0 else 'td'}>"
                                 for c in r) + "</tr>" for i, r in enumerate(table)) + "</table>")
        links = " ".join(f"<a href='{href(name + suffix)}'>{html.escape(name + suffix)}</a>"
                         for suffix in OUTPUTS + (BRAINMASK,) if os.path.isfile(os.path.join(out_dir, name + suffix)))
        parts.append(f"<p>{links}</p></section>")
    parts.append("</body></html>")
    _write_changed(os.path.join(out_dir, "index.html"), "\n".join(parts) + "\n")
