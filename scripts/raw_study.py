#!/usr/bin/env python
"""A run's map from raw heads (``localize --preprocess``) against the same brains given already
preprocessed (issue 32's target: AUROC in the brain and Dice@1% within 0.02):

    python scripts/raw_study.py --runs runs/design/s0 [runs/design/s1 ...] --cases 6 \\
        --work runs/raw_study --out docs/raw_study.json [--tag NAME --preprocess-set KEY=JSON ...]

Writes a raw phantom set of ``--cases`` held-out tumour heads (seeds 9000-, ``--first-seed``;
``python -m tfvae_datasets.testing_trees raw_phantom``) into WORK/tree, the phantom-space subject
behind each head into WORK/phantom, preprocesses the heads once (WORK/preprocessing), and for each
run localizes (a) the phantom-space volumes and (b) the raw heads with ``--preprocess`` into
WORK/<run>/ (see ``tfvae/studies/raw_study.py``). Prints a table per run; writes the figures, stamped with
the commit, the command, the seeds, the runs and the wall time, to ``--out``. ``--preprocess-set``
runs the preprocessing (and ``localize --preprocess``) with other settings, into folders named by
``--tag``. Run again after a kill: what is done is kept.
"""

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import shlex
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WATCHED = ("tfvae/data/head_preprocessing.py", "tfvae/evaluation/localization.py", "tfvae/studies/raw_study.py", "tfvae/maps/recommended.py",
           "tfvae/maps/postprocessing.py", "tfvae/thresholds/scan_threshold.py", "datasets/testing_trees.py",
           "datasets/brain_phantom", "scripts/raw_study.py")


def file_sha256(rel: str) -> str:
    with open(os.path.join(ROOT, rel), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="trained run folders (e.g. runs/design/s0)")
    p.add_argument("--cases", type=int, default=6, help="raw tumour heads (default 6)")
    p.add_argument("--first-seed", type=int, default=9000, help="the first held-out subject seed (9000-9999)")
    p.add_argument("--work", default="runs/raw_study", help="where the heads, preprocessing and maps go")
    p.add_argument("--workers", type=int, default=1, help="preprocessing processes (default 1)")
    p.add_argument("--out", required=True, help="the JSON of figures")
    p.add_argument("--preprocess-set", nargs="+", default=[], metavar="KEY=JSON",
                   help="other preprocessing settings (as localize --preprocess's defaults); needs --tag")
    p.add_argument("--tag", help="names this preprocessing variant: WORK/preprocessing-TAG, WORK/<run>/raw-TAG")
    args = p.parse_args(argv)
    if args.preprocess_set and not args.tag:
        p.error("--preprocess-set needs --tag (its preprocessing goes to folders of its own)")

    from tfvae.data import head_preprocessing as hp
    from tfvae.utils import provenance
    from tfvae.studies import raw_study
    from tfvae.commands import localize

    overrides = {}
    for item in args.preprocess_set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    if overrides:
        hp.Settings = raw_study.with_defaults(overrides)  # what localize --preprocess runs in this process

    started, clock = datetime.datetime.now().astimezone().isoformat(timespec="seconds"), time.time()
    times = {}
    cases = raw_study.prepare(args.work, args.cases, args.first_seed)
    times["heads_s"] = round(time.time() - clock, 1)
    t = time.time()
    outcomes = raw_study.preprocess(args.work, cases, workers=args.workers, tag=args.tag)
    times["preprocessing_s"] = round(time.time() - t, 1)
    results = {}
    for run_dir in args.runs:
        t = time.time()
        folders = raw_study.localize_run(args.work, run_dir, cases, outcomes, localize=localize.main,
                                           tag=args.tag)
        if any(rc not in (0, None) for rc in folders["rc"].values()):  # refused or failed: said above
            print(f"error: localize with {run_dir} exited {folders['rc']}; the figures below may be of older "
                  "outputs", file=sys.stderr)
        rows = [raw_study.measure(c, folders["a"], folders["b"]) for c in cases]
        summary = raw_study.groups(rows)
        key = raw_study.run_name(run_dir) + raw_study.suffix(args.tag)
        results[key] = {"run_dir": os.path.abspath(run_dir), "folders": folders,
                                                "rows": rows, "summary": summary,
                                                "table": raw_study.table(rows, summary), "threshold_table": raw_study.threshold_table(rows)}
        times[f"{key}_s"] = round(time.time() - t, 1)
        print(f"\n{run_dir}: recommended map at 1% FPR, (a) already preprocessed, (b) raw --preprocess"
              + (f" ({args.tag}: {json.dumps(overrides)})" if args.tag else ""))
        print(results[key]["table"])
        print(f"\nthe threshold's part: Dice as written, at the calibrated threshold, at the best one")
        print(results[key]["threshold_table"])
    record = {
        "git": provenance.git_state(WATCHED),
        "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT)] +
                                        list(sys.argv[1:] if argv is None else argv)),
        "started": started, "wall_s": round(time.time() - clock, 1), "times_s": times,
        "wall_note": "this invocation's wall time: heads, preprocessing and maps reused from WORK are not counted "
                     "(each raw row's preprocessing_s is the time its preprocessing took when it ran)",
        "machine": {"cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
                    "processor": platform.processor() or platform.machine()},
        "seeds": [c.seed for c in cases], "cases": [c.name for c in cases],
        "runs": [os.path.abspath(r) for r in args.runs], "work": os.path.abspath(args.work),
        "preprocessing": {"tag": args.tag, "overrides": overrides, "settings": json.loads(json.dumps(dataclasses.asdict(hp.Settings()))),
                          "head_preprocessing_sha256": file_sha256("tfvae/data/head_preprocessing.py"),
                          "outcomes": {k: {"status": o.status, "seconds": round(o.seconds, 1), "reason": o.reason}
                                       for k, o in outcomes.items()}},
        "target": f"|b - a| <= {raw_study.TARGET:g} for AUROC in the brain and Dice@1% (issue 32)",
        "results": results,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    print(f"\nfigures: {args.out} ({record['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
