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

CHECKPOINTS = {"final": "model.keras", "best": os.path.join("checkpoints", "best.keras"),
               "last": os.path.join("checkpoints", "last.keras")}


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
    model_path = os.path.join(args.run_dir, CHECKPOINTS[args.checkpoint])
    out_dir = args.out or os.path.join(args.run_dir, "eval")
    try:
        config = config_lib.load(config_path, overrides)
    except config_lib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
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

    import keras
    import tensorflow as tf

    from tfvae import data, evaluation, reporting
    from tfvae.model import load

    keras.utils.set_random_seed(config["seed"])
    model = load(model_path)
    d = config["data"]
    test_data = data.test_data_config(d)  # e.g. trained on hcp_t2, tested on brats
    try:
        test = data.load_split(test_data, d["test_split"])
        validation = data.load_split(d, d["validation_split"])
        results, figures = evaluation.evaluate(model, config, test, validation, out_dir)
    except (data.DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    predictors = list(results)
    title = (f"{config['name']}: {test_data['name']}/{test_data['config']} {d['test_split']}, beta {config['model']['beta']:g}, "
             f"latent {config['model']['latent_dim']}, {args.checkpoint} model")
    reporting.write_results(results, out_dir, header=f"# {title}")
    config_lib.save(config, os.path.join(out_dir, "config.json"))  # what these results were made with
    images = reporting.save_figures(figures, predictors, os.path.join(out_dir, "figures"))
    with tf.summary.create_file_writer(os.path.join(args.run_dir, "logs", "eval")).as_default(step=0):
        for name, image in images.items():
            tf.summary.image(name, image[None])
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
