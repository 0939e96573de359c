"""TFDS datasets as ``tf.data`` pipelines.

``builder(data_config)`` finds the TFDS builder a run config names (``data.name``, ``data.config``,
``data.data_dir``, ``data.image_size``), ``load_split`` builds it when needed (with TFDS's progress
bars) and returns a split as a dataset of example dicts, and ``images`` turns that into the
batches of slices the model trains on (augmented on the fly when asked: training split only).

Real datasets (``hcp_t2``, ``brats``, ``nifti_folder``, ``ixi``) are built from files the user downloaded,
found in the manual folder: ``data.manual_dir``, else the environment variable
``TFVAE_MANUAL_DIR``, else TFDS's ``<data_dir>/downloads/manual``. When that folder is missing or
empty and the dataset is not built yet, ``load_split`` raises ``MissingDataError`` with the
builder's instructions. ``test_data_config`` gives the data config evaluation scores
(``data.test_name`` / ``data.test_config``, e.g. train on ``hcp_t2``, test on ``brats``).
``data.preprocess`` (``nifti_folder``, ``brats``; ``ixi`` always) preprocesses raw heads before
slicing (``tfvae_datasets.raw_scans``): a config of its own, ``<config>_preprocessed``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import importlib
import json
import os
import sys

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from tfvae.data import augment as augment_lib
from tfvae.data import data_sources
from tfvae.utils import files

# data.name -> module whose import registers the builder with TFDS
BUILDERS = {
    "brain_phantom": "tfvae_datasets.brain_phantom",
    "hcp_t2": "tfvae_datasets.hcp_t2",
    "brats": "tfvae_datasets.brats",
    "nifti_folder": "tfvae_datasets.nifti_folder",
    "ixi": "tfvae_datasets.ixi",
}
MANUAL_DIR_ENV = data_sources.MANUAL_DIR_ENV
PREPROCESSING = ("nifti_folder", "brats")  # the builders data.preprocess turns raw-head preprocessing on for


class DataError(ValueError):
    """A dataset named in a config cannot be found or built; the message says why."""


class MissingDataError(DataError):
    """A dataset the user must download is not there; the message holds the instructions."""


test_data_config = data_sources.test_data_config  # the dataset evaluation scores (data.test_name)
manual_dir = data_sources.manual_dir  # data.manual_dir, else $TFVAE_MANUAL_DIR, else None


def builder(data_config: dict) -> tfds.core.DatasetBuilder:
    name = data_config["name"]
    if name not in BUILDERS:
        raise DataError(f"data.name: unknown dataset {name!r} (known: {', '.join(BUILDERS)})")
    cls = importlib.import_module(BUILDERS[name]).Builder
    configs = cls.builder_configs
    if data_config["config"] not in configs:
        raise DataError(f"data.config: {name} has no config {data_config['config']!r} "
                        f"(known: {', '.join(configs)})")
    config = configs[data_config["config"]]
    size = data_config["image_size"]
    if config.image_size != size:
        config = dataclasses.replace(config, name=f"{config.name}_{size}px", image_size=size)
    if data_config.get("skip_bad") and hasattr(config, "skip_bad") and not config.skip_bad:
        # the name of the size: skipping changes nothing unless cases are bad, and the skipped ones
        # are recorded in the built dataset's metadata.json; TFDS refuses a custom config named like
        # a registered one, so the registered size gets its size in the name too (default_64px)
        config = dataclasses.replace(config, skip_bad=True, name=f"{data_config['config']}_{size}px")
    if data_config.get("preprocess"):
        if not hasattr(config, "preprocess"):
            raise DataError(f"data.preprocess: {name} reads scans that are preprocessed already; raw heads are "
                            f"preprocessed by {', '.join(n for n in PREPROCESSING)} (ixi always)")
        if not config.preprocess:  # other data: a name of its own (default_preprocessed, default_128px_preprocessed)
            config = dataclasses.replace(config, preprocess=True, name=f"{config.name}_preprocessed")
    b = cls(config=config, data_dir=data_config["data_dir"])
    found = files.file_in_path(os.fspath(b.data_dir_root))
    if found is not None:  # TFDS would fail on its first makedirs, with a traceback
        where, fix = data_dir_source(data_config)
        below = "is a file" if found == os.path.abspath(os.fspath(b.data_dir_root)) else f"is below {found}, a file"
        raise DataError(f"{where} {os.fspath(b.data_dir_root)} {below}, not a folder; {fix}")
    return b


def data_dir_source(data_config: dict) -> tuple[str, str]:
    """``(where the TFDS data folder comes from, how to choose another)``: ``data.data_dir``, else
    the environment variable ``TFDS_DATA_DIR``, else TFDS's default folder."""
    from tfvae.utils.console import option

    key = option("--set data.data_dir=DIR", "the config key data.data_dir")
    if data_config.get("data_dir"):
        return "data.data_dir", f"name a folder with {key}"
    from tensorflow_datasets.core import constants

    env = os.environ.get("TFDS_DATA_DIR")  # TFDS reads it once, when it is imported: its DATA_DIR
    if env and os.path.abspath(os.path.expanduser(env)) == os.path.abspath(constants.DATA_DIR):
        return "TFDS_DATA_DIR", f"point TFDS_DATA_DIR at a folder, or name one with {key}"
    return "TFDS's data folder", f"name a folder with {key} (or TFDS_DATA_DIR)"


