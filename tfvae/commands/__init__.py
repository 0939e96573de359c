"""The command-line face of the library: one module per job, each an ``argparse`` front end that
calls ``tfvae`` and prints a summary. ``tfvae <command>`` (``tfvae.cli``) and ``python
scripts/<command>.py`` run the same ``main``."""

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, unless it is empty (None, False, []) or the help
    already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def os_error(e: OSError) -> str:
    """One line for an operating-system error (disk full, permission denied, ...) naming the file."""
    where = e.filename or ""
    return f"{where}: {e.strerror}" if e.strerror else f"{where}: {type(e).__name__}: {e}".lstrip(": ")
