"""Evaluate a trained run: every predictor's anomaly maps on the test split, the paper's table.

    python scripts/evaluate.py --run-dir runs/beta10 [--predictors rec_error rec_grad ...]
        [--projection-steps 100] [--checkpoint final|best|last] [--set KEY=VALUE ...]
        [--out DIR] [--overwrite]

Writes DIR (default RUN/eval): results.json / .csv / .md, maps/<volume>_<predictor>.nii.gz in
each source volume's grid, figures/*.png, and the figures to TensorBoard (RUN/logs/eval). A
different test dataset: --set data.name=... data.config=... data.test_split=...
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfvae.commands import INTERRUPTED, add_run_dir, add_set, entry, os_error, parser  # noqa: E402
from tfvae.config.predictor_names import ALL_PREDICTORS  # noqa: E402



def parse_args(argv=None):
    p = parser(__doc__)
    add_run_dir(p)
    p.add_argument("--predictors", nargs="+", choices=ALL_PREDICTORS, metavar="PREDICTOR",
                   help="which predictors (default: the config's, else all): " + ", ".join(ALL_PREDICTORS))
    p.add_argument("--projection-steps", type=int, help="steps of the energy-based projection")
    add_set(p)
    p.add_argument("--calibration", metavar="NAME", help="thresholds and the recommended map's sizes from the "
                   "healthy scans calibrated as NAME (tfvae calibrate) instead of the validation split")
    p.add_argument("--out", help="output directory (default: RUN/eval)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--print-config", action="store_true", help="print the resolved config (every default) and exit")
    return p.parse_args(argv)


@entry
def main(argv=None) -> int:
    args = parse_args(argv)
    from tfvae import config as config_lib  # no TensorFlow yet: a mistyped key or an existing eval/ said at once
    from tfvae.runs.run import Run, RunDirError

    flags = []  # the options that set a config key, each with how the user gave it
    if args.projection_steps is not None:
        flags.append((f"--projection-steps {args.projection_steps}",
                      f"predictors.projection_steps={args.projection_steps}"))
    if args.predictors:
        flags.append(("--predictors " + " ".join(args.predictors),
                      "evaluate.predictors=" + ",".join(f'"{p}"' for p in args.predictors).join("[]")))
    if args.calibration:
        flags.append((f"--calibration {args.calibration}", f"threshold.calibration={args.calibration}"))
    overrides = list(args.set) + [item for _, item in flags]
    run = Run(args.run_dir)
    try:
        config_lib.check_distinct([*args.set, *flags])  # a key set by a flag and by --set: one line, not "last wins"
        if args.calibration:
            config_lib.check_value("threshold.calibration", args.calibration, "--calibration")
        config = run.config(overrides)  # a bad config, split or model: one line, before anything is touched
        if args.print_config:
            print(json.dumps(config, indent=2))
            return 0
        run.trained_model_path(args.checkpoint)
        run.evaluation_target(args.out, args.overwrite)  # an existing evaluation: refused before any data is read
        from tfvae.data import data_sources  # data never downloaded: said before TensorFlow loads

        missing = next(filter(None, (data_sources.missing_download(d) for d in (
            data_sources.test_data_config(config["data"]), config["data"]))), None)
    except (config_lib.ConfigError, RunDirError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    try:
        return _evaluate(args, run, config, overrides)
    except KeyboardInterrupt:  # Ctrl-C: the evaluation's temporary folder is gone (Run.evaluate), OUT as it was
        print(f"\ninterrupted (Ctrl-C): nothing was put in place ({args.out or run.eval_dir} is as it was)",
              file=sys.stderr)
        return INTERRUPTED


def _evaluate(args, run, config, overrides) -> int:
    from tfvae import config as config_lib
    from tfvae.utils import files
    from tfvae.utils.console import quiet_tensorflow
    from tfvae.runs.run import RunDirError

    quiet_tensorflow()
    from tfvae.data import pipelines as data
    from tfvae.evaluation import reporting

    try:
        data.check_splits(data.test_data_config(config["data"]), [config["data"]["test_split"]])
        data.check_splits(config["data"], [config["data"]["validation_split"]])
        test = data.test_data_config(config["data"])
        if (test["name"], test["config"]) == (config["data"]["name"], config["data"]["config"]):
            print(f"data (healthy validation and test splits): {data.describe(config['data'])}")
        else:
            print(f"healthy validation data: {data.describe(config['data'])}")
            print(f"test data: {data.describe(test)}")
        if config["threshold"]["calibration"]:
            run.healthy_split(config)  # a calibration unknown, or its scans changed: one line, now
            print(f"healthy reference: calibration {config['threshold']['calibration']} (tfvae calibrate)")
        results = run.evaluate(overrides=overrides, checkpoint=args.checkpoint, out_dir=args.out,
                               overwrite=args.overwrite, say_where=False)
    except (config_lib.ConfigError, RunDirError, data.DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # disk full, permission denied: the partial evaluation is removed (Run.evaluate)
        found = files.as_os_error(e)  # an OSError, or TensorFlow's writers' errors (TensorBoard's figures)
        if found is None:
            raise
        out = args.out or run.eval_dir
        print(f"error: {os_error(found, out, elsewhere='evaluate into another folder (--out DIR)')}; nothing was "
              f"put in place ({out} is as it was)", file=sys.stderr)
        return 2
    out_dir = args.out or run.eval_dir
    print()
    print(reporting.title(run.config(overrides), args.checkpoint))
    print(reporting.text_table(results))
    print(reporting.legend())
    note = reporting.ensemble_note(results)
    if note:
        print(note)
    print(f"results, maps and figures: {out_dir} ({files.disk_use(out_dir)})")
    return 0



