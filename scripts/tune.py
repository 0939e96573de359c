#!/usr/bin/env python
"""Search hyperparameters of the (beta-)VAE with Keras Tuner.

The same as ``tfvae tune`` (see ``tfvae/commands/tune.py`` for the options).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfvae.commands.tune import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
