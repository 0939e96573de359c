"""tfvae's sub-packages are its layers: a module imports only from its own layer and those below it.

From the bottom up (``tfvae/__init__.py``): utils -> config, metrics -> data (with the dataset builders,
``tfvae_datasets``) -> model -> maps -> thresholds -> evaluation -> runs -> studies -> commands. Every
import counts, also one inside a function: a lazy import still makes the lower layer depend on the
upper one. ``tfvae`` itself (its ``__init__``: ``Run``, ``config``, the oneDNN switch) and ``tfvae.cli``
sit above every layer.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LAYERS = {"utils": 0, "config": 1, "metrics": 1, "data": 2, "model": 3, "maps": 4, "thresholds": 5,
          "evaluation": 6, "runs": 7, "studies": 8, "commands": 9}
# names of the package root a layer may import (set before TensorFlow loads, or the version)
ROOT_NAMES = {"__version__", "TENSORFLOW_IMPORTED_FIRST", "X86"}


def layer_of(module: str) -> str | None:
    """``tfvae.maps.scoring`` -> ``maps``; the dataset builders belong to the data layer; None for
    ``tfvae`` itself, ``tfvae.cli`` and modules outside tfvae."""
    parts = module.split(".")
    if parts[0] == "tfvae_datasets":
        return "data"
    if parts[0] != "tfvae" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in LAYERS else None


def imported(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """``(line, module)`` of every import of a tfvae module in ``source`` (of ``module``), at any
    depth; ``from tfvae import x`` counts as importing ``tfvae.x``."""
    package = module if is_package else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            if base in ("tfvae", "tfvae_datasets"):
                out += [(node.lineno, f"{base}.{a.name}") for a in node.names if a.name not in ROOT_NAMES]
            else:
                out.append((node.lineno, base))
    return [(line, m) for line, m in out if m.split(".")[0] in ("tfvae", "tfvae_datasets")]


def upward(source: str, module: str, is_package: bool = False) -> list[str]:
    """The imports of ``module`` (its ``source``) that go up or sideways between layers."""
    own = layer_of(module)
    if own is None:
        return []
    bad = []
    for line, target in imported(source, module, is_package):
        theirs = layer_of(target)
        if theirs is None:
            if target in ("tfvae", "tfvae_datasets") or target.startswith("tfvae_datasets"):
                continue
            bad.append(f"{module}:{line} imports {target} (the package root or its command line)")
        elif theirs != own and LAYERS[theirs] >= LAYERS[own] and {own, theirs} != {"data"}:
            bad.append(f"{module}:{line} imports {target} ({theirs} is not below {own})")
    return bad


def modules():
    for folder, package in (("tfvae", "tfvae"), ("datasets", "tfvae_datasets")):
        for dirpath, _, names in os.walk(os.path.join(ROOT, folder)):
            for name in sorted(names):
                if not name.endswith(".py") or name.endswith("_test.py"):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, name), os.path.join(ROOT, folder))
                parts = [package, *rel[:-3].split(os.sep)]
                is_package = parts[-1] == "__init__"
                yield ".".join(parts[:-1] if is_package else parts), os.path.join(dirpath, name), is_package


def test_no_module_imports_from_a_layer_above_its_own():
    bad = []
    for module, path, is_package in modules():
        with open(path) as f:
            bad += upward(f.read(), module, is_package)
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


@pytest.mark.parametrize("source, module, expected", [
    ("from tfvae.runs.run import Run", "tfvae.maps.scoring", ["runs is not below maps"]),
    ("def f():\n    from tfvae.evaluation import reporting", "tfvae.runs.callbacks", []),
    ("def f():\n    from tfvae.runs import training", "tfvae.runs.callbacks", []),
    ("def f():\n    from tfvae import thresholds", "tfvae.maps.scoring", ["thresholds is not below maps"]),
    ("from tfvae.config import predictor_names", "tfvae.metrics", ["config is not below metrics"]),
    ("from ..evaluation import reporting", "tfvae.maps.scoring", ["evaluation is not below maps"]),
    ("from tfvae import __version__, cli", "tfvae.data.nifti", ["the package root or its command line"]),
    ("import tfvae\nfrom tfvae import X86", "tfvae.runs.training", []),
    ("from tfvae_datasets.brats import brats_dataset_builder", "tfvae.data.reference_labels", []),
    ("from tfvae.maps import scoring", "tfvae_datasets.brats.brats_dataset_builder", ["maps is not below data"]),
])
def test_the_check_finds_upward_imports(source, module, expected):
    found = upward(source, module)
    assert len(found) == len(expected) and all(e in f for e, f in zip(expected, found)), found


def test_the_public_api_and_the_layer_packages_import():
    import importlib

    import tfvae

    assert tfvae.Run is importlib.import_module("tfvae.runs.run").Run
    assert callable(tfvae.config.load) and callable(tfvae.config.resolve)
    for layer in LAYERS:
        assert importlib.import_module(f"tfvae.{layer}").__doc__, f"tfvae.{layer} says what it holds"


def test_a_run_saved_before_the_move_to_sub_packages_still_loads(tiny_run, tmp_path):
    """A model.keras of the flat layout names its class's module ``tfvae.model`` (checked on a run
    saved at commit 7dd0e5e: the only difference from today's file); it loads by its registered name,
    ``tfvae>BetaVAE``, into the same model."""
    import json
    import shutil
    import zipfile

    import numpy as np

    from tfvae import Run

    old = str(tmp_path / "old")
    shutil.copytree(tiny_run, old)
    path = os.path.join(old, "model.keras")
    with zipfile.ZipFile(os.path.join(tiny_run, "model.keras")) as z:
        parts = {name: z.read(name) for name in z.namelist()}
    config = json.loads(parts["config.json"])
    assert config["module"] == "tfvae.model.vae" and config["registered_name"] == "tfvae>BetaVAE"
    config["module"] = "tfvae.model"
    parts["config.json"] = json.dumps(config).encode()
    os.remove(path)
    with zipfile.ZipFile(path, "w") as z:
        for name, data in parts.items():
            z.writestr(name, data)
    x = np.linspace(0, 1, 2 * 32 * 32, dtype="float32").reshape(2, 32, 32, 1)
    new_model, old_model = Run(tiny_run).model(), Run(old).model()
    assert type(old_model) is type(new_model)
    np.testing.assert_array_equal(np.asarray(old_model.encoder(x)[0]), np.asarray(new_model.encoder(x)[0]))
