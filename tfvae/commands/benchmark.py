"""Throughput of training, predictors, projection, input pipeline and metrics; prints a table and
writes JSON.

    python scripts/benchmark.py [--quick] [--peer] [--out benchmark.json] [--data-dir DIR]

Every figure is the median over repeats after a warm-up. ``--quick`` (under 3 minutes on a 2-core
CPU) uses fewer repeats, shorter projections and the tiny phantom for the input pipeline.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfvae.commands import entry, parser, parse_quietly  # noqa: E402


def parse_args(argv=None):
    p = parser(__doc__)
    p.add_argument("--quick", action="store_true", help="fewer repeats; finishes in under 3 minutes")
    p.add_argument("--out", default="benchmark.json", help="JSON output")
    p.add_argument("--data-dir", help="TFDS data_dir for the input-pipeline benchmark (default: TFDS's)")
    p.add_argument("--layers", action="store_true", help="also time each layer's forward and backward pass "
                                                         "(where the training step spends its time)")
    p.add_argument("--quality", action="store_true", help="also train the quick start in float32 and bfloat16 "
                                                          "and compare every predictor's AUROC (~15 minutes)")
    p.add_argument("--peer", action="store_true", help="also time a plain PyTorch implementation of the same "
                                                       "network (tfvae/benchmark_peer.py; needs torch) and print "
                                                       "the ratios")
    return p.parse_args(argv)


@entry
def main(argv=None) -> int:
    args = parse_quietly(parse_args, argv)
    from tfvae import benchmark

    benchmark.run(quick=args.quick, out_path=args.out, data_dir=args.data_dir, layers=args.layers,
                  check_quality=args.quality, peer=args.peer)
    return 0

