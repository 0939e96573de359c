"""The stamp of evidence files (tfvae.utils.provenance) against git itself."""

import subprocess

from tfvae.utils import provenance


def test_git_state_is_gits_and_none_outside_a_checkout(tmp_path, monkeypatch):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=provenance.ROOT, capture_output=True, text=True)
    state = provenance.git_state(["no/such/folder"])
    if head.returncode == 0:  # CI runs in a clean checkout of main
        assert state == {"commit": head.stdout.strip(), "dirty": []}
        porcelain = subprocess.run(["git", "status", "--porcelain"], cwd=provenance.ROOT, capture_output=True,
                                   text=True).stdout.splitlines()
        assert provenance.git_state()["dirty"] == [line[3:] for line in porcelain]
    monkeypatch.setattr(provenance, "ROOT", str(tmp_path))  # not a git checkout
    assert provenance.git_state() == {"commit": None, "dirty": None}


def test_the_root_is_the_checkout_holding_tfvae_so_repository_paths_mean_the_same():
    import os

    assert os.path.isfile(os.path.join(provenance.ROOT, "setup.py"))
    assert os.path.isfile(os.path.join(provenance.ROOT, "tfvae", "utils", "provenance.py"))
