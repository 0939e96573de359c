#!/usr/bin/env python
"""The per-scan threshold's design study (issue 30), in two steps:

    python scripts/threshold_study.py --runs runs/design/s0 runs/design/s1 runs/design/s2 --out runs/study
    python scripts/threshold_study.py --runs runs/design/s0 runs/design/s1 runs/design/s2 --out runs/study \\
        --report docs/threshold_study.md

The first dumps each run's recommended maps of the design test sets (the phantom's default test split,
its design sites, ``large_lesions``) and of a lesion-share sweep (healthy subjects of two sites with one
lesion covering 0-40 % of the brain) into OUT/<run>/ (reused when there); the second compares every
candidate rule of ``tfvae.studies.threshold_study.CANDIDATES`` on those dumps offline and writes the report
and its evidence (``docs/threshold_study.json``). The held-out sites (``heldout_*``) are never dumped
here but with ``--held-out``, once, after the rule was fixed. ``--screening`` dumps small lesions
(0.5-2 % of the brain) of the design sites' healthy subjects into OUT/screening/ to measure how
``tfvae calibrate``'s screen finds a lesioned scan in a healthy set (``threshold_study.screening``;
the sweeps above measure it at 5-40 %). The runs are the
quick start trained with other seeds, e.g.

    python scripts/train.py --config configs/quickstart.json --run-dir runs/design/s1 --set seed=1 name=design_s1
"""

import argparse
import os
import shlex
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    from tfvae.studies import threshold_study

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="trained run folders (e.g. runs/design/s0)")
    parser.add_argument("--out", required=True, help="folder of the dumps (one sub-folder per run)")
    parser.add_argument("--sets", nargs="+", default=list(threshold_study.DESIGN_SETS),
                        choices=threshold_study.DESIGN_SETS, help="phantom test sets to dump")
    parser.add_argument("--share-subjects", type=int, default=threshold_study.SHARE_SUBJECTS,
                        help="healthy subjects per site of the sweep")
    parser.add_argument("--held-out", action="store_true", help="the held-out sites instead (heldout_*, and the "
                        "sweep on their healthy subjects), in OUT/heldout/: run once, after the rule was fixed")
    parser.add_argument("--screening", action="store_true", help="small lesions (0.5-2%% of the brain) in the "
                        "design sites' healthy subjects, in OUT/screening/: how calibrate's screen finds them")
    parser.add_argument("--bound", metavar="MD", help="what any threshold rule could reach within issue 30's FPR "
                        "targets (an oracle's Dice bound) on the design and held-out dumps, into this report")
    parser.add_argument("--report", metavar="MD", help="compare the rules on the dumps and write this report")
    args = parser.parse_args(argv)
    if args.held_out and args.screening:
        parser.error("--held-out and --screening: one at a time")
    section = "held-out" if args.held_out else "screening" if args.screening else "design"
    out = os.path.join(args.out, "heldout") if args.held_out else os.path.join(args.out, "screening") \
        if args.screening else args.out
    if args.bound:
        command = "python scripts/threshold_study.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        threshold_study.bound_report([args.out, os.path.join(args.out, "heldout")], args.bound, args.runs,
                                     command=command, log=lambda m: print(m, flush=True))
        print(f"report: {args.bound}")
        return
    if args.report:
        command = "python scripts/threshold_study.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        threshold_study.report(out, args.report, args.runs, section=section, command=command,
                               log=lambda m: print(m, flush=True))
        print(f"report: {args.report}")
        return
    ts = threshold_study
    sets, share_sites = (ts.HELD_OUT_SETS, ts.HELD_OUT_SHARE_SITES) if args.held_out else ((), ts.SHARE_SITES) \
        if args.screening else (args.sets, ts.SHARE_SITES)
    shares = ts.SCREENING_SHARES if args.screening else ts.SHARES
    ts.dump_sets(args.runs, out, sets, share_sites, shares=shares, share_subjects=args.share_subjects,
                 log=lambda m: print(m, flush=True))


if __name__ == "__main__":
    main()
