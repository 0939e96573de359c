"""A quiet, honest console: TensorFlow imported without its start-up noise, and Keras progress bars
only where a terminal shows them.

Importing TensorFlow prints lines through absl before its log level applies ("All log messages
before absl::InitializeLog()", oneDNN and CUDA notices, and on a machine without a GPU an
``E0000 ... failed call to cuInit`` that reads as an error), and TFDS repeats "Using custom data
configuration" at INFO. ``quiet_tensorflow()`` imports TensorFlow (and probes the devices, where
the CUDA lines come from) with the process's stderr captured, then passes on every captured line
that is not such known noise, so real warnings and errors still show. Scripts call it after parsing
their arguments (``--help`` never imports TensorFlow); from Python every job of ``tfvae.Run`` calls
it before TensorFlow loads, so a notebook is as quiet. ``TFVAE_TF_LOGS=1`` in the environment
shows TensorFlow's start-up lines as they are (and leaves its log level alone).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time

NOISE = re.compile("|".join([
    r"All log messages before absl::InitializeLog\(\) is called",
    r"oneDNN custom operations are on",
    r"Could not find cuda drivers on your machine",
    r"failed call to cuInit",
    r"cudart_stub\.cc",
    r"This TensorFlow binary is optimized to use available CPU instructions",
    r"To enable the following instructions: .* rebuild TensorFlow",
    r"Unable to register cu(DNN|FFT|BLAS) factory",
    r"computation_placer\.cc",
    r"TF-TRT Warning",
    r"cuda_(dnn|fft|blas)\.cc",
]))


COMMAND_LINE = False  # True while a command (``tfvae <command>``) runs: its messages name flags


def option(flag: str, argument: str) -> str:
    """How a message names an option: the command-line flag (``"--overwrite"``) while a command runs
    (``tfvae.commands.entry``), else the Python argument (``"overwrite=True"``). A message says one
    or the other, never both."""
    return flag if COMMAND_LINE else argument


def is_noise(line: str) -> bool:
    return bool(NOISE.search(line))


def quiet_tensorflow() -> None:
    """Import TensorFlow (and list its devices) without the start-up noise; idempotent.
    ``TFVAE_TF_LOGS=1``: import it as it is, every line shown."""
    if "tensorflow" in sys.modules:
        return
    if os.environ.get("TFVAE_TF_LOGS") == "1":
        import tensorflow  # noqa: F401
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # the CUDA probing (and its cuInit line) happens here
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        kept = [line for line in captured.read().decode(errors="replace").splitlines()
                if line.strip() and not is_noise(line)]
    if kept:
        sys.stderr.write("\n".join(kept) + "\n")
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # TFDS's INFO lines ("Using custom data configuration")
    absl_logging.get_absl_logger().addFilter(_tfds_build_noise)


def _tfds_build_noise(record) -> bool:
    """False for TFDS's "Variant folder ... has no dataset_info.json" warnings, which it logs for
    the folder of a build under way (not a problem; a failed build is said as such)."""
    return not str(record.msg).startswith("Variant folder %s has no")


def progress_verbosity() -> int:
    """Keras ``verbose``: 1 (progress bars) on a terminal, 2 (one line per epoch) in a log file."""
    return 1 if sys.stdout.isatty() else 2


class Stage:
    """One stage of a long job: a line saying what it does, then its own Keras progress bar
    (``update(done, total)``; ``total`` None while unknown; ``done()`` ends a bar whose total was
    not known, in a log file with one line of the count and time). Silent when ``verbose`` is false."""

    def __init__(self, what: str, unit: str, verbose: bool = True):
        self.verbose, self.unit, self.bar, self.last = verbose, unit, None, 0
        self.start = time.perf_counter()
        if verbose:
            print(what, flush=True)

    def update(self, done: int, total: int | None = None) -> None:
        if not self.verbose:
            return
        if self.bar is None or (total is not None and self.bar.target != total):
            import keras

            self.bar = keras.utils.Progbar(total, verbose=progress_verbosity(), unit_name=self.unit)
        self.last = done
        self.bar.update(done, finalize=total is not None and done >= total)

    def done(self) -> None:
        if not self.verbose or self.bar is None or self.bar.target is not None:
            return
        if progress_verbosity() == 1:
            self.bar.update(self.last, finalize=True)
        else:  # Keras prints nothing for an unknown total in a log file
            print(f"{self.last} {self.unit}s - {time.perf_counter() - self.start:.0f}s", flush=True)
