"""Anomaly maps for scans that are in no dataset: what ``scripts/localize.py`` runs.

A scan goes through exactly the preprocessing of the run's training data
(``preprocessing.volume_to_slices`` with the run's image size, field of view and slice selection;
orientation from the affine, brain mask from the given mask or the non-zero voxels, brain z-score),
every kept slice is scored in batches, the maps are post-processed as the config says
(``tfvae.postprocessing``) and thresholded at a false-positive rate calibrated on the run's healthy
validation slices, and score and mask are written back into the scan's own grid. Slices the
preprocessing skips (little brain) get score 0.

``Localizer`` (what ``Run.localize`` uses) holds the fitted scorer and the threshold of one run,
predictor and FPR, and localizes scans one after another; ``localize_files`` does what
``scripts/localize.py`` does: scans and folders in, maps, masks, overlays and ``summary.csv`` out,
never writing over an input or, unless asked, an earlier output.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re

import nibabel as nib
import numpy as np

from tfvae import files, nifti, postprocessing, preprocessing, scan_threshold
from tfvae.data import clip as clip_lib
from tfvae.scan_threshold import HealthyReference, ScanThreshold
from tfvae.scoring import Scorer, Volume, variants

MODALITY_ALIASES = {"t2": "t2", "t2w": "t2", "flair": "flair", "t2f": "flair", "t1": "t1", "t1w": "t1",
                    "t1n": "t1", "t1ce": "t1ce", "t1c": "t1ce", "t1gd": "t1ce", "pd": "pd", "pdw": "pd"}


def modality_from_name(path: str) -> str | None:
    """The MRI modality a file name suggests (``..._t1ce.nii.gz`` -> "t1ce"), or None."""
    name = re.sub(r"\.nii(\.gz)?$", "", os.path.basename(path).lower())
    found = [MODALITY_ALIASES[t] for t in re.split(r"[_.\-\s]+", name) if t in MODALITY_ALIASES]
    return found[-1] if found else None


def scan_warnings(path: str, data: np.ndarray, affine: np.ndarray, reference: dict) -> list[str]:
    """Differences from what the run was trained on (modality by file name, shape, voxel size)."""
    warnings = []
    modality = modality_from_name(path)
    if modality and modality != reference["modality"]:
        warnings.append(f"{path}: looks like {modality}, the run was trained on {reference['modality']}; "
                        "scoring it anyway")
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


def slice_scan(data: np.ndarray, affine: np.ndarray, *, image_size: int, fov_mm: float, min_brain_fraction: float,
               mask: np.ndarray | None = None, clip: float | None = None, force: bool = False):
    """``(sliced, outside)``: a scan that is in no dataset through the run's preprocessing
    (``preprocessing.volume_to_slices``, then ``data.clip``), and the sentence saying how much of its
    brain lies outside the field of view (None when under ``preprocessing.MAX_OUTSIDE_FOV``; more is
    a one-line ``ValueError`` unless ``force``)."""
    sliced = preprocessing.volume_to_slices(data, affine, mask=mask, image_size=image_size, fov_mm=fov_mm,
                                            min_brain_fraction=min_brain_fraction)
    outside = (f"{100 * sliced.outside_fov:.1f}% of the brain lies outside the run's {fov_mm:g} mm field of view"
               if sliced.outside_fov > preprocessing.MAX_OUTSIDE_FOV else None)
    if outside and not force:
        raise ValueError(f"{outside} and would not be scored (check the voxel sizes in the header); pass --force "
                         "(force=True) to score the rest anyway")
    return dataclasses.replace(sliced, image=clip_lib(sliced.image, clip)), outside


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
        from tfvae import data
        from tfvae.predictor_names import LOCALIZABLE

        if predictor not in LOCALIZABLE:
            raise ValueError(f"predictor {predictor!r}: choose one of {', '.join(LOCALIZABLE)} "
                             "(the ensemble needs labelled scans)")
        if not 0 < fpr < 1:
            raise ValueError(f"fpr must be between 0 and 1, got {fpr}")
        self.run, self.config, self.predictor, self.fpr, self.checkpoint = run, config, predictor, fpr, checkpoint
        self.force = force
        from tfvae import calibration

        self.scorer = run.scorer([predictor], config=config, checkpoint=checkpoint)
        store = calibration.ThresholdStore(run.thresholds_path)
        key = store.key(run.model_digest(checkpoint), predictor, config)
        healthy = (f"the healthy scans of calibration {config['threshold']['calibration']}"
                   if config["threshold"]["calibration"] else "the validation slices")
        self.threshold_source = ("thresholds.json" if store.threshold(key, fpr) is not None
                                 else f"calibrated now on {healthy} (stored in thresholds.json)")
        self.reference = run.healthy_reference(predictor, fpr, config=config, checkpoint=checkpoint,
                                               scorer=self.scorer)
        self.scorer.release()  # the healthy volumes' network outputs: not needed to score scans
        self.threshold = self.reference.threshold(fpr)  # the calibrated one; each scan's moves from it
        self.mode = config["threshold"]["mode"]
        self.builder_config = data.builder(config["data"]).builder_config
        train_example = next(iter(data.load_split(config["data"], config["data"]["train_split"]).take(1)))
        self.training_scans = {"modality": getattr(self.builder_config, "modality", "t2"),
                               "shape": [int(v) for v in train_example["source_shape"].numpy()],
                               "voxel_mm": nib.affines.voxel_sizes(train_example["source_affine"].numpy()).tolist()}

    def __call__(self, scan, *, mask=None, affine=None) -> Localized:
        """``scan``: a NIfTI path, or an array with its ``affine``; ``mask``: a brain mask (path or
        array on the scan's grid). Raises ``nifti.BadInputError`` / ``ValueError`` with one line."""
        from tfvae.nifti import check_same_grid, load_volume

        path = os.fspath(scan) if isinstance(scan, (str, os.PathLike)) else "array"
        notes: list[str] = []  # what a forced read assumed
        if path != "array":
            data, affine = load_volume(path, allow_unknown_orientation=self.force, notes=notes)
        elif affine is None:
            raise ValueError("an array scan needs its affine (affine=...)")
        else:
            data, affine = np.asarray(scan, np.float32), np.asarray(affine, np.float64)
        if isinstance(mask, (str, os.PathLike)):
            mask_data, mask_affine = load_volume(os.fspath(mask), allow_unknown_orientation=self.force, notes=notes)
            check_same_grid(os.fspath(mask), mask_data, mask_affine, path, data, affine, "brain mask")
            mask = mask_data
        warnings = notes + scan_warnings(path, data, affine, self.training_scans)
        result = localize(self.scorer, data, affine, predictor=self.predictor, reference=self.reference, fpr=self.fpr,
                          settings=self.config["postprocess"], image_size=self.config["data"]["image_size"],
                          fov_mm=self.builder_config.fov_mm, min_brain_fraction=self.builder_config.min_brain_fraction,
                          mask=mask, clip=self.config["data"]["clip"], force=self.force, mode=self.mode)
        result.warnings, result.image = warnings + [f"{path}: {w}" for w in result.warnings], data
        return result


def write_outputs(result: Localized, out_dir: str, name: str, title: str, scale=None) -> dict:
    """``<name>_tfvae_score.nii.gz``, ``<name>_tfvae_mask.nii.gz`` (the scan's grid and affine),
    ``<name>_tfvae_overlay.png`` and ``<name>_tfvae_components.csv`` (one row per connected finding)
    in ``out_dir``; returns the scan's summary row."""
    from tfvae import reporting

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


def scan_files(items) -> list[str]:
    """The NIfTI scans among ``items`` (files, or folders searched for *.nii / *.nii.gz, skipping
    ``*_seg`` and ``*_mask`` files and tfvae's own outputs); a missing item or an empty folder is a
    one-line ``ValueError``."""
    scans = []
    for item in items:
        if os.path.isdir(item):
            try:
                names = sorted(n for n in os.listdir(item) if not nifti.ignored(n))
            except PermissionError:
                raise ValueError(f"{item}: cannot be read (permission denied)") from None
            found = [os.path.join(item, n) for n in names if nifti.strip_nifti_suffix(n) is not None
                     and not re.search(r"_(seg|mask)\.nii(\.gz)?$", n)]
            if not found:
                dicom = [n for n in names[:1000] if nifti.is_dicom(os.path.join(item, n))]
                if dicom:
                    raise ValueError(f"{item}: holds DICOM files ({len(dicom)}, e.g. {dicom[0]}) and no NIfTI scan: "
                                     f"{nifti.DICOM_HINT}")
                raise ValueError(f"{item}: no .nii or .nii.gz scans in this folder")
            scans += found
        elif os.path.isfile(item):
            scans.append(item)
        else:
            raise ValueError(f"{item}: no such file or folder")
    return scans


def stem(path: str) -> str:
    return re.sub(r"\.nii(\.gz)?$", "", os.path.basename(path))


def check_outputs(scans: list[str], out_dir: str, overwrite: bool, mask=None) -> list[str]:
    """The output names of ``scans``; a one-line ``ValueError`` when ``out_dir`` is a file, two
    scans share a name, a ``mask`` is given for several scans or ``out_dir`` holds an input.
    (A scan whose outputs are all there already is skipped by ``localize_files`` unless
    ``overwrite``: see ``done_scans``.)"""
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


def done_scans(scans: list[str], names: list[str], out_dir: str) -> set[str]:
    """The scans localized in ``out_dir`` already: every output there and a ``summary.csv`` row
    saying so (a scan that failed, or whose outputs a kill left incomplete, is not done)."""
    summary = os.path.join(out_dir, SUMMARY)
    finished = set()
    if os.path.isfile(summary):
        with open(summary, newline="") as f:
            # absolute paths (summaries before 0.1 kept the path as given, relative to where it ran)
            finished = {os.path.abspath(r["scan"]) for r in csv.DictReader(f) if r.get("status", "done") == "done"}
    return {path for path, name in zip(scans, names)
            if os.path.abspath(path) in finished and all(os.path.isfile(os.path.join(out_dir, name + suffix)) for suffix in OUTPUTS)}


class LocalizeIncomplete(ValueError):
    """Some scans of a ``localize_files`` call failed; the others' outputs and summary rows are written."""


def localize_files(localizer: Localizer, scans: list[str], out_dir: str, *, mask=None, overwrite: bool = False,
                   log=print, warn=print) -> list[dict]:
    """Localize every scan of ``scans`` and write its outputs and a ``summary.csv`` row to
    ``out_dir``; returns the rows. A scan localized there already (``done_scans``) is skipped unless
    ``overwrite`` (outputs of a scan that failed or was cut short are ours and replaced). A scan
    that fails (unreadable, refused, disk full) does not stop the others: its row in
    ``summary.csv`` says why (``status``), and ``LocalizeIncomplete`` names the failures at the end,
    so that the same command run again completes the rest. With a single scan its error is raised
    as it is (one line naming the file)."""
    from tfvae.nifti import BadInputError

    names = check_outputs(scans, out_dir, overwrite, mask)
    done = set() if overwrite else done_scans(scans, names, out_dir)
    for path, name in zip(scans, names):  # whole outputs summary.csv does not list: not replaced unasked
        if path not in done and not overwrite and all(os.path.isfile(os.path.join(out_dir, name + s))
                                                      for s in OUTPUTS):
            raise ValueError(f"{os.path.join(out_dir, name + OUTPUTS[0])} already exists; pass --overwrite to replace "
                             "outputs")
    rows, failed = [], []
    base = {"run": os.path.abspath(localizer.run.dir), "checkpoint": localizer.checkpoint,
            "predictor": localizer.predictor, "fpr": localizer.fpr}
    for path, name in zip(scans, names):
        if path in done:
            log(f"{name}: already localized in {out_dir}, skipped (--overwrite localizes it again)")
            continue
        try:
            result = localizer(path, mask=mask)
            for warning in result.warnings:
                warn(f"warning: {warning}")
            row = write_outputs(result, out_dir, name, f"{name}: {localizer.predictor}, mask at {localizer.fpr:g} "
                                                       f"FPR ({result.volume_ml:.1f} ml)", scale=(result.threshold, None))
        except (BadInputError, ValueError, OSError) as e:
            message = str(e) if not isinstance(e, OSError) or not e.strerror else \
                f"{e.filename or out_dir}: {e.strerror}"
            message = message if message.startswith((path, str(mask))) else f"{path}: {message}"
            if len(scans) == 1:
                raise (type(e)(message) if not isinstance(e, OSError) else ValueError(message)) from None
            warn(f"error: {message}")
            failed.append(message)
            rows.append({"scan": os.path.abspath(path), **base, "status": f"failed: {message}"})
            continue
        rows.append({"scan": os.path.abspath(path), **base, **row, "threshold_from": localizer.threshold_source,
                     "status": "done"})
        log(f"{name}: {result.volume_ml:.1f} ml anomalous in {result.n_components} component(s)")
    if rows:
        write_summary(os.path.join(out_dir, SUMMARY), rows)
        write_index(out_dir)
    if failed:
        raise LocalizeIncomplete(f"{len(failed)} of {len(scans)} scan(s) failed (each named above and in "
                                 f"{os.path.join(out_dir, SUMMARY)}); the others are done: fix the cause and run the "
                                 "same command again to complete the rest")
    return rows


def write_summary(path: str, rows: list[dict]) -> None:
    """Add ``rows`` to the summary CSV at ``path`` (a scan localized again replaces its row), whole
    or not at all."""
    kept = []
    if os.path.isfile(path):
        with open(path, newline="") as f:
            again = {os.path.abspath(row["scan"]) for row in rows}  # older summaries kept paths as given
            kept = [r for r in csv.DictReader(f) if os.path.abspath(r.get("scan", "")) not in again]
    files.write_csv(path, kept + rows, header=list(dict.fromkeys([k for r in kept + rows for k in r])))


def write_index(out_dir: str) -> None:
    """``index.html``: every scan of ``summary.csv`` with its overlay, summary and components table,
    in one static page (relative links, no server, opens from disk)."""
    import html

    with open(os.path.join(out_dir, SUMMARY), newline="") as f:
        rows = list(csv.DictReader(f))
    parts = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'><title>tfvae localize</title>",
             "<style>body{font-family:sans-serif;margin:2em} table{border-collapse:collapse} "
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px} img{max-width:100%}</style></head><body>",
             "<h1>Anomaly localization</h1>", f"<p>{len(rows)} scan(s). Maps and masks are NIfTI files beside this "
             "page, in each scan's own grid.</p>"]
    for row in rows:
        name = stem(row["scan"])
        parts.append(f"<section id='{html.escape(name)}'><h2>{html.escape(name)}</h2>")
        parts.append("<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                                          for k, v in row.items()) + "</table>")
        parts.append(f"<p><img src='{html.escape(name + OUTPUTS[2])}' alt='overlay of {html.escape(name)}'></p>")
        components = os.path.join(out_dir, name + OUTPUTS[3])
        if os.path.isfile(components):
            with open(components, newline="") as f:
                table = list(csv.reader(f))
            parts.append("<table>" + "".join(
                "<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{html.escape(c)}</{'th' if i == 0 else 'td'}>"
                                 for c in r) + "</tr>" for i, r in enumerate(table)) + "</table>")
        links = " ".join(f"<a href='{html.escape(name + suffix)}'>{html.escape(name + suffix)}</a>" for suffix in OUTPUTS)
        parts.append(f"<p>{links}</p></section>")
    parts.append("</body></html>")
    files.write_text(os.path.join(out_dir, "index.html"), "\n".join(parts))
