#!/usr/bin/env python
"""Throughput of training, predictors, projection, input pipeline and metrics; prints a table and

The same as ``tfvae benchmark`` (see ``tfvae/commands/benchmark.py`` for the options).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfvae.commands.benchmark import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
