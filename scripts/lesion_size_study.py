#!/usr/bin/env python
"""What the VAE adds, by lesion size (issue 33): the recommended map against its recipe without a
model and against the intensity, AUROC and AUPRC in the brain, on the phantom's design and
held-out sets of small-to-medium and of BraTS-sized tumours (``tfvae.studies.lesion_size_study``).

    python scripts/lesion_size_study.py --runs runs/design/s0 runs/design/s1 runs/design/s2 \\
        --dumps runs/study --baselines runs/study_baselines/s0 --report docs/results_phantom.md

The dumps are ``tfvae.studies.threshold_study.dump_maps``'s: the recommended map's as
``scripts/threshold_study.py`` writes them (DUMPS/<run>/<set>.npz, DUMPS/heldout/<run>/<set>.npz;
made when missing here), the baselines' as BASELINES/<set>__<predictor>.npz (made when missing,
with the first run: they need no model).
"""

import argparse
import os
import shlex
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="trained run folders (e.g. runs/design/s0)")
    parser.add_argument("--dumps", required=True, help="folder of the recommended map's dumps (one per run)")
    parser.add_argument("--baselines", required=True, help="folder of the baselines' dumps")
    parser.add_argument("--report", required=True, metavar="MD", help="markdown file the table goes into")
    args = parser.parse_args(argv)
    from tfvae.studies import lesion_size_study

    lesion_size_study.dump(args.runs, args.dumps, args.baselines, log=lambda m: print(m, flush=True))
    command = "python scripts/lesion_size_study.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    lesion_size_study.report(args.runs, args.dumps, args.baselines, args.report, command=command)
    print(f"report: {args.report}")


if __name__ == "__main__":
    main()
