#!/usr/bin/env python
"""Which beta each search objective picks (issue 33; ``tfvae.studies.search_study``): a Keras Tuner
grid search over beta per seed (``configs/search_beta_2core.json``: beta 0.1-10 at latent 64, the
2-core schedule, objective neg_elbo), every trial scored by the three objectives (neg_elbo, val_loss,
auroc on held-apart test volumes) and by the test figures on the other test volumes.

    python scripts/search_study.py --dir runs/search_study --seeds 0 1 2 --report docs/search.md

Resumable: run it again and finished trials and scores are reused. About 20 min per seed on 2 cores.
"""

import argparse
import os
import shlex
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    from tfvae.studies import search_study

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--search", default=search_study.SEARCH_CONFIG, help="search config (default: %(default)s)")
    parser.add_argument("--dir", required=True, help="folder of the searches (one per seed: DIR/s<seed>)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(search_study.SEEDS))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of the base run config")
    parser.add_argument("--report", required=True, metavar="MD", help="markdown file the table goes into")
    args = parser.parse_args(argv)
    command = "python scripts/search_study.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    search_study.report(args.search, args.dir, args.seeds, args.report, overrides=args.set, command=command,
                        log=lambda m: print(m, flush=True))
    print(f"report: {args.report}")


if __name__ == "__main__":
    main()