def _writable(path: str) -> bool:
    """Whether a folder can be made or written at ``path`` (the nearest existing folder above it)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return os.access(path, os.W_OK)


def _cannot_build(b: tfds.core.DatasetBuilder, data_config: dict, error: OSError | None = None) -> DataError:
    """One line: the dataset cannot be built in its data folder (read-only, full, a file on the path,
    ...), naming the folder and where else it can be built."""
    where, fix = data_dir_source(data_config)
    root = os.fspath(b.data_dir_root)
    what = f"{data_config['name']}/{b.builder_config.name}"
    if error is None or error.errno in files.READ_ONLY + files.DENIED:
        why = "is read-only" if error is None or error.errno in files.READ_ONLY else "cannot be written (permission denied)"
        return DataError(f"{what} is not built yet and the data folder {root} ({where}) {why}; build it in a "
                         f"writable folder: {fix.replace('name a folder', 'name one')}")
    if error.errno != errno.ENOTDIR:  # the data folder, not the temporary file TFDS was writing (and removed)
        error = OSError(error.errno, error.strerror, root)
    said = files.os_error(error, root, elsewhere=f"build it elsewhere: {fix.replace('name a folder', 'name one')}")
    return DataError(f"building {what} in {root} ({where}): {said.removeprefix(root + ': ')}")


def _missing_data_message(b: tfds.core.DatasetBuilder, data_config: dict, where: str) -> str:
    return data_sources.missing_data_message(data_config["name"], b.MANUAL_DOWNLOAD_INSTRUCTIONS, where)


def check_available(data_config: dict) -> tfds.core.DatasetBuilder:
    """The builder; raises ``MissingDataError`` (with the download instructions) when the dataset
    is neither built nor present in the manual folder. Cheap: reads no data."""
    b = builder(data_config)
    if b.is_prepared() or not b.MANUAL_DOWNLOAD_INSTRUCTIONS or getattr(b.builder_config, "folder", None):
        return b
    folder = manual_dir(data_config) or os.path.join(b.data_dir_root, "downloads", "manual")
    if not os.path.isdir(folder):
        raise MissingDataError(_missing_data_message(b, data_config, f"no folder {folder}"))
    if not os.listdir(folder):
        raise MissingDataError(_missing_data_message(b, data_config, f"{folder} is empty"))
    return b


SOURCE_RECORD = "tfvae_source.json"  # beside a built real dataset: the folder and files it was built from


def source_folder(b: tfds.core.DatasetBuilder, data_config: dict) -> str | None:
    """The folder a real-data builder reads (its ``folder`` field, else the manual folder or its
    ``<dataset>/`` subfolder, as the builders choose); None for a generated dataset."""
    if not b.MANUAL_DOWNLOAD_INSTRUCTIONS:
        return None
    folder = getattr(b.builder_config, "folder", None) or manual_dir(data_config) or \
        os.path.join(b.data_dir_root, "downloads", "manual")
    folder = os.path.abspath(os.path.expanduser(folder))
    sub = os.path.join(folder, b.name)
    return sub if os.path.isdir(sub) else folder


def source_files(folder: str):
    """The NIfTI files under ``folder`` as the builders see them: folders and files reached through
    symbolic links are followed (a subject folder linked into the manual folder is read through its
    link), each real folder once (a link back up the tree is not walked again), hidden and
    operating-system files and tfvae's own outputs left out (``nifti.ignored``). Yields
    ``(path relative to folder, path)``, sorted."""
    from tfvae.data.nifti import ignored

    seen = set()
    for parent, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(parent)
        if real in seen:  # reached again through a link: walked already
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not ignored(d))
        for name in sorted(names):
            if name.endswith((".nii", ".nii.gz")) and not ignored(name):
                path = os.path.join(parent, name)
                yield os.path.relpath(path, folder), path


def source_fingerprint(folder: str) -> str:
    """SHA-256 over the NIfTI files under ``folder`` (``source_files``: through symbolic links, as the
    builders read them): relative path, size and modification time of the file a path leads to, and
    where it leads (a link pointed elsewhere is a change)."""
    import hashlib

    digest = hashlib.sha256()
    for relative, path in source_files(folder):
        try:
            st = os.stat(path)  # the file a link leads to
        except FileNotFoundError:  # a dangling link: no data there, but a change all the same
            digest.update(f"{relative}\0dangling\0{os.readlink(path) if os.path.islink(path) else ''}\n".encode())
            continue
        target = os.path.realpath(path)
        digest.update(f"{relative}\0{st.st_size}\0{st.st_mtime_ns}\0{target}\n".encode())
    return digest.hexdigest()


FINGERPRINT_VERSION = 2  # 1 (no version recorded): os.walk without following symbolic links


def _fingerprint_v1(folder: str) -> str:
    """The fingerprint builds recorded before ``FINGERPRINT_VERSION`` 2: links to folders not followed."""
    import hashlib

    digest = hashlib.sha256()
    for parent, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            if name.endswith((".nii", ".nii.gz")):
                path = os.path.join(parent, name)
                st = os.stat(path)
                digest.update(f"{os.path.relpath(path, folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _has_links(folder: str) -> bool:
    return any(os.path.islink(os.path.join(parent, name))
               for parent, dirs, names in os.walk(folder) for name in dirs + names)


def _stale_reason(b: tfds.core.DatasetBuilder, folder: str) -> str | None:
    """Why a built real dataset no longer matches its source folder, or None when it does. A build
    recorded by an older tfvae (whose fingerprint did not follow symbolic links) is checked the old
    way and its record brought up to date when its folder holds no link (then both ways see the same
    files); with links, what lies behind them was never fingerprinted, so it is rebuilt."""
    record = os.path.join(os.fspath(b.data_dir), SOURCE_RECORD)
    if not os.path.isfile(record):
        return "it records no source folder (built by an older tfvae)"
    with open(record) as f:
        built = json.load(f)
    if built.get("folder") != folder:
        return f"it was built from {built.get('folder')}, the data is now read from {folder}"
    preprocessing = _preprocessing_digest(b)
    if preprocessing is not None and built.get("preprocessing") != preprocessing:
        return ("its raw heads were preprocessed with other settings (tfvae's raw-head preprocessing changed, e.g. "
                "issue 32's brain masks, or the config's preprocess_settings did); they are preprocessed again")
    if built.get("fingerprint_version", 1) < FINGERPRINT_VERSION:
        if _has_links(folder):
            return (f"{folder} holds symbolic links, and this build's record (by an older tfvae) did not look "
                    "behind them")
        if built.get("fingerprint") != _fingerprint_v1(folder):
            return f"files under {folder} were added, removed or changed since it was built"
        try:  # the same files either way: the record in the current form (a read-only data folder keeps the old)
            _record_source(b, folder)
        except OSError:
            pass
        return None
    if built.get("fingerprint") != source_fingerprint(folder):
        return f"files under {folder} were added, removed or changed since it was built"
    return None


def prepare(data_config: dict, log=print) -> tfds.core.DatasetBuilder:
    """The builder, built when it is not built yet. A real dataset (built from the manual folder)
    records its source folder and a fingerprint of its files, and is rebuilt -- with one line saying
    why -- when either differs, never silently reused."""
    b = check_available(data_config)
    folder = source_folder(b, data_config)
    config = tfds.download.DownloadConfig(manual_dir=manual_dir(data_config))
    # the download folder named, not left to TFDS: a rebuild (built in a staging folder) then finds the
    # raw heads preprocessed by earlier builds there (tfvae_datasets.raw_scans' cache)
    downloads = os.path.join(os.fspath(b.data_dir_root), "downloads")
    if b.is_prepared() and folder is not None and os.path.isdir(folder):
        reason = _stale_reason(b, folder)
        if reason:
            if not _writable(os.fspath(b.data_dir_root)):
                raise DataError(f"{data_config['name']}/{b.builder_config.name} in {b.data_dir} must be rebuilt "
                                f"({reason}), but its data folder is read-only; rebuild it in a writable folder: "
                                f"{data_dir_source(data_config)[1].replace('name a folder', 'name one')}")
            log(f"rebuilding {data_config['name']}/{b.builder_config.name}: {reason}")
            with _os_errors(b, data_config):
                _rebuild_whole(b, config, folder, downloads)
            return builder(data_config)  # the new build's info
        return b
    if not b.is_prepared():
        if not _writable(os.fspath(b.data_dir_root)):  # e.g. a shared TFDS folder mounted read-only
            raise _cannot_build(b, data_config)
        where = f"from {folder}" if folder is not None else "generated here, nothing downloaded"
        log(f"building {data_config['name']}/{b.builder_config.name} in {b.data_dir} ({where}; once)")
        sys.stdout.flush()
        with _os_errors(b, data_config):
            _build(b, config, downloads)
            if folder is not None:
                _record_source(b, folder)
    return b


@contextlib.contextmanager
def _os_errors(b: tfds.core.DatasetBuilder, data_config: dict):
    """A build's operating-system errors (a full disk, a read-only folder: ``OSError``, or TensorFlow's
    writers' errors that TFDS wraps) as one-line ``DataError`` s (``_cannot_build``)."""
    try:
        yield
    except BaseException as e:  # noqa: BLE001 - re-raised as it is unless it is an OS error
        sys.stderr.write("\n")  # after TFDS's progress bar, whose line it leaves open: the error on a line of its own
        sys.stderr.flush()
        found = files.as_os_error(e) if isinstance(e, Exception) else None
        if found is None or isinstance(e, ValueError):  # a bad source file (BadInputError) is said as such
            raise
        raise _cannot_build(b, data_config, found) from None


