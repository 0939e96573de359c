#!/usr/bin/env python
"""Anomaly maps, calibrated masks and a report for new scans, from a trained run.

    python scripts/localize.py --run-dir R scan_t2.nii.gz [more scans or folders] --out OUT
        [--predictor recommended] [--fpr 0.05] [--mask brainmask.nii.gz] [--set KEY=VALUE ...] [--overwrite]

For each scan, in the scan's own shape and affine: OUT/<name>_score.nii.gz (float anomaly score),
OUT/<name>_mask.nii.gz (binary, thresholded at the false-positive rate --fpr calibrated on the
run's healthy validation slices), OUT/<name>_overlay.png, and a line of OUT/summary.csv. Folders
are searched for *.nii / *.nii.gz (files ending in _seg or _mask are skipped). Input files are only
read; outputs are never overwritten without --overwrite.
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

OUTPUTS = ("_score.nii.gz", "_mask.nii.gz", "_overlay.png")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", required=True, help="a run directory written by scripts/train.py")
    p.add_argument("scans", nargs="+", help="NIfTI scans, or folders of them")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--predictor", default="recommended", help="which map (default: recommended)")
    p.add_argument("--fpr", type=float, default=0.05, help="false-positive rate on healthy validation brain "
                                                          "pixels that sets the threshold (default: 0.05)")
    p.add_argument("--mask", help="a brain mask for the (single) scan; default: its non-zero voxels")
    p.add_argument("--checkpoint", choices=("final", "best", "last"), default="final",
                   help="which saved model (default: final; see tfvae.training.MODEL_FILES)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override config keys "
                   "(e.g. postprocess.min_component_voxels=8)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return p.parse_args(argv)


def scan_files(items) -> list[str]:
    files = []
    for item in items:
        if os.path.isdir(item):
            found = sorted(glob.glob(os.path.join(item, "*.nii")) + glob.glob(os.path.join(item, "*.nii.gz")))
            found = [f for f in found if not re.search(r"_(seg|mask)\.nii(\.gz)?$", f)]
            if not found:
                raise ValueError(f"{item}: no .nii or .nii.gz scans in this folder")
            files += found
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise ValueError(f"{item}: no such file or folder")
    return files


def stem(path: str) -> str:
    return re.sub(r"\.nii(\.gz)?$", "", os.path.basename(path))


def main(argv=None) -> int:
    args = parse_args(argv)
    from tfvae import config as config_lib
    from tfvae.predictors import ALL_PREDICTORS

    def fail(message):
        print(f"error: {message}", file=sys.stderr)
        return 2

    try:
        config = config_lib.load(os.path.join(args.run_dir, "config.json"), args.set)
        files = scan_files(args.scans)
    except (config_lib.ConfigError, ValueError) as e:
        return fail(e)
    if args.predictor not in ALL_PREDICTORS or args.predictor == "ensemble":
        return fail(f"--predictor {args.predictor!r}: choose one of "
                    f"{', '.join(p for p in ALL_PREDICTORS if p != 'ensemble')} (the ensemble needs labelled scans)")
    if not 0 < args.fpr < 1:
        return fail(f"--fpr must be between 0 and 1, got {args.fpr}")
    if args.mask and len(files) != 1:
        return fail(f"--mask {args.mask} applies to one scan, but {len(files)} were given")
    names = [stem(f) for f in files]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        return fail(f"several scans are named {', '.join(duplicated)}; their outputs would collide")
    existing = [os.path.join(args.out, n + suffix) for n in names for suffix in OUTPUTS]
    existing = [p for p in existing + [os.path.join(args.out, "summary.csv")] if os.path.exists(p)]
    if existing and not args.overwrite:
        return fail(f"{existing[0]} already exists; pass --overwrite to replace outputs")
    inputs = {os.path.realpath(f) for f in files}
    if any(os.path.realpath(p) in inputs for p in existing):
        return fail(f"{existing[0]} is one of the input scans; choose another --out")

    import keras
    import nibabel as nib
    import numpy as np

    from tfvae import data, evaluation, localization, preprocessing, reporting
    from tfvae.nifti import BadInputError, check_same_grid, load_volume
    from tfvae.model import load
    from tfvae.training import MODEL_FILES

    model_path = os.path.join(args.run_dir, MODEL_FILES[args.checkpoint])
    if not os.path.isfile(model_path):
        return fail(f"{model_path} not found (train the run first, or pick --checkpoint)")
    keras.utils.set_random_seed(config["seed"])
    model = load(model_path)
    scorer = evaluation.Scorer(model, config, [args.predictor])
    builder_config = data.builder(config["data"]).builder_config
    settings = config["postprocess"]

    validation = data.load_split(config["data"], config["data"]["validation_split"])
    scorer.fit(validation, stored=localization.stored_reference(args.run_dir, config))
    threshold = localization.stored_thresholds(args.run_dir, config, args.predictor, args.fpr)
    if threshold is None:
        print(f"calibrating the {args.predictor} threshold at {args.fpr:g} FPR on the run's validation slices ...")
        threshold = evaluation.calibrate(scorer, validation, [args.predictor], settings, fprs={"t": args.fpr})
        threshold = threshold["postprocessed" if "postprocessed" in threshold else "raw"][args.predictor]["t"]
    train_example = next(iter(data.load_split(config["data"], config["data"]["train_split"]).take(1)))
    reference = {"modality": getattr(builder_config, "modality", "t2"),
                 "shape": [int(v) for v in train_example["source_shape"].numpy()],
                 "voxel_mm": nib.affines.voxel_sizes(train_example["source_affine"].numpy()).tolist()}

    os.makedirs(args.out, exist_ok=True)
    rows = []
    for path, name in zip(files, names):
        try:
            scan, affine = load_volume(path)
            mask = None
            if args.mask:
                mask, mask_affine = load_volume(args.mask)
                check_same_grid(args.mask, mask, mask_affine, path, scan, affine, "brain mask")
            for warning in localization.scan_warnings(path, scan, affine, reference):
                print(f"warning: {warning}", file=sys.stderr)
            result = localization.localize(
                scorer, scan, affine, predictor=args.predictor, threshold=threshold, settings=settings,
                image_size=config["data"]["image_size"], fov_mm=builder_config.fov_mm,
                min_brain_fraction=builder_config.min_brain_fraction, mask=mask, clip=config["data"]["clip"])
        except (BadInputError, ValueError) as e:
            message = str(e) if str(e).startswith(path) or str(e).startswith(str(args.mask)) else f"{path}: {e}"
            return fail(message)
        nib.save(nib.Nifti1Image(result.score.astype(np.float32), affine), os.path.join(args.out, name + OUTPUTS[0]))
        nib.save(nib.Nifti1Image(result.mask, affine), os.path.join(args.out, name + OUTPUTS[1]))
        ras = [preprocessing.to_canonical(v, affine) for v in (scan, result.score, result.mask)]
        reporting.overlay_montage(*ras, os.path.join(args.out, name + OUTPUTS[2]),
                                  f"{name}: {args.predictor}, mask at {args.fpr:g} FPR ({result.volume_ml:.1f} ml)")
        rows.append({"scan": path, "predictor": args.predictor, "threshold": f"{threshold:.6g}",
                     "fpr": args.fpr, "anomalous_ml": f"{result.volume_ml:.2f}", "components": result.components,
                     "largest_component_ml": f"{result.largest_voxels * result.voxel_ml:.2f}"})
        print(f"{name}: {result.volume_ml:.1f} ml anomalous in {result.components} component(s)")
    with open(os.path.join(args.out, "summary.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"maps, masks, overlays and summary.csv: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
