"""Train a (beta-)VAE on healthy brain slices.

    python scripts/train.py --config configs/beta10.json [--run-dir runs/beta10]
        [--set data.name=brain_phantom train.epochs=2 ...] [--resume | --overwrite] [--manual-dir DIR]

Real data (hcp_t2, brats, nifti_folder) is read from the folder given by --manual-dir, else the
config key data.manual_dir, else the environment variable TFVAE_MANUAL_DIR (see docs/real_data.md).

Watch it with ``tensorboard --logdir runs``. See ``tfvae/runs/run.py`` for what the run directory
holds and ``tfvae/config/__init__.py`` for every config key. From Python: ``tfvae.Run.create(...).train()``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfvae.commands import INTERRUPTED, add_set, command_line, entry, os_error, parser  # noqa: E402


def parse_args(argv=None):
    p = parser(__doc__)
    p.add_argument("--config", help="JSON config (see configs/); optional with --resume, which uses the run's own")
    p.add_argument("--run-dir", help="where the run is written (default: runs/<config name>)")
    add_set(p, "override config keys, e.g. --set train.epochs=2 data.config=tiny")
    p.add_argument("--manual-dir", metavar="DIR",
                   help="folder holding the downloaded data (HCP, BraTS, NIfTI scans); overrides data.manual_dir "
                        "and the environment variable TFVAE_MANUAL_DIR")
    p.add_argument("--print-config", action="store_true", help="print the resolved config (every default) and exit")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last epoch")
    mode.add_argument("--overwrite", action="store_true", help="delete the run in --run-dir and start again")
    args = p.parse_args(argv)
    if not args.config and not args.resume:
        p.error("--config is required (unless --resume continues an existing --run-dir)")
    if args.resume and not args.run_dir:
        p.error("--resume needs --run-dir")
    return args


@entry
def main(argv=None) -> int:
    args = parse_args(argv)
    from tfvae import config as config_lib  # no TensorFlow yet: a mistyped key is said at once
    from tfvae.runs.run import Run, RunDirError

    try:
        if args.manual_dir:
            manual = "data.manual_dir=" + json.dumps(os.path.abspath(os.path.expanduser(args.manual_dir)))
            config_lib.check_distinct([*args.set, (f"--manual-dir {args.manual_dir}", manual)])
            args.set = [*args.set, manual]
        config = config_lib.load(args.config, args.set) if args.config else None
        if args.print_config:
            print(json.dumps(config if config is not None else Run(args.run_dir).config(args.set), indent=2))
            return 0
        if config is not None and not args.resume:  # a run already there, or data never downloaded: said
            # before TensorFlow loads
            Run.check_new(args.run_dir or os.path.join("runs", config["name"]), config, overwrite=args.overwrite)
            from tfvae.data import data_sources

            missing = data_sources.missing_download(config["data"])
            if missing:
                print(f"error: {missing}", file=sys.stderr)
                return 2
    except (config_lib.ConfigError, RunDirError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from tfvae.utils.console import quiet_tensorflow

    quiet_tensorflow()
    from tfvae.data import pipelines as data
    from tfvae.data.nifti import BadInputError

    try:
        if config is not None and not args.resume:
            data.check_available(config["data"])  # missing data: the instructions, before any run directory
            d = config["data"]
            data.check_splits(d, [d["train_split"], d["validation_split"]])  # before --overwrite moves anything
        run_dir = args.run_dir or os.path.join("runs", config["name"])
        held = contextlib.ExitStack()  # one job at a time on this run, from its creation to the last epoch
        held.enter_context(Run(run_dir).lock("train", config if config is not None else Run(run_dir).config(args.set)))
    except (config_lib.ConfigError, RunDirError, data.DataError, BadInputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the run's folder cannot be made (read-only, a file on its path, ...)
        print(f"error: {os_error(e, elsewhere='choose another --run-dir')}", file=sys.stderr)
        return 2
    with held:
        try:
            return _train(args, config, run_dir)
        except KeyboardInterrupt:  # Ctrl-C: the run stays as the last finished epoch left it
            print(f"\n{interrupted(run_dir)}", file=sys.stderr)
            return INTERRUPTED


def resume_command(run_dir: str) -> str:
    return command_line("train", "--run-dir", run_dir, "--resume")


def interrupted(run_dir: str) -> str:
    """One line for a training stopped by Ctrl-C: the epochs kept, and the command that continues it."""
    from tfvae.runs.callbacks import ResumeState
    from tfvae.runs.run import Run

    run = Run(run_dir)
    if not run.is_run:
        return "interrupted (Ctrl-C) before the run was created; nothing to resume"
    try:
        state = ResumeState.read(run.backup_dir)
    except (OSError, ValueError):
        state = None
    done = f"{state['epoch']} finished epoch(s) kept" if state else "no epoch finished yet"
    return f"interrupted (Ctrl-C): {done} in {run_dir}; continue with: {resume_command(run_dir)}"


def _train(args, config, run_dir) -> int:
    from tfvae import config as config_lib
    from tfvae.utils import files
    from tfvae.data import pipelines as data
    from tfvae.runs.callbacks import NonFiniteLoss
    from tfvae.data.nifti import BadInputError
    from tfvae.runs.run import Run, RunDirError

    try:
        run = Run.create(run_dir, config, resume=args.resume, overwrite=args.overwrite, overrides=args.set)
    except (config_lib.ConfigError, RunDirError, data.DataError, BadInputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {os_error(e, run_dir, elsewhere='choose another --run-dir')}", file=sys.stderr)
        return 2

    from tfvae.runs import training

    try:
        training.strategy(run.config())  # a multi-worker strategy must exist before any TensorFlow op runs
    except config_lib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:  # a resumed run's data is checked here (a new run's before its directory was made)
        print(f"data: {data.describe(run.config()['data'])}")
        warning = data.test_data_warning(run.config()["data"])  # found now, not after the last epoch
    except (data.DataError, BadInputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    from tfvae.runs.training import resolve_precision

    print(f"precision: {resolve_precision(run.config())[0]}")
    print(f"run directory: {run.dir}  (tensorboard --logdir {os.path.dirname(os.path.abspath(run.dir))})")
    try:
        history = run.train()
    except (data.DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLoss as e:
        where = ("the new run was discarded and the run it was to replace is back in place" if run.restored_previous
                 else f"the checkpoints of the last good epoch are in {run.checkpoints_dir}")
        print(f"error: {e}; stopped: {where}; try a lower train.learning_rate.", file=sys.stderr)
        return 1
    except Exception as e:  # disk full, permission denied (an OSError, or TensorFlow's writers' errors): resumable
        found = files.as_os_error(e)
        if found is None:
            raise
        print(f"error: {os_error(found, run.dir, elsewhere='move the run to another disk')}; the last finished epoch "
              f"is kept: then continue with: {resume_command(run.dir)}", file=sys.stderr)
        return 2
    final = {k: v[-1] for k, v in history.history.items()} if history.history else {}
    from tfvae.runs.callbacks import metric_parts

    parts = metric_parts(final)
    while len(parts) > 1 and len("  ".join(parts)) > 58:  # 80 columns with "trained NNN epochs: "
        parts.pop()
    print(f"trained {len(history.epoch)} epochs: {'  '.join(parts)}")
    print(f"model: {run.model_path()}")
    return 0