def _build(b: tfds.core.DatasetBuilder, config, download_dir: str | None = None) -> None:
    """``b.download_and_prepare`` without TFDS's "Downloading and preparing dataset" and
    "downloaded and prepared" lines: nothing is downloaded (the caller says what is built).
    ``download_dir``: TFDS's download folder (None: ``<b's data folder>/downloads``)."""
    if getattr(b.builder_config, "preprocess", False):  # raw heads: SimpleITK needed to build, not to read
        from tfvae.data import head_preprocessing

        try:
            head_preprocessing.require_simpleitk()
        except head_preprocessing.MissingExtraError as e:
            raise DataError(f"building {b.name}/{b.builder_config.name}: {e}") from None
    for name in ("_log_download_bytes", "_log_download_done"):  # TFDS 4.9's two prints, on this builder only
        if hasattr(b, name):
            setattr(b, name, lambda *args, **kwargs: None)
    b.download_and_prepare(download_dir=download_dir, download_config=config)


def _rebuild_whole(b: tfds.core.DatasetBuilder, config, folder: str, download_dir: str | None = None) -> None:
    """Build ``b``'s dataset again beside the old build (a hidden staging folder in the same data
    folder) and swap it in only once complete: a rebuild that fails keeps the previous build.
    ``download_dir``: the download folder the rebuild uses (the data folder's, not the staging one's)."""
    import shutil

    from tfvae.utils.rundir import swap_in

    staging = os.path.join(os.fspath(b.data_dir_root), f".tfvae-rebuild-{b.name}-{b.builder_config.name}")
    shutil.rmtree(staging, ignore_errors=True)  # left by an earlier rebuild that was cut short
    fresh = type(b)(config=b.builder_config, data_dir=staging)
    try:
        _build(fresh, config, download_dir)
        _record_source(fresh, folder)
        swap_in(os.fspath(fresh.data_dir), os.fspath(b.data_dir))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _preprocessing_digest(b: tfds.core.DatasetBuilder) -> str | None:
    """The digest of the raw-head preprocessing settings a build of ``b`` uses
    (``tfvae_datasets.raw_scans.settings_digest``), or None when its config preprocesses nothing."""
    cfg = b.builder_config
    if not getattr(cfg, "preprocess", False):
        return None
    from tfvae_datasets import raw_scans

    return raw_scans.settings_digest(raw_scans.settings_of(cfg, b.name))


