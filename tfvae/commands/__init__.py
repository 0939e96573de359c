"""The command-line face of the library: one module per job, each an ``argparse`` front end that
calls ``tfvae`` and prints a summary. ``tfvae <command>`` (``tfvae.cli``) and ``python
scripts/<command>.py`` run the same ``main``."""

import argparse
import functools
import os
import sys


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, unless it is empty (None, False, []) or the help
    already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def os_error(e: OSError, where: str | None = None, elsewhere: str | None = None, fix: str | None = None) -> str:
    """One line for an operating-system error (disk full, read-only, permission denied, ...) naming
    the file (``where`` when the error names none) and what to do: ``tfvae.utils.files.os_error``, the one
    place such errors become messages."""
    from tfvae.utils import files

    return files.os_error(e, where, elsewhere=elsewhere, fix=fix)


def command_line(name: str, *args: str) -> str:
    """The command line that runs command ``name`` the way this one was started (``tfvae train ...``,
    or ``python scripts/train.py ...``), with ``args`` (quoted for a shell)."""
    import shlex

    started = sys.argv[0] if sys.argv else ""
    head = f"python {started}" if os.path.basename(started) == f"{name}.py" else f"tfvae {name}"
    return " ".join([head, *(shlex.quote(a) for a in args)])


INTERRUPTED = 130  # the exit status of a command ended by Ctrl-C (128 + SIGINT), as shells report it


class _SetAction(argparse.Action):
    """``--set KEY=VALUE ...`` (every occurrence applied, as argparse's ``extend``); a key given twice
    ends the command with one line naming it (``config.check_distinct``), never "the last wins"."""

    def __call__(self, parser, namespace, values, option_string=None):
        from tfvae.config import ConfigError, check_distinct

        items = list(getattr(namespace, self.dest, None) or []) + list(values)
        try:
            check_distinct(items)
        except ConfigError as e:
            parser.exit(2, f"error: {e}\n")
        setattr(namespace, self.dest, items)


def parser(doc: str) -> argparse.ArgumentParser:
    """A command's ``ArgumentParser``: the first paragraph of its module docstring as the
    description, defaults shown (``HelpFormatter``) and ``--version``."""
    from tfvae import __version__

    p = argparse.ArgumentParser(description=" ".join(doc.split("\n\n")[0].split()), formatter_class=HelpFormatter)
    p.add_argument("--version", action="version", version=f"tfvae {__version__}")
    return p


def add_run_dir(p: argparse.ArgumentParser, checkpoint: bool = True) -> None:
    """``--run-dir`` (required) and, with ``checkpoint``, ``--checkpoint``: the run a job works on."""
    from tfvae.utils.rundir import CHECKPOINTS  # no TensorFlow: --help stays instant

    p.add_argument("--run-dir", required=True, help="a run directory written by scripts/train.py")
    if checkpoint:
        p.add_argument("--checkpoint", choices=CHECKPOINTS, default="final",
                       help="which saved model (see tfvae.utils.rundir.MODEL_FILES)")


def add_set(p: argparse.ArgumentParser, help: str = "override config keys") -> None:
    """``--set KEY=VALUE ...``, every occurrence applied (argparse's ``extend``)."""
    p.add_argument("--set", nargs="+", action=_SetAction, default=[], metavar="KEY=VALUE", help=help)


def parse_quietly(parse_args, argv):
    """``parse_args(argv)``, then TensorFlow imported without its start-up noise
    (``console.quiet_tensorflow``) -- after parsing, so that ``--help`` stays instant."""
    args = parse_args(argv)
    from tfvae.utils.console import quiet_tensorflow

    quiet_tensorflow()
    return args


def entry(main):
    """A command's ``main``: its messages name flags, not Python arguments (``console.option``); a
    closed pipe (``tfvae ... --print-config | head``) ends it quietly, exit 0, as Python's
    documentation advises (stdout pointed at /dev/null, no traceback); Ctrl-C that the command does
    not answer itself ends it with one line, exit 130 (no traceback)."""
    @functools.wraps(main)
    def run(argv=None) -> int:
        from tfvae.utils import console

        before, console.COMMAND_LINE = console.COMMAND_LINE, True
        try:
            return main(argv)
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except KeyboardInterrupt:
            print("\ninterrupted (Ctrl-C)", file=sys.stderr)
            return INTERRUPTED
        finally:
            console.COMMAND_LINE = before
    return run
