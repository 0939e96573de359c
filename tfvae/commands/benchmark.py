"""Throughput of training, predictors, projection, input pipeline and metrics; prints a table and
writes JSON.

    python scripts/benchmark.py [--quick] [--peer] [--out benchmark.json] [--data-dir DIR]
    python scripts/benchmark.py --peer --rounds N [--isa native,avx2] [--quick] [--out benchmark_rounds.json]
    python scripts/benchmark.py --evaluation [RUN_DIR] [--checkpoint final] [--set KEY=VALUE ...]

Every figure is the median over repeats after a warm-up. ``--quick`` (under 3 minutes on a 2-core
CPU) uses fewer repeats, shorter projections and the tiny phantom for the input pipeline.
``--evaluation`` times instead one evaluation's set-up against its scoring of the test split: of
``RUN_DIR`` (evaluated in a temporary folder; nothing in the run is written), or of the quick start,
trained first in a temporary folder.
``--peer --rounds N`` times instead tfvae against the PyTorch peer in N interleaved rounds per kernel
class (``--isa``: native, avx2 or both; each class in its own subprocess, avx2 with
``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``): each figure's median ratio and its spread.
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
                                                       "network (tfvae/studies/benchmark_peer.py; needs torch) and print "
                                                       "the ratios")
    p.add_argument("--rounds", type=int, metavar="N",
                   help="with --peer: N interleaved rounds (tfvae, peer, tfvae, ...) of training, maps and "
                        "projection per kernel class; each figure's median ratio and spread")
    p.add_argument("--isa", default=None, metavar="CLASSES",
                   help="with --rounds: the kernel classes, comma-separated: native (the CPU's own kernels), "
                        "avx2 (both libraries limited to AVX2) (default: native,avx2)")
    p.add_argument("--evaluation", nargs="?", const="", metavar="RUN_DIR",
                   help="time one evaluation's set-up against its scoring instead (of RUN_DIR, or of the quick "
                        "start trained first)")
    from tfvae.utils.rundir import CHECKPOINTS  # no TensorFlow: --help stays instant

    p.add_argument("--checkpoint", choices=CHECKPOINTS,
                   help="with --evaluation RUN_DIR: the checkpoint evaluated (default: final)")
    add_set(p, help="with --evaluation: override config keys of the run (or of the quick start)")
    return p.parse_args(argv)


def misplaced(args) -> str | None:
    """The options given that do not apply with (or without) ``--evaluation`` or ``--rounds``, as
    one line, or None."""
    from tfvae.studies.benchmark_peer import KERNEL_CLASSES  # no TensorFlow

    if args.rounds is not None:
        wrong = [f"--{name}" for name in ("layers", "quality") if getattr(args, name)]
        wrong += [name for name, given in (("--data-dir", args.data_dir), ("--set", args.set),
                                           ("--checkpoint", args.checkpoint),
                                           ("--evaluation", args.evaluation is not None)) if given]
        if wrong:
            return f"{', '.join(wrong)} {'do' if len(wrong) > 1 else 'does'} not apply to --rounds"
        if not args.peer:
            return "--rounds times tfvae against the PyTorch peer: give --peer too"
        if args.rounds < 1:
            return f"--rounds must be at least 1, not {args.rounds}"
        unknown = [c for c in isa_classes(args) if c not in KERNEL_CLASSES]
        if unknown or not isa_classes(args):
            return f"--isa: unknown kernel class {', '.join(unknown) or '(none)'} (known: {', '.join(KERNEL_CLASSES)})"
        return None
    if args.isa is not None:
        return "--isa applies to --rounds only"
    if args.evaluation is None:
        wrong = [name for name, given in (("--set", args.set), ("--checkpoint", args.checkpoint)) if given]
        return f"{' and '.join(wrong)} appl{'y' if len(wrong) > 1 else 'ies'} to --evaluation only" if wrong else None
    wrong = [f"--{name}" for name in ("quick", "layers", "quality", "peer") if getattr(args, name)]
    if args.checkpoint and not args.evaluation:
        wrong.append("--checkpoint (the quick start is trained here: its final model is evaluated)")
    return f"{', '.join(wrong)} {'do' if len(wrong) > 1 else 'does'} not apply to --evaluation" if wrong else None


def isa_classes(args) -> list[str]:
    """The kernel classes of ``--isa`` (default: native, avx2), in order, each once."""
    names = [c.strip().lower() for c in (args.isa or "native,avx2").split(",") if c.strip()]
    return list(dict.fromkeys(names))


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
        from tfvae.runs.run import Run, RunDirError

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
    from tfvae.utils.console import quiet_tensorflow

    quiet_tensorflow()
    from tfvae.studies import benchmark

    if args.rounds is not None:
        try:
            benchmark.rounds(args.rounds, isa_classes(args), quick=args.quick,
                             out_path=args.out or "benchmark_rounds.json")
        except RuntimeError as e:  # no torch, a class's subprocess failed
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0
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