def _record_source(b: tfds.core.DatasetBuilder, folder: str) -> None:
    path = os.path.join(os.fspath(b.data_dir), SOURCE_RECORD)
    record = {"folder": folder, "fingerprint": source_fingerprint(folder), "fingerprint_version": FINGERPRINT_VERSION}
    preprocessing = _preprocessing_digest(b)
    if preprocessing is not None:  # raw heads: a build made with other preprocessing settings is rebuilt
        record["preprocessing"] = preprocessing
    files.write_json(path, record, indent=None)


def describe(data_config: dict) -> str:
    """One line naming the dataset a job uses: name/config, where it is built, when and from what,
    and its volumes and slices per split (builds it first if needed)."""
    import datetime

    b = prepare(data_config, log=lambda line: None)
    info_path = os.path.join(os.fspath(b.data_dir), "dataset_info.json")
    when = datetime.datetime.fromtimestamp(os.path.getmtime(info_path)).strftime("%Y-%m-%d %H:%M")
    record = os.path.join(os.fspath(b.data_dir), SOURCE_RECORD)
    if os.path.isfile(record):
        with open(record) as f:
            source = "from " + json.load(f)["folder"]
    else:
        source = "generated, no download" if not b.MANUAL_DOWNLOAD_INSTRUCTIONS else "from an unrecorded folder"
    counts = (b.info.metadata or {}).get("volumes", {}) if b.info.metadata is not None else {}
    cfg = b.builder_config
    parts = []
    for split, info in b.info.splits.items():
        volumes = counts.get(split) or (cfg.num_volumes(split) if hasattr(cfg, "num_volumes") else None)
        parts.append(f"{split} {f'{volumes} volumes / ' if volumes else ''}{info.num_examples} slices")
    return (f"{data_config['name']}/{cfg.name} in {os.fspath(b.data_dir)} (built {when}, {source}): "
            + ", ".join(parts))


