#!/usr/bin/env python
"""Evaluate a trained run: every predictor's anomaly maps on the test split, the paper's table.

    python scripts/evaluate.py --run-dir runs/beta10 [--predictors rec_error rec_grad ...]
        [--projection-steps 100] [--checkpoint final|best|last] [--set KEY=VALUE ...]
        [--out DIR] [--overwrite]

Writes DIR (default RUN/eval): results.json / .csv / .md, maps/<volume>_<predictor>.nii.gz in
each source volume's grid, figures/*.png, and the figures to TensorBoard (RUN/logs/eval). A
different test dataset: --set data.name=... data.config=... data.test_split=...
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CHECKPOINTS = ("final", "best", "last")  # tfvae.training.MODEL_FILES


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", required=True, help="a run directory written by scripts/train.py")
    p.add_argument("--predictors", nargs="+", help="which predictors (default: the config's, else all)")
    p.add_argument("--projection-steps", type=int, help="steps of the energy-based projection")
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default="final", help="which saved model (default: final)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override config keys")
    p.add_argument("--out", help="output directory (default: RUN/eval)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from tfvae import config as config_lib

    overrides = list(args.set)
    if args.projection_steps is not None:
        overrides.append(f"predictors.projection_steps={args.projection_steps}")
    if args.predictors:
        overrides.append("evaluate.predictors=" + ",".join(f'"{p}"' for p in args.predictors).join("[]"))
    config_path = os.path.join(args.run_dir, "config.json")
    out_dir = args.out or os.path.join(args.run_dir, "eval")
    try:
        config = config_lib.load(config_path, overrides)
    except config_lib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from tfvae.training import MODEL_FILES

    model_path = os.path.join(args.run_dir, MODEL_FILES[args.checkpoint])
    if not os.path.isfile(model_path):
        print(f"error: {model_path} not found (train the run first, or pick --checkpoint)", file=sys.stderr)
        return 2
    if os.path.exists(out_dir) and os.listdir(out_dir):
        if not args.overwrite:
            print(f"error: {out_dir} already exists; pass --overwrite to replace it or --out to write elsewhere",
                  file=sys.stderr)
            return 2
        if not os.path.isfile(os.path.join(out_dir, "results.json")):
            print(f"error: {out_dir} holds no results.json; refusing to delete it", file=sys.stderr)
            return 2
        shutil.rmtree(out_dir)

    from tfvae import data, evaluation, reporting

    try:
        results, title = evaluation.evaluate_run(args.run_dir, config, out_dir, checkpoint=args.checkpoint)
    except (data.DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print()
    print(title)
    print(reporting.text_table(results))
    note = reporting.ensemble_note(results)
    if note:
        print(note)
    print(f"results, maps and figures: {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
