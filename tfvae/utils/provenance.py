"""Where a published figure came from: the git commit of this checkout and what was uncommitted
(``git_state``), for the stamp every evidence file carries."""

from __future__ import annotations

import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def git_state(paths=()) -> dict:
    """``{"commit": full hash, "dirty": [paths with uncommitted changes, untracked included]}`` of
    the checkout tfvae runs from; ``paths``: only changes under those (repository-relative) paths
    count; ``{"commit": None, "dirty": None}`` outside a git checkout or without git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": [line[3:] for line in status]}