def test_data_warning(data_config: dict) -> str | None:
    """When evaluation will score another dataset than training uses (``data.test_name``), why it
    cannot yet (one line, said before the first epoch), else None."""
    test = test_data_config(data_config)
    if (test["name"], test["config"]) == (data_config["name"], data_config["config"]):
        return None
    try:
        check_available(test)
    except DataError as e:
        return (f"the test data {test['name']}/{test['config']} is not available yet; evaluation will need it "
                f"({str(e).splitlines()[0]})")
    return None


def check_splits(data_config: dict, splits) -> None:
    """Build the dataset if needed and check that it has every split of ``splits``: a mistyped
    split name is found before anything (a run directory, an evaluation) is touched."""
    b = prepare(data_config)
    missing = [s for s in splits if s not in b.info.splits]
    if missing:
        raise DataError(f"{data_config['name']}/{b.builder_config.name} has no split {missing[0]!r} "
                        f"(known: {', '.join(b.info.splits)})")


def brats_releases(data_config: dict) -> list[str] | None:
    """The BraTS releases a built ``brats`` dataset's cases come from (its metadata, recorded by the
    builder), or None for another dataset or a build that did not record them."""
    if data_config["name"] != "brats":
        return None
    b = builder(data_config)
    if not b.is_prepared():
        return None
    return (b.info.metadata or {}).get("releases")


