#!/usr/bin/env python
"""Screenshots of a run's TensorBoard dashboards (Time Series, scalars, HParams, images, text) in
headless Chromium, to check their layout and to show it in docs/ (see tfvae/studies/screenshots.py).

    python scripts/tensorboard_screenshots.py --logdir runs --out docs/
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--logdir", required=True, help="a folder of runs (runs/), as tensorboard --logdir takes it")
    p.add_argument("--out", required=True, help="where tensorboard_<dashboard>.png are written")
    p.add_argument("--wait-ms", type=int, default=20000, help="how long each page may load and draw")
    args = p.parse_args(argv)
    from tfvae.studies.screenshots import tensorboard_screenshots

    try:
        for path in tensorboard_screenshots(args.logdir, args.out, wait_ms=args.wait_ms):
            print(path)
    except (FileNotFoundError, TimeoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
