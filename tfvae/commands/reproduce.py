"""Reproduce the paper's Table 1 (latent size) and Table 2 (beta) and its ensemble line, over seeds.

    python scripts/reproduce_tables.py [--plan configs/reproduce_paper.json | --quick] [--seeds N]
        [--runs-dir DIR] [--out DIR] [--md PATH] [--data-dir DIR] [--manual-dir DIR]
        [--set KEY=VALUE ...] [--retrain] [--reevaluate] [--quiet]

A plan (``configs/reproduce_*.json``; see ``tfvae/studies/reproduce.py``) names the base run config, the
overrides, how many seeds and for which settings. ``--quick`` is ``--plan configs/reproduce_quick.json``:
the embedded phantom, the paper's learning rate until the validation loss plateaus, 3 seeds for
latent 64 at beta 1 and 10. Runs go to ``RUNS/l<latent>_b<beta>_s<seed>``; finished runs and
evaluations are reused, so the same command continues an interrupted reproduction. Writes
``OUT/tables.md`` (or ``--md``), ``tables.csv`` and ``tables.json``.

``--all`` regenerates every table of docs/ that a study of the phantom makes, in one command, each
by its own generator and each resumable (finished runs, evaluations and dumps are reused): the
paper's tables with the plan (default ``--plan 2core``, sized for 2 cores; ``--plan quick`` is the
full one, at most 500 epochs), the cross-domain study, the per-scan threshold's study and what the
VAE adds by lesion size, into ``DOCS/results_phantom.md`` and ``DOCS/threshold_study.md`` (``--docs``,
default docs), each table's evidence JSON beside its document, stamped (commit, resolved configs,
seeds, the data's fingerprint, wall time); runs under ``--runs-dir`` (default runs):

    python scripts/reproduce_tables.py --all --plan 2core     # about 3 hours on 2 cores
    python scripts/reproduce_tables.py --all --plan quick     # the full plan: about 6-7 hours on 2 cores

``--cross-domain`` runs the cross-domain study instead (``tfvae/studies/cross_domain.py``): the quick-start
model (3 seeds, ``--seeds``) trained on the phantom's default site and tested on every shifted
site, fixed against per-scan thresholds, and calibrated on 3 healthy scans of each held-out site;
runs in ``runs/cross_domain`` (``--runs-dir``), its section written into ``--md``.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfvae.commands import add_set, entry, parser, parse_quietly  # noqa: E402



def parse_args(argv=None):
    p = parser(__doc__)
    p.add_argument("--plan", help="reproduction plan (default: configs/reproduce_paper.json)")
    p.add_argument("--quick", action="store_true", help="the embedded phantom: configs/reproduce_quick.json")
    p.add_argument("--seeds", type=int, help="seeds per seeded setting (default: the plan's)")
    p.add_argument("--runs-dir", help="where the runs are (default: runs/paper, with --quick runs/paper_quick)")
    p.add_argument("--out", help="where the tables go (default: RUNS/tables)")
    p.add_argument("--md", help="markdown file to write (default: OUT/tables.md)")
    p.add_argument("--data-dir", help="TFDS data_dir (sets data.data_dir)")
    p.add_argument("--manual-dir", help="folder holding HCP / BraTS (sets data.manual_dir)")
    add_set(p, "override config keys for every run")
    p.add_argument("--retrain", action="store_true", help="replace runs that were trained with other settings")
    p.add_argument("--reevaluate", action="store_true", help="evaluate again even when RUN/eval matches")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--report-only", action="store_true", help="train and evaluate nothing: the tables of the runs "
                                                              "finished so far")
    p.add_argument("--all", action="store_true", help="every table of docs/ (the paper's with --plan, default 2core; "
                                                      "the cross-domain, threshold and lesion-size studies)")
    p.add_argument("--docs", default="docs", help="with --all: the folder of the documents (default docs)")
    p.add_argument("--cross-domain", action="store_true", help="the cross-domain study (tfvae/studies/cross_domain.py) "
                                                               "instead of the paper's tables")
    return p.parse_args(argv)


@entry
def main(argv=None) -> int:
    args = parse_quietly(parse_args, argv)
    from tfvae import config as config_lib
    from tfvae.data import pipelines as data
    from tfvae.studies import reproduce

    if args.cross_domain:
        return _cross_domain(args, argv)
    if args.all:
        return _all(args, argv)
    plan_path = args.plan or (reproduce.QUICK_PLAN if args.quick else reproduce.PAPER_PLAN)
    runs_dir = args.runs_dir or os.path.join("runs", "paper_quick" if args.quick else "paper")
    out_dir = args.out or os.path.join(runs_dir, "tables")
    overrides = []
    if args.data_dir:
        overrides.append("data.data_dir=" + json.dumps(os.path.abspath(args.data_dir)))
    if args.manual_dir:
        overrides.append("data.manual_dir=" + json.dumps(os.path.abspath(args.manual_dir)))
    try:
        plan = reproduce.load_plan(plan_path, args.seeds, overrides + args.set)
        reproduce.configs(plan)  # every run config validated before anything is trained
    except config_lib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    given = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--report-only"]
    command = "python scripts/reproduce_tables.py " + " ".join(given)  # the command that completes the tables
    try:
        result = reproduce.reproduce(plan, runs_dir, out_dir, args.md, retrain=args.retrain,
                                     reevaluate=args.reevaluate, verbose=not args.quiet, command=command,
                                     report_only=args.report_only)
    except (reproduce.RetrainError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print()
    print("\n".join(result["target"] + result["findings"]))
    print(f"\ntables: {args.md or os.path.join(out_dir, 'tables.md')}, {os.path.join(out_dir, 'tables.csv')}")
    return 0


def _cross_domain(args, argv) -> int:
    from tfvae import config as config_lib
    from tfvae.studies import cross_domain
    from tfvae.data import pipelines as data

    seeds = tuple(range(args.seeds)) if args.seeds else cross_domain.SEEDS
    overrides = list(args.set) + (["data.data_dir=" + json.dumps(os.path.abspath(args.data_dir))]
                                  if args.data_dir else [])
    command = "python scripts/reproduce_tables.py " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        result = cross_domain.study(args.runs_dir or os.path.join("runs", "cross_domain"), args.md, seeds=seeds,
                                    overrides=overrides, verbose=not args.quiet, command=command)
    except (config_lib.ConfigError, data.DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print()
    print(result["report"])
    return 0


def _all(args, argv) -> int:
    from tfvae import config as config_lib
    from tfvae.data import pipelines as data
    from tfvae.studies import reproduce

    plan_path = args.plan or (reproduce.QUICK_PLAN if args.quick else reproduce.TWO_CORE_PLAN)
    overrides = list(args.set) + (["data.data_dir=" + json.dumps(os.path.abspath(args.data_dir))]
                                  if args.data_dir else [])
    try:
        plan = reproduce.load_plan(plan_path, args.seeds, overrides)
        reproduce.configs(plan)  # every run config validated before anything is trained
    except config_lib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    name = os.path.splitext(os.path.basename(plan.source))[0]
    name = name[len("reproduce_"):] if name.startswith("reproduce_") else name
    command = "python scripts/reproduce_tables.py " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        written = reproduce.all_tables(plan, args.runs_dir or "runs", args.docs, plan_name=name, overrides=overrides,
                                       retrain=args.retrain, reevaluate=args.reevaluate, verbose=not args.quiet,
                                       command=command)
    except (reproduce.RetrainError, data.DataError, config_lib.ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\nevidence: " + ", ".join(written.values()))
    return 0