def check_lesions(data_config: dict, split: str, exclude=()) -> None:
    """A split to be evaluated must hold lesions: a ``DataError`` naming the dataset, the split and
    its volumes (the cases, whose segmentation files are all empty) when no slice has a label > 0,
    found before anything is scored. ``exclude``: volume ids left out of the evaluation
    (``evaluate.exclude_volumes``): each must be one of the split's (a ``DataError`` naming the key
    and the ids that are not), and what is left must hold lesions. Reads the labels only."""
    b = prepare(data_config)
    exclude = set(exclude)
    examples = load_split(data_config, split).map(
        lambda ex: (ex["volume_id"], tf.reduce_any(ex["label"] > 0)), num_parallel_calls=tf.data.AUTOTUNE)
    volumes: dict[str, bool] = {}
    for volume_id, has_lesion in examples.batch(1024).as_numpy_iterator():
        for v, lesion in zip(volume_id, has_lesion):
            v = v.decode()
            if lesion and not exclude:
                return
            volumes[v] = volumes.get(v, False) or bool(lesion)
    unknown = sorted(exclude - set(volumes))
    if unknown:
        raise DataError(f"evaluate.exclude_volumes: {', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''} "
                        f"is not a volume of {data_config['name']}/{b.builder_config.name} split {split!r} (its "
                        f"volumes: {', '.join(list(volumes)[:5])}, ...); give ids of that split, or [] to leave none out")
    if any(lesion for v, lesion in volumes.items() if v not in exclude):
        return
    if exclude:
        raise DataError(f"evaluate.exclude_volumes leaves no volume with a lesion in {data_config['name']}/"
                        f"{b.builder_config.name} split {split!r} ({len(exclude)} of {len(volumes)} left out); "
                        "leave fewer out")
    volumes = {v: False for v in volumes}
    shown = ", ".join(list(volumes)[:5]) + (", ..." if len(volumes) > 5 else "")
    raise DataError(f"{data_config['name']}/{b.builder_config.name} split {split!r}: none of its {len(volumes)} "
                    f"volume(s) has a lesion ({shown}): every segmentation is empty, so AUROC, AUPRC and Dice are "
                    "undefined; check the segmentation files (or evaluate another split, data.test_split)")


def clip(image, limit: float | None):
    """``data.clip``: z-scored intensities clipped to [-limit, limit] (tensor or array); None: as is."""
    if limit is None:
        return image
    return tf.clip_by_value(image, -limit, limit) if tf.is_tensor(image) else np.clip(image, -limit, limit)


