"""The stamp of a study's evidence (``docs/*.json``): how it was made -- the commit and the files
uncommitted then (``tfvae.utils.provenance.git_state``), the command, each run's resolved config and
seed -- and the fingerprint of the data it was made on (``data_fingerprint``)."""

from __future__ import annotations

import os

from tfvae.utils.provenance import git_state


# the files of a built TFDS dataset that hold no data (dataset_info.json: TFDS's own record of the build)
_NOT_DATA = ("dataset_info.json",)


def data_fingerprint(data_configs) -> dict:
    """``{"<dataset>/<config>@<version>": SHA-256}`` of every dataset the ``data_configs`` (run
    configs' ``data`` sections) train and test on (``data.test_data_config``): over the built
    dataset's files, name and content (TFDS's ``dataset_info.json`` left out), so the same slices
    give the same fingerprint wherever they were built; None for a dataset that is not built."""
    import hashlib

    from tfvae.data import pipelines as data
    from tfvae.utils import files

    out: dict = {}
    for config in data_configs:
        for dc in (config, data.test_data_config(config)):
            b = data.builder(dc)
            key = f"{dc['name']}/{b.builder_config.name}@{b.version}"
            if key in out:
                continue
            folder = os.fspath(b.data_dir)
            if not os.path.isdir(folder):
                out[key] = None
                continue
            digest = hashlib.sha256()
            for name in sorted(os.listdir(folder)):
                path = os.path.join(folder, name)
                if os.path.isfile(path) and name not in _NOT_DATA:
                    digest.update(f"{name}\0{files.file_digest(path)}\n".encode())
            out[key] = digest.hexdigest()
    return out


def stamp(command: str, configs: dict, *, paths=("tfvae", "datasets", "scripts", "configs")) -> dict:
    """What an evidence file records of how it was made: the commit and the files uncommitted then
    under ``paths`` (``git_state``), the command, each run's resolved config (``configs``: ``{run:
    config}``) and seed, and the fingerprint of the data they trained and were tested on
    (``data_fingerprint``). The wall time is the caller's to add (``wall_s``)."""
    state = git_state(list(paths))
    return {"commit": state["commit"] or "unknown", "uncommitted": state["dirty"], "command": command,
            "configs": configs, "seeds": {str(k): c.get("seed") for k, c in configs.items()},
            "data": data_fingerprint([c["data"] for c in configs.values()])}
