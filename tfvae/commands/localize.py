"""Anomaly maps, calibrated masks and a report for new scans, from a trained run.

    python scripts/localize.py --run-dir R scan_t2.nii.gz [more scans or folders] --out OUT
        [--predictor recommended] [--fpr 0.01] [--mask brainmask.nii.gz] [--set KEY=VALUE ...] [--overwrite]
        [--preprocess]

For each scan, in the scan's own shape and affine: OUT/<name>_tfvae_score.nii.gz (float anomaly
score), OUT/<name>_tfvae_mask.nii.gz (binary, thresholded at the false-positive rate --fpr
calibrated on the run's healthy validation slices -- or on your own healthy scans, --calibration --
and moved with the scan's own score distribution, threshold.mode), OUT/<name>_tfvae_overlay.png, and a line of
OUT/summary.csv (appended to when OUT has one). Folders are searched for *.nii / *.nii.gz (files
ending in _seg or _mask, and tfvae's own outputs, are skipped); a scan's brain mask is --mask, else
<scan>_mask.nii[.gz] beside it, else its non-zero voxels. Input files are only read; OUT may not
hold an input. Each scan finished is recorded with its settings (<name>_tfvae_record.json): the same
command run again (after Ctrl-C, a kill or a failure) localizes only what is left; a scan done with
other settings is refused, naming the setting, unless --overwrite. With --preprocess each scan is a
raw head (skull on, any pose: needs ``pip install tfvae[preprocess]``): tfvae preprocess runs on it
first, writing OUT/<name>_tfvae_preprocessed.nii.gz, _brainmask.nii.gz and _preprocessing.json
(reused by a later call when the scan and settings are the same), the brain is localized in
template space and the maps are carried back into the scan's own raw grid (0 outside the brain
mask). From Python: ``tfvae.Run(run_dir).localize(scan)`` (see tfvae/evaluation/localization.py).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfvae.commands import add_run_dir, add_set, entry, os_error, parser  # noqa: E402
from tfvae.config.predictor_names import LOCALIZABLE  # noqa: E402


def parse_args(argv=None):
    p = parser(__doc__)
    add_run_dir(p)
    p.add_argument("scans", nargs="+", help="NIfTI scans, or folders of them")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--predictor", default="recommended", choices=LOCALIZABLE, help="which map")
    p.add_argument("--fpr", type=float, default=0.01, help="false-positive rate on healthy validation brain "
                                                          "pixels that sets the threshold")
    p.add_argument("--mask", help="a brain mask for the (single) scan; default: its non-zero voxels")
    p.add_argument("--calibration", metavar="NAME", help="thresholds from the healthy scans calibrated as NAME "
                   "(tfvae calibrate) instead of the validation slices")
    add_set(p, "override config keys (e.g. postprocess.min_component_voxels=8)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--preprocess", action="store_true", help="the scans are raw heads (skull on, any pose): "
                   "skull-strip and register each to the template first (tfvae preprocess, into OUT), maps "
                   "written in the raw scan's grid; needs pip install tfvae[preprocess]")
    p.add_argument("--force", action="store_true", help="score a scan even when part of its brain lies outside "
                                                        "the run's field of view, or when its header has no "
                                                        "orientation (the assumption is written into the warnings)")
    return p.parse_args(argv)


@entry
def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return _main(args)
    except KeyboardInterrupt as e:  # Ctrl-C: one line, no traceback; what was finished is recorded in OUT
        # localization.LocalizeInterrupted says what was finished; a bare one came before any scan
        print(str(e) or "interrupted before any scan was localized; run the same command again to start",
              file=sys.stderr)
        return 130


def _main(args) -> int:
    from tfvae import config as config_lib
    from tfvae.runs.run import Run, RunDirError

    try:  # a mistyped scan or run folder, said before TensorFlow loads (then every input is read fully)
        missing = next((s for s in args.scans if not os.path.exists(s)), None)
        if missing is not None:
            raise ValueError(f"{missing}: no such file or folder")
        Run(args.run_dir).config(args.set)
    except (config_lib.ConfigError, RunDirError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"loading TensorFlow and the model of {args.run_dir} ...", flush=True)  # ~10-20 s said, not silent
    from tfvae.utils.console import quiet_tensorflow

    quiet_tensorflow()  # after parsing: --help stays instant
    from tfvae import config as config_lib
    from tfvae.data import pipelines as data, scans
    from tfvae.evaluation import localization
    from tfvae.data.nifti import BadInputError
    from tfvae.runs.run import Run, RunDirError
    from tfvae.utils.rundir import lock

    if args.preprocess:
        from tfvae.data import head_preprocessing as hp

        try:
            hp.require_simpleitk()
        except hp.MissingExtraError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if args.mask:
            print("error: --preprocess makes each scan's brain mask: give it or --mask, not both", file=sys.stderr)
            return 2
    run = Run(args.run_dir)
    overrides = args.set + ([f"threshold.calibration={args.calibration}"] if args.calibration else [])
    try:
        files = scans.scan_files(args.scans)
        localization.check_outputs(files, args.out, args.overwrite, args.mask)  # before the model loads
        if not args.overwrite and os.path.isdir(args.out):  # a scan done with other settings: refused now
            settings = localization.batch_settings(run, run.config(overrides), predictor=args.predictor, fpr=args.fpr,
                                                   checkpoint=args.checkpoint, preprocess=args.preprocess,
                                                   force=args.force)
            localization.plan(files, args.out, settings, mask=args.mask, preprocess=args.preprocess)
    except (config_lib.ConfigError, RunDirError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {os_error(e)}", file=sys.stderr)
        return 2
    try:
        with run.lock("localize"), lock(args.out, "localize"):  # one job at a time on the run and on OUT
            localizer = localization.Localizer(run, run.config(overrides), predictor=args.predictor, fpr=args.fpr,
                                               checkpoint=args.checkpoint, force=args.force)
            localization.localize_files(localizer, files, args.out, mask=args.mask, overwrite=args.overwrite,
                                        warn=lambda line: print(line, file=sys.stderr),
                                        preprocess=args.preprocess or None)
    except localization.LocalizeIncomplete as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (config_lib.ConfigError, RunDirError, data.DataError, BadInputError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)  # a calibration error is a ValueError too
        return 2
    except OSError as e:
        print(f"error: {os_error(e)}", file=sys.stderr)
        return 2
    print(f"maps, masks, overlays and components (<scan>_tfvae_*), summary.csv and index.html (open it in a "
          f"browser): {args.out}")
    return 0
