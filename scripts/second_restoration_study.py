#!/usr/bin/env python
"""The large-lesion gap (issue 33): the recommended map with a second restoration
(``recommended.second_restoration``) against the map as it is, on the phantom's design and
held-out test sets, paired by run (``tfvae.studies.second_restoration_study``).

    python scripts/second_restoration_study.py --runs runs/design/s0 runs/design/s1 runs/design/s2 \\
        --dumps runs/second_restoration --report docs/results_phantom.md

Each run's test sets are scored once (DUMPS/<run>/<set>/{first,second}.npz; dumps already there are
reused, so an interrupted study continues); ``--sets`` limits the sets (default: every set of the
study, design and held out), ``--note`` puts a paragraph (a file's text) before the table.
"""

import argparse
import os
import shlex
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    from tfvae.studies import second_restoration_study as study

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="trained run folders (e.g. runs/design/s0)")
    parser.add_argument("--dumps", required=True, help="folder of the dumps (one sub-folder per run)")
    parser.add_argument("--sets", nargs="+", default=[s for s, _, _ in study.SETS],
                        choices=[s for s, _, _ in study.SETS], help="test sets to score (default: all)")
    parser.add_argument("--report", metavar="MD", help="markdown file the table goes into")
    parser.add_argument("--note", metavar="FILE", help="a paragraph put before the table")
    args = parser.parse_args(argv)
    for run_dir in args.runs:
        for test_set in args.sets:
            print(study.dump(run_dir, test_set, args.dumps), flush=True)
    if args.report:
        note = open(args.note, encoding="utf-8").read() if args.note else ""
        command = "python scripts/second_restoration_study.py " + shlex.join(
            [a for a in (argv if argv is not None else sys.argv[1:])])
        study.report(args.runs, args.dumps, args.report, command=command, note=note)
        print(f"table: {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
