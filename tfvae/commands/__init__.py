"""The command-line face of the library: one module per job, each an ``argparse`` front end that
calls ``tfvae`` and prints a summary. ``tfvae <command>`` (``tfvae.cli``) and ``python
scripts/<command>.py`` run the same ``main``."""
