"""The run directory as one layer: its layout, the marker that says tfvae made a folder, whole-folder
swaps and deletions, and the lock that keeps two jobs out of one run. It imports no job
(training, evaluation, ...): they import it for paths, and ``tfvae.runs.run.Run`` -- the face that calls
every job -- builds on it, so the import graph runs one way.

Layout of a run directory (``RunDir``)::

    config.json                 the resolved config the run was trained with
    history.csv                 loss, rec, kl (train and val_) per epoch, appended across resumes
    logs/                       TensorBoard, one run: train and validation curves, images, hparams, eval
    checkpoints/best.keras      the model at the epoch of lowest validation loss
    checkpoints/last.keras      the model after the latest finished epoch
    checkpoints/backup/         the resume state: state.json and the weights it names (tfvae.runs.callbacks)
    model.keras                 the model after the last epoch (the best one with train.patience)
    thresholds.json             thresholds calibrated on healthy validation slices (tfvae.thresholds.calibration), and
                                on named sets of the user's own healthy scans (tfvae.thresholds.healthy_scans)
    eval/                       the evaluation: results.json / .csv / .md, maps/, figures/, config.json

and beside it, hidden: ``.<run>.tfvae-lock`` while a job holds the run (``lock``), and the
``.tfvae-replaced`` / ``-partial`` / ``-deleting`` siblings of folder swaps.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time

from tfvae.utils import files

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
LOGS_DIR = "logs"
CHECKPOINTS_DIR = "checkpoints"
BACKUP_DIR = os.path.join(CHECKPOINTS_DIR, "backup")
THRESHOLDS_FILE = "thresholds.json"
EVAL_DIR = "eval"
RESULTS_FILE = "results.json"  # in an evaluation folder, beside the CONFIG_FILE it was made with
# the saved models of a run directory, by the name scripts offer for them (--checkpoint)
MODEL_FILES = {"final": "model.keras", "best": os.path.join(CHECKPOINTS_DIR, "best.keras"),
               "last": os.path.join(CHECKPOINTS_DIR, "last.keras")}
CHECKPOINTS = tuple(MODEL_FILES)
# keys besides train.* that a resumed run may change: where the user's data lies is not part of the run
RESUMABLE_KEYS = ("data.manual_dir",)
MARKER_FILE = ".tfvae"
MARKER_VERSION = 1


def mark(folder: str, kind: str) -> None:
    """Mark ``folder`` as made by tfvae (``kind``: "run" or "evaluation")."""
    files.write_json(os.path.join(folder, MARKER_FILE), {"kind": kind, "version": MARKER_VERSION}, indent=None)


def marker(folder: str) -> dict | None:
    """The marker of a folder tfvae made, else None."""
    try:
        with open(os.path.join(folder, MARKER_FILE)) as f:
            found = json.load(f)
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def is_ours(folder: str, kind: str) -> bool:
    return (marker(folder) or {}).get("kind") == kind


def sibling(folder: str, tag: str) -> str:
    """A hidden sibling of ``folder`` named after it: ``<parent>/.<name>.tfvae-<tag>``."""
    folder = os.path.abspath(folder)
    return os.path.join(os.path.dirname(folder), f".{os.path.basename(folder)}.tfvae-{tag}")


def remove_ours(folder: str, kind: str) -> None:
    """Delete ``folder`` if tfvae made it as ``kind``; anything else is refused."""
    if not is_ours(folder, kind):
        raise RunDirError(f"{folder} was not made by tfvae as a {kind} (no {MARKER_FILE} marker); "
                          "refusing to delete it")
    delete_whole(folder)


def delete_whole(folder: str) -> None:
    """Delete one of our folders so that a kill cannot leave half of it under its name (its marker
    gone, the rest there): it is renamed to a ``.tfvae-deleting`` sibling first, then deleted; such a
    sibling left by an earlier kill is deleted with it."""
    doomed = sibling(folder, "deleting")
    if os.path.exists(doomed):
        shutil.rmtree(doomed)
    os.rename(folder, doomed)
    shutil.rmtree(doomed)


def swap_in(complete: str, target: str) -> None:
    """Put the finished folder ``complete`` at ``target``: a folder already there is moved aside
    (``sibling(target, "replaced")``) and deleted only once the new one is in place."""
    if os.path.exists(target):
        aside = sibling(target, "replaced")
        os.rename(target, aside)
        os.rename(complete, target)
        delete_whole(aside)
    else:
        os.rename(complete, target)


class RunDirError(ValueError):
    """The run directory cannot be used as asked; the message says why and what to pass."""


class RunDir:
    """The paths of a run directory (see the module docstring)."""

    def __init__(self, run_dir: str | os.PathLike):
        self.dir = os.fspath(run_dir)

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    @property
    def config_path(self) -> str:
        return self.path(CONFIG_FILE)

    @property
    def history_path(self) -> str:
        return self.path(HISTORY_FILE)

    @property
    def logs_dir(self) -> str:
        return self.path(LOGS_DIR)

    @property
    def checkpoints_dir(self) -> str:
        return self.path(CHECKPOINTS_DIR)

    @property
    def backup_dir(self) -> str:
        return self.path(BACKUP_DIR)

    @property
    def thresholds_path(self) -> str:
        return self.path(THRESHOLDS_FILE)

    @property
    def eval_dir(self) -> str:
        return self.path(EVAL_DIR)

    def model_path(self, checkpoint: str = "final") -> str:
        if checkpoint not in MODEL_FILES:
            raise RunDirError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
        return self.path(MODEL_FILES[checkpoint])

    def trained_model_path(self, checkpoint: str = "final") -> str:
        """``model_path``, or ``RunDirError`` when that checkpoint has not been saved."""
        path = self.model_path(checkpoint)
        if not os.path.isfile(path):
            raise RunDirError(f"{path} not found (train the run first, or pick another checkpoint)")
        return path

    @property
    def is_run(self) -> bool:
        return os.path.isfile(self.config_path)


# --- one job at a time ---------------------------------------------------------------------------
LOCK_TAG = "lock"
_held: dict[str, list] = {}  # lock file -> [open file, depth, pid] of the locks this process holds


class RunLockError(RunDirError):
    """Another job (this or another process) holds the folder; the message names it."""


def lock_path(folder: str) -> str:
    """The lock file of ``folder``: a hidden sibling, ``.<name>.tfvae-lock`` (it survives the folder's
    own renames and exists before the folder does)."""
    return sibling(folder, LOCK_TAG)


@contextlib.contextmanager
def lock(folder: str, job: str):
    """Hold ``folder`` (a run directory, or localize's output folder) while ``job`` runs: training,
    resuming, evaluating, calibrating and localizing one run at once are refused with one line naming
    the holder (job, process, host, since when). The lock is an OS lock (``fcntl.flock``) on the lock
    file, released by the OS when its process ends however it ends: a lock left by a dead process is
    no lock (taken over as is). Reentrant within a process (a job calling another keeps it)."""
    path = lock_path(folder)
    if path in _held and _held[path][2] == os.getpid():  # a forked child inherits _held, not the lock
        _held[path][1] += 1
        try:
            yield
        finally:
            _held[path][1] -= 1
        return
    handle = _acquire(path, folder, job)
    _held[path] = [handle, 1, os.getpid()]
    try:
        yield
    finally:
        del _held[path]
        _release(handle)


def _acquire(path: str, folder: str, job: str):
    import fcntl

    os.makedirs(os.path.dirname(path), exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        try:
            holder = json.loads(handle.read() or "{}")
        except ValueError:
            holder = {}
        handle.close()
        who = (f"{holder.get('job', 'a tfvae job')} (process {holder.get('pid', '?')} on {holder.get('host', '?')}, "
               f"since {holder.get('since', '?')})")
        raise RunLockError(f"{folder} is in use by {who}; wait for it to finish, or stop that process") from None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"job": job, "pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
    handle.flush()
    return handle


def _release(handle) -> None:
    import fcntl

    try:
        handle.seek(0)
        handle.truncate()  # an empty lock file: nobody holds it
        handle.flush()
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