def load_split(data_config: dict, split: str) -> tf.data.Dataset:
    """The split as a dataset of example dicts (image, brain_mask, label, volume_id, ...),
    in a fixed order; builds the dataset first if it is not built yet. Images are clipped when
    ``data.clip`` says so."""
    b = prepare(data_config)
    if split not in b.info.splits:
        raise DataError(f"{data_config['name']}/{b.builder_config.name} has no split {split!r} "
                        f"(known: {', '.join(b.info.splits)})")
    ds = b.as_dataset(split=split, shuffle_files=False)
    limit = data_config.get("clip")
    return ds if limit is None else ds.map(lambda ex: {**ex, "image": clip(ex["image"], limit)})


def volume_slices(examples: tf.data.Dataset) -> tuple[tf.data.Dataset, list[str], list[int]]:
    """``(volumes, ids, counts)``: a dataset with one element per volume, its slices stacked
    (n, S, S, 1), in stored order, the volume ids and their slice counts. Reads the split's volume ids once; the split must be
    stored volume by volume (as every tfvae builder stores it)."""
    ids, counts = [], []
    for vid in examples.map(lambda ex: ex["volume_id"]).as_numpy_iterator():
        vid = vid.decode()
        if not ids or ids[-1] != vid:
            if vid in ids:
                raise DataError(f"slices of volume {vid} are not stored together; rebuild the dataset")
            ids.append(vid)
            counts.append(0)
        counts[-1] += 1
    if not ids:
        raise DataError("the split holds no slices")
    table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(ids), tf.range(len(ids), dtype=tf.int64)), default_value=-1)
    sizes = tf.constant(counts, tf.int64)
    keyed = examples.map(lambda ex: (table.lookup(ex["volume_id"]), ex["image"]))
    volumes = keyed.group_by_window(key_func=lambda key, image: key,
                                    reduce_func=lambda key, window: window.map(lambda k, image: image).batch(sizes[key]),
                                    window_size_func=lambda key: sizes[key])
    return volumes.apply(tf.data.experimental.assert_cardinality(len(ids))), ids, counts


def images(examples: tf.data.Dataset, batch_size: int, *, shuffle_buffer: int = 0, seed: int | None = None,
           cache: bool = True, augment: dict | None = None) -> tf.data.Dataset:
    """Batches of slices (B, S, S, 1) for training (``shuffle_buffer`` > 0) or evaluation.

    For training, slices are shuffled across all volumes every epoch: the volumes are cached in
    memory as stacks of slices, their order is shuffled anew each epoch, and a buffer of
    ``shuffle_buffer`` slices mixes the slices of neighbouring volumes in that order. (Shuffling
    slices alone would mix only volumes stored near each other, always the same ones: HCP's
    ~150k slices stored volume by volume give ~50 subjects per 10,000-slice buffer.)

    ``augment`` (a config's ``augment`` section; training only) transforms each batch on the fly
    (``tfvae.data.augment``), with per-batch seeds drawn from ``seed`` that change every epoch; None or
    all off adds nothing to the pipeline."""
    if shuffle_buffer:
        volumes, ids, counts = volume_slices(examples)
        volumes = volumes.cache() if cache else volumes
        ds = (volumes.shuffle(len(ids), seed=seed, reshuffle_each_iteration=True).unbatch()
              .apply(tf.data.experimental.assert_cardinality(sum(counts)))  # Keras then knows the epoch's length
              .shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True))
    else:
        ds = examples.map(lambda ex: ex["image"], num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.cache() if cache else ds
    ds = ds.batch(batch_size)
    if augment_lib.is_active(augment):
        settings = dict(augment)
        seeds = tf.data.Dataset.random(seed=0 if seed is None else seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds)).map(lambda x, s: augment_lib.augment(x, settings, s),
                                                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)
