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
    p.add_argument("--out", default="benchmark.json", help="JSON output")
    p.add_argument("--data-dir", help="TFDS data_dir for the input-pipeline benchmark and for "
                                       "--evaluation's quick start (default: TFDS's)")
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

    p.add_argument("--checkpoint", default="final", choices=CHECKPOINTS,
                   help="with --evaluation RUN_DIR: the checkpoint evaluated")
    add_set(p, help="with --evaluation: override config keys of the run (or of the quick start)")
    return p.parse_args(argv)


@entry
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.set and args.evaluation is None:
        print("error: --set applies to --evaluation only", file=sys.stderr)
        return 2
    if args.evaluation is not None:  # not a trained run, a bad key: one line, before TensorFlow loads
        from tfvae import config as config_lib
        from tfvae.run import Run, RunDirError

        try:
            if args.evaluation:
                Run(args.evaluation).config(args.set)
                Run(args.evaluation).trained_model_path(args.checkpoint)
            else:
                config_lib.load("quickstart", args.set)
        except (config_lib.ConfigError, RunDirError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    from tfvae.console import quiet_tensorflow

    quiet_tensorflow()
    from tfvae import benchmark

    if args.evaluation is not None:
        benchmark.evaluation(args.evaluation or None, checkpoint=args.checkpoint, data_dir=args.data_dir,
                             overrides=args.set, out_path=args.out)
        return 0
    benchmark.run(quick=args.quick, out_path=args.out, data_dir=args.data_dir, layers=args.layers,
                  check_quality=args.quality, peer=args.peer)
    return 0

