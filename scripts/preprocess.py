#!/usr/bin/env python
"""Raw T2 heads to skull-stripped, bias-corrected brains in template space.

The same as ``tfvae preprocess`` (see ``tfvae/commands/preprocess.py`` for the options).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfvae.commands.preprocess import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
