#!/usr/bin/env python
"""Anomaly maps, calibrated masks and a report for new scans, from a trained run.

The same as ``tfvae localize`` (see ``tfvae/commands/localize.py`` for the options).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfvae.commands.localize import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
