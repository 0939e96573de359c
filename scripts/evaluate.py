#!/usr/bin/env python
"""Evaluate a trained run: every predictor's anomaly maps on the test split, the paper's table.

The same as ``tfvae evaluate`` (see ``tfvae/commands/evaluate.py`` for the options).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfvae.commands.evaluate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
