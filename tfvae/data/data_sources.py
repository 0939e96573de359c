"""What a dataset needs from the user, known before TensorFlow loads: a job that names a dataset
the user must download, and finds neither it built nor its download, says so at once (with the
builder's own download instructions) instead of after TensorFlow's ~10 s start.

``missing_download(data_config)``: the one-line-plus-instructions message of
``tfvae.data.pipelines.check_available`` for the case that is certain without building anything -- no
version of the dataset built under its data folder, and no manual folder (or an empty one) --
else None (the full check runs later, after TensorFlow). The instructions are read from the
builder's module source (its ``MANUAL_DOWNLOAD_INSTRUCTIONS`` string) without importing it.
"""

from __future__ import annotations

import ast
import functools
import glob
import importlib.util
import os

MANUAL_DIR_ENV = "TFVAE_MANUAL_DIR"
TFDS_DATA_DIR_ENV = "TFDS_DATA_DIR"  # TFDS's own default folder: $TFDS_DATA_DIR, else ~/tensorflow_datasets


def manual_dir(data_config: dict) -> str | None:
    """``data.manual_dir``, else ``$TFVAE_MANUAL_DIR``, else None (TFDS's default)."""
    path = data_config.get("manual_dir") or os.environ.get(MANUAL_DIR_ENV) or None
    return os.path.expanduser(path) if path else None


def data_dir_root(data_config: dict) -> str:
    """The folder TFDS keeps built datasets in: ``data.data_dir``, else ``$TFDS_DATA_DIR``, else
    ``~/tensorflow_datasets``."""
    return os.path.expanduser(data_config.get("data_dir") or os.environ.get(TFDS_DATA_DIR_ENV)
                              or "~/tensorflow_datasets")


@functools.lru_cache(maxsize=None)
def download_instructions(name: str) -> str | None:
    """The ``MANUAL_DOWNLOAD_INSTRUCTIONS`` string of the ``name`` builder's module
    (``tfvae_datasets/<name>/<name>_dataset_builder.py``), read from its source; None for a dataset
    made without a download (the phantom) or an unknown name."""
    spec = importlib.util.find_spec("tfvae_datasets")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], name, f"{name}_dataset_builder.py")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in tree.body:
        if (isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "MANUAL_DOWNLOAD_INSTRUCTIONS"
                                                 for t in node.targets)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            return node.value.value
    return None


def test_data_config(data_config: dict) -> dict:
    """The data config of the dataset evaluation scores: ``data.test_name`` / ``data.test_config``
    when given (``test_config`` null: "default"), else the training dataset itself. Every other key
    (data_dir, image_size, manual_dir, skip_bad, preprocess, split names) is shared."""
    out = dict(data_config)
    if data_config.get("test_name"):
        out["name"] = data_config["test_name"]
        out["config"] = data_config.get("test_config") or "default"
    elif data_config.get("test_config"):
        out["config"] = data_config["test_config"]
    out["test_name"] = out["test_config"] = None
    return out


def missing_data_message(name: str, instructions: str, where: str) -> str:
    """The message of a dataset the user must download and has not (``where``: what was looked for)."""
    return (f"{name}: the data is not there yet ({where}); it must be downloaded by you.\n"
            f"{instructions.strip()}\n"
            f"Then point tfvae at it: train.py --manual-dir DIR, the config key data.manual_dir or the "
            f"environment variable {MANUAL_DIR_ENV}.\n"
            "To try tfvae without downloading anything, use the embedded phantom: "
            "--set data.name=brain_phantom data.test_name=null")


def missing_download(data_config: dict) -> str | None:
    """The message when ``data_config``'s dataset certainly cannot be had (module docstring), else None."""
    name = data_config["name"]
    instructions = download_instructions(name)
    if instructions is None:
        return None
    root = data_dir_root(data_config)
    if glob.glob(os.path.join(glob.escape(root), glob.escape(name), "*", "*", "dataset_info.json")):
        return None  # some config or version is built: the full check decides
    folder = manual_dir(data_config) or os.path.join(root, "downloads", "manual")
    if not os.path.isdir(folder):
        return missing_data_message(name, instructions, f"no folder {folder}")
    if not os.listdir(folder):
        return missing_data_message(name, instructions, f"{folder} is empty")
    return None
