"""Calibrate a trained run on healthy scans of your own scanner: thresholds and the recommended map's
filter sizes from them instead of the training data's validation split.

    tfvae calibrate --run-dir R --name mysite healthy_scans/ [more scans or folders]
        [--predictors recommended intensity ...] [--checkpoint final] [--set KEY=VALUE ...] [--force]

Every scan goes through the run's preprocessing (as localize's); a scan's brain mask is
<scan>_mask.nii[.gz] beside it when there is one, else its non-zero voxels. The thresholds (at every
rate a per-scan threshold needs) and the recommended map's sizes are stored in R/thresholds.json
under the name, keyed by the scans' content (calibrating the same name again replaces the set).
Use them with --calibration NAME in evaluate and localize (or threshold.calibration=NAME). From
Python: ``tfvae.Run(run_dir).calibrate(scans, name=...)`` (see tfvae/thresholds/healthy_scans.py).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfvae.commands import INTERRUPTED, add_run_dir, add_set, entry, os_error, parser, parse_quietly  # noqa: E402
from tfvae.config.predictor_names import LOCALIZABLE  # noqa: E402

FEW_SCANS = 3  # fewer healthy scans than this: the measured FPR spread is wide (docs/results_phantom.md)


def parse_args(argv=None):
    p = parser(__doc__)
    add_run_dir(p)
    p.add_argument("scans", nargs="+", help="healthy NIfTI scans of your scanner, or folders of them")
    p.add_argument("--name", required=True, help="what to call this calibration (letters, digits, _ . -)")
    p.add_argument("--predictors", nargs="+", choices=LOCALIZABLE, help="the maps to calibrate (default: all "
                   "that localize can make)")
    add_set(p)
    p.add_argument("--force", action="store_true", help="use a scan even when part of its brain lies outside "
                                                        "the run's field of view")
    return p.parse_args(argv)


@entry
def main(argv=None) -> int:
    args = parse_quietly(parse_args, argv)
    from tfvae import config as config_lib
    from tfvae.thresholds import calibration
    from tfvae.data import pipelines as data
    from tfvae.data.nifti import BadInputError
    from tfvae.runs.run import Run, RunDirError

    try:
        config_lib.check_value("threshold.calibration", args.name, "--name")
        run = Run(args.run_dir)
        found = run.calibrate(args.scans, name=args.name, predictors=args.predictors, overrides=args.set,
                              checkpoint=args.checkpoint, force=args.force)
    except (config_lib.ConfigError, RunDirError, data.DataError, BadInputError, calibration.CalibrationError,
            ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {os_error(e, args.run_dir)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: thresholds.json is written whole or not at all
        print(f"\ninterrupted (Ctrl-C) before calibration {args.name!r} was complete; the same command makes it "
              "again", file=sys.stderr)
        return INTERRUPTED
    left_out = found.get("left_out", [])
    print(f"calibration {args.name!r}: {found['volumes']} healthy scan(s)"
          + (f" ({len(left_out)} left out)" if left_out else "") + f", {found['slices']} slices, stored in "
          f"{run.thresholds_path}")
    for item in left_out:
        print(f"left out {item['scan']}: {item['reason']}; {item['advice']}")
    for item in found.get("warnings", []):
        print(f"warning: {item['scan']}: {item['reason']}; {item['advice']}", file=sys.stderr)
    for predictor, thresholds in found["thresholds"].items():
        print(f"  {predictor}: threshold {thresholds['0.01']:.4g} at 1% FPR, {thresholds['0.05']:.4g} at 5%")
    if found["volumes"] < FEW_SCANS:
        print(f"warning: {found['volumes']} healthy scan(s); with fewer than {FEW_SCANS} the false-positive rate "
              "varies widely from scan to scan (docs/results_phantom.md)", file=sys.stderr)
    print(f"use it: tfvae localize --run-dir {args.run_dir} --calibration {args.name} ... "
          f"(or tfvae evaluate ... --calibration {args.name})")
    return 0
