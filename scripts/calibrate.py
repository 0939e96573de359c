#!/usr/bin/env python
"""Calibrate a trained run on healthy scans of your own scanner.

The same as ``tfvae calibrate`` (see ``tfvae/commands/calibrate.py`` for the options).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfvae.commands.calibrate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
