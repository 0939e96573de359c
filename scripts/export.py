#!/usr/bin/env python
"""Export a run's model as a TensorFlow SavedModel (for TF Serving and tf.saved_model.load).

The same as ``tfvae export`` (see ``tfvae/commands/export.py`` for the options).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfvae.commands.export import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
