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
                   help="which saved model (default: final; see tfvae.run.MODEL_FILES)")
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

    def fail(message):
        print(f"error: {message}", file=sys.stderr)
        return 2

    try:
        files = scan_files(args.scans)
    except ValueError as e:
        return fail(e)
    if args.mask and len(files) != 1:
        return fail(f"--mask {args.mask} applies to one scan, but {len(files)} were given")
    names = [stem(f) for f in files]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        return fail(f"several scans are named {', '.join(duplicated)}; their outputs would collide")
    from tfvae.localization import OUTPUTS, Localizer, write_outputs

    existing = [os.path.join(args.out, n + suffix) for n in names for suffix in OUTPUTS]
    existing = [p for p in existing + [os.path.join(args.out, "summary.csv")] if os.path.exists(p)]
    if existing and not args.overwrite:
        return fail(f"{existing[0]} already exists; pass --overwrite to replace outputs")
    inputs = {os.path.realpath(f) for f in files}
    if any(os.path.realpath(p) in inputs for p in existing):
        return fail(f"{existing[0]} is one of the input scans; choose another --out")

    from tfvae import data
    from tfvae.nifti import BadInputError
    from tfvae.run import Run, RunDirError

    run = Run(args.run_dir)
    try:
        config = run.config(args.set)
        localizer = Localizer(run, config, predictor=args.predictor, fpr=args.fpr, checkpoint=args.checkpoint)
    except (config_lib.ConfigError, RunDirError, data.DataError, ValueError) as e:
        return fail(e)
    rows = []
    for path, name in zip(files, names):
        try:
            result = localizer(path, mask=args.mask)
        except (BadInputError, ValueError) as e:
            message = str(e) if str(e).startswith(path) or str(e).startswith(str(args.mask)) else f"{path}: {e}"
            return fail(message)
        for warning in result.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        row = write_outputs(result, args.out, name,
                            f"{name}: {args.predictor}, mask at {args.fpr:g} FPR ({result.volume_ml:.1f} ml)")
        rows.append({"scan": path, "predictor": args.predictor, "fpr": args.fpr, **row})
        print(f"{name}: {result.volume_ml:.1f} ml anomalous in {result.n_components} component(s)")
    with open(os.path.join(args.out, "summary.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"maps, masks, overlays and summary.csv: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
