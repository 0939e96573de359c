"""Export a run's model as a TensorFlow SavedModel (for TF Serving and tf.saved_model.load).

    python scripts/export.py --run-dir R --out DIR [--checkpoint final|best|last]

Signatures ``reconstruct`` and ``maps`` on a batch of preprocessed slices (see tfvae/runs/export.py).
From Python: ``tfvae.Run(R).export(DIR)``.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfvae.commands import add_run_dir, entry, parser, parse_quietly  # noqa: E402


def parse_args(argv=None):
    p = parser(__doc__)
    add_run_dir(p)
    p.add_argument("--out", required=True, help="a new folder for the SavedModel")
    return p.parse_args(argv)


@entry
def main(argv=None) -> int:
    args = parse_quietly(parse_args, argv)
    from tfvae import config as config_lib
    from tfvae.runs.run import Run, RunDirError

    try:
        out = Run(args.run_dir).export(args.out, checkpoint=args.checkpoint)
    except (config_lib.ConfigError, RunDirError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"SavedModel with signatures reconstruct, maps: {out}")
    return 0

