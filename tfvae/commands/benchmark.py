"""Throughput of training, predictors, projection, input pipeline and metrics; prints a table and
writes JSON.

    python scripts/benchmark.py [--quick] [--peer] [--out benchmark.json] [--data-dir DIR]
    python scripts/benchmark.py --evaluation [RUN_DIR] [--checkpoint final] [--set KEY=VALUE ...]

Every figure is the median over repeats after a warm-up. ``--quick`` (under 3 minutes on a 2-core
CPU) uses fewer repeats, shorter projections and the tiny phantom for the input pipeline.
``--evaluation`` times instead one evaluation's set-up against its scoring of the test split: of
``RUN_DIR`` (evaluated in a temporary folder; nothing in the run is written), or of the quick start,
trained first in a temporary folder.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfvae.commands import add_set, entry, parser  # noqa: E402


def parse_args(argv=None):
    p = parser(__doc__)
    p.add_argument("--quick", action="store_true", help="fewer repeats; finishes in under 3 minutes")
    p.add_argument("--out", help="JSON output (default: benchmark.json; with --evaluation, "
                                 "benchmark_evaluation.json)")
    p.add_argument("--data-dir", help="TFDS data_dir for the input-pipeline benchmark, or with --evaluation "
                                      "for the data the run is evaluated on (default: the run's; TFDS's)")
    p.add_argument("--layers", action="store_true", help="also time each layer's forward and backward pass "
                                                         "(where the training step spends its time)")
    p.add_argument("--quality", action="store_true", help="also train the quick start in float32 and bfloat16 "
                                                          "and compare every predictor's AUROC (~15 minutes)")
    p.add_argument("--peer", action="store_true", help="also time a plain PyTorch implementation of the same "
                                                       "network (tfvae/benchmark_peer.py; needs torch) and print "
                                                       "the ratios")
    p.add_argument("--evaluation", nargs="?", const="", metavar="RUN_DIR",
                   help="time one evaluation's set-up against its scoring instead (of RUN_DIR, or of the quick "
                        "start trained first)")
    from tfvae.rundir import CHECKPOINTS  # no TensorFlow: --help stays instant

    p.add_argument("--checkpoint", choices=CHECKPOINTS,
                   help="with --evaluation RUN_DIR: the checkpoint evaluated (default: final)")
    add_set(p, help="with --evaluation: override config keys of the run (or of the quick start)")
    return p.parse_args(argv)


def misplaced(args) -> str | None:
    """The options given that do not apply with (or without) ``--evaluation``, as one line, or None."""
    if args.evaluation is None:
        wrong = [name for name, given in (("--set", args.set), ("--checkpoint", args.checkpoint)) if given]
        return f"{' and '.join(wrong)} appl{'y' if len(wrong) > 1 else 'ies'} to --evaluation only" if wrong else None
    wrong = [f"--{name}" for name in ("quick", "layers", "quality", "peer") if getattr(args, name)]
    if args.checkpoint and not args.evaluation:
        wrong.append("--checkpoint (the quick start is trained here: its final model is evaluated)")
    return f"{', '.join(wrong)} {'do' if len(wrong) > 1 else 'does'} not apply to --evaluation" if wrong else None


@entry
def main(argv=None) -> int:
    args = parse_args(argv)
    wrong = misplaced(args)
    if wrong:
        print(f"error: {wrong}", file=sys.stderr)
        return 2
    overrides = ([f"data.data_dir={args.data_dir}"] if args.data_dir else []) + list(args.set)
    checkpoint = args.checkpoint or "final"
    if args.evaluation is not None:  # not a trained run, a bad key: one line, before TensorFlow loads
        from tfvae import config as config_lib
        from tfvae.run import Run, RunDirError

        try:
            if args.evaluation:
                run = Run(args.evaluation)
                run.config(overrides)
                run.trained_model_path(checkpoint)
            else:
                config_lib.load("quickstart", overrides)
        except (config_lib.ConfigError, RunDirError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    from tfvae.console import quiet_tensorflow

    quiet_tensorflow()
    from tfvae import benchmark

    if args.evaluation is None:
        benchmark.run(quick=args.quick, out_path=args.out or "benchmark.json", data_dir=args.data_dir,
                      layers=args.layers, check_quality=args.quality, peer=args.peer)
        return 0
    try:  # a test split without lesions, an unknown calibration of healthy scans, ...: one line
        benchmark.evaluation(args.evaluation or None, checkpoint=checkpoint, overrides=overrides,
                             out_path=args.out or "benchmark_evaluation.json")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
