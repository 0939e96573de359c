#!/usr/bin/env python
"""Train a (beta-)VAE on healthy brain slices.

The same as ``tfvae train`` (see ``tfvae/commands/train.py`` for the options).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfvae.commands.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
