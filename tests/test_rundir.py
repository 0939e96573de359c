"""tfvae.utils.rundir: the run directory as one layer (no job imported), and its lock: one job at a time,
the holder named, a dead holder's lock free, reentrant within a process."""

import ast
import multiprocessing
import os
import re
import signal

import pytest

from tfvae.utils import rundir

ROOT = os.path.join(os.path.dirname(__file__), "..", "tfvae")


def _hold(folder, job, ready, release):
    with rundir.lock(folder, job):
        ready.set()
        release.wait(60)


def _holder(folder, job="train"):
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    process = ctx.Process(target=_hold, args=(folder, job, ready, release))
    process.start()
    assert ready.wait(30)
    return process, release


def test_a_folder_held_by_a_live_process_is_refused_naming_the_holder(tmp_path):
    folder = str(tmp_path / "run")
    process, release = _holder(folder)
    try:
        with pytest.raises(rundir.RunLockError) as e:
            with rundir.lock(folder, "evaluate"):
                pass
        message = str(e.value)
        assert message.startswith(f"{folder} is in use by train (process {process.pid} on ") and "since " in message
        assert "\n" not in message
    finally:
        release.set()
        process.join(30)
    with rundir.lock(folder, "evaluate"):  # released: free again
        pass


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
    folder = str(tmp_path / "run")
    process, _ = _holder(folder)
    os.kill(process.pid, signal.SIGKILL)  # no release, no cleanup
    process.join(30)
    assert os.path.getsize(rundir.lock_path(folder)) > 0  # its name is still in the file ...
    with rundir.lock(folder, "localize"):  # ... but the OS let the lock go with the process
        pass


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    folder = str(tmp_path / "run")
    with rundir.lock(folder, "evaluate"):
        with rundir.lock(folder, "calibrate"):  # a job calling another keeps the lock
            pass
        ctx = multiprocessing.get_context("fork")
        outcome = ctx.Queue()

        def try_lock():
            try:
                with rundir.lock(folder, "train"):
                    outcome.put("got it")
            except rundir.RunLockError as e:
                outcome.put(str(e))

        other = ctx.Process(target=try_lock)
        other.start()
        other.join(30)
        assert "is in use by evaluate" in outcome.get(timeout=10)  # still held after the inner job ended


def test_the_run_directory_layer_imports_no_job():
    tree = ast.parse(open(os.path.join(ROOT, "utils", "rundir.py")).read())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert {m for m in imported if m.startswith("tfvae")} == {"tfvae.utils"}  # tfvae.utils.files only
    for job in ("runs/training", "evaluation/evaluate", "runs/export", "evaluation/reporting"):  # not Run
        source = open(os.path.join(ROOT, f"{job}.py")).read()
        assert not re.search(r"from tfvae\.runs\.run import|from tfvae\.runs import (\w+, )*run\b|import tfvae\.runs\.run\b",
                             source), job
