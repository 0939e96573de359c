"""Search hyperparameters of the (beta-)VAE with Keras Tuner.

    python scripts/tune.py --search configs/search_paper.json [--dir runs/search_paper]
        [--set data.name=brain_phantom data.test_name=null ...] [--overwrite] [--quiet]

The search config (see ``tfvae/runs/tuning.py``) names the base run config, the space (a grid or a list
of grids searched over their union), the tuner (grid, random, bayesian, hyperband) and the
objective (``neg_elbo``, ``val_loss``: unsupervised; ``auroc``: pixel AUROC of a predictor on a few
labelled volumes -- uses labels; by default test volumes held apart, which evaluating the search's
runs leaves out). Each trial is a run directory ``DIR/trials/<id>`` (TensorBoard:
``tensorboard --logdir DIR/trials``, HParams dashboard included); the best one is copied to
``DIR/best`` (``scripts/evaluate.py --run-dir DIR/best`` works on it); ``DIR/trials.csv`` lists
every trial. Run the same command again to resume a stopped search.

Distributed (Keras Tuner chief/worker): start the chief with ``KERASTUNER_TUNER_ID=chief``,
``KERASTUNER_ORACLE_IP`` / ``KERASTUNER_ORACLE_PORT`` (address it listens on), and each worker with
the same IP/port and ``KERASTUNER_TUNER_ID=tuner0``, ``tuner1``, ...; all with the same --search and
a --dir on a filesystem they share. The chief hands out trials and exports the best run when all
are done; workers train.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfvae.commands import INTERRUPTED, add_set, entry, parser, parse_quietly  # noqa: E402


def parse_args(argv=None):
    p = parser(__doc__)
    p.add_argument("--search", required=True, help="search config JSON (see configs/search_*.json)")
    p.add_argument("--dir", help="search directory (default: runs/<search file name>)")
    add_set(p, "override keys of the base run config for every trial, e.g. data.config=tiny")
    p.add_argument("--overwrite", action="store_true", help="delete the search in --dir and start again")
    p.add_argument("--quiet", action="store_true", help="no per-epoch output")
    return p.parse_args(argv)


@entry
def main(argv=None) -> int:
    args = parse_quietly(parse_args, argv)
    from tfvae import config as config_lib
    from tfvae.runs import tuning

    search_dir = args.dir or os.path.join("runs", os.path.splitext(os.path.basename(args.search))[0])
    try:
        search = tuning.load_search(args.search, args.set)
        worker = tuning.is_worker()
        if worker and args.overwrite:
            raise tuning.SearchDirError("--overwrite is for the chief (or a single process), not a worker")
        resuming = tuning.prepare_search_dir(search, search_dir, overwrite=args.overwrite)
    except (config_lib.ConfigError, tuning.SearchDirError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    role = "worker" if worker else "chief" if tuning.is_chief() else "single process"
    print(f"search: {args.search}: {len(search.points)} setting(s) of {', '.join(search.keys)}, tuner {search.tuner}, "
          f"objective {search.objective().name} ({search.objective().direction}); {role}; "
          f"{'resuming' if resuming else 'new search'} in {search_dir}  "
          f"(tensorboard --logdir {os.path.join(search_dir, 'trials')})", flush=True)
    if search.reads_test_split:
        print(f"warning: objective_split {search.objective_split!r} is the test split evaluation scores: the model is "
              "selected with the labels of test volumes that its test metrics then include (each trial's "
              "objective.json and best/best_trial.json say which); leave objective_split null to hold volumes apart",
              file=sys.stderr, flush=True)
    tuner = tuning.make_tuner(search, search_dir, verbose=0 if args.quiet else 2)
    try:
        tuning.run_trials(tuner, search_dir, search)
    except KeyboardInterrupt:  # Ctrl-C: finished trials stay; the same command carries on where it stopped
        print(f"\ninterrupted (Ctrl-C): finished trials are kept in {search_dir}; the same command continues the "
              "search", file=sys.stderr)
        return INTERRUPTED
    except tuning.SearchFailed as e:
        if not worker:
            tuning.write_trials(tuner, search, search_dir)  # what did finish, and how each trial ended
        print(f"error: {e}", file=sys.stderr)
        return 1
    if worker:
        print("worker: no more trials")
        return 0

    for r in tuning.write_trials(tuner, search, search_dir):
        print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    best = tuning.export_best(tuner, search, search_dir)
    if best is None:
        print("error: no trial finished", file=sys.stderr)
        return 1
    print(f"best trial {best['trial_id']}: {best['objective']} {best['score']:.4g} with {json.dumps(best['values'])}")
    if best.get("held_apart"):
        print(f"the auroc objective's test volumes {', '.join(best['objective_volume_ids'])} were held apart: "
              "evaluating the best run leaves them out (evaluate.exclude_volumes in its config.json)")
    if best.get("warning"):
        print(f"warning: {best['warning']}", file=sys.stderr)
    print(f"best run: {os.path.join(search_dir, 'best')}  "
          f"(python scripts/evaluate.py --run-dir {os.path.join(search_dir, 'best')})")
    return 0

