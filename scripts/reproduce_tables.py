#!/usr/bin/env python
"""Reproduce the paper's Table 1 (latent size) and Table 2 (beta) and its ensemble line, over seeds.

The same as ``tfvae reproduce`` (see ``tfvae/commands/reproduce.py`` for the options).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfvae.commands.reproduce import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
