"""Raw heads in the real-data builders: each scan preprocessed once (``tfvae.data.head_preprocessing``:
reorientation, 1 mm resampling, N4, registration to the MNI152 template, brain extraction, crop),
cached, and its brain in template space sliced like any skull-stripped scan (issue 32).

Used by ``ixi`` (always) and by ``nifti_folder`` and ``brats`` with their ``preprocess`` field
(``data.preprocess: true`` in a run config). The builders' configs carry these fields
(``PreprocessConfig``, a ``real_data.SliceConfig``):

- ``preprocess`` (bool): preprocess each scan before slicing (``ixi``: always);
- ``preprocess_settings`` (pairs or dict): overrides of ``head_preprocessing.Settings`` (empty: the
  defaults, the same as ``tfvae preprocess`` and ``localize --preprocess`` use);
- ``preprocess_dir`` (str or None): the cache folder; None: ``<download_dir>/tfvae_preprocessed/``
  (TFDS's download folder, ``<data_dir>/downloads`` unless told otherwise);
- ``preprocess_workers`` (int): scans preprocessed at once in separate processes, before a split is
  sliced; 0: one per core (SimpleITK's threads split between them), 1: in this process. The
  workers are spawned (this process runs TensorFlow's threads, which a fork would copy mid-flight),
  so they import the main script: a script that builds a dataset at its top level needs
  ``if __name__ == "__main__":`` (tfvae's commands have it), else a worker dies and the build
  stops in one line saying so.

**The cache.** Each scan's three outputs (``<stem>_tfvae_preprocessed.nii.gz``,
``_tfvae_brainmask.nii.gz``, ``_tfvae_preprocessing.json``) go to
``<cache>/<settings digest>/<dataset>/<the scan's folder relative to the data folder>/``; they are
reused when the record's SHA-256 of the scan's content and its settings match
(``head_preprocessing.reusable``), so a rebuild (another image size, a scan added to the folder, a
lost build) preprocesses only new or changed scans. It lives in TFDS's download folder, not beside
the data: the builders never write into the user's data folder (it may be read-only or shared,
and every file written there would change the fingerprint that tells a built dataset from a stale
one), and the download folder is where TFDS keeps what is derived from a download and survives a
rebuild of the dataset (``tfvae.data.pipelines`` passes the same download folder to a rebuild that builds
in a staging folder).

**In template space.** The preprocessed brain (cropped, in MNI152 2009a space at
``template_resolution_mm``) is sliced with its brain mask pulled through the record's transform
(linear, >= 0.5: the very mask the preprocessing cut the brain with), and a segmentation of the raw
scan (``brats``, ``nifti_folder`` test cases) follows it by nearest neighbour (``to_template``).

**Failures.** A scan that cannot be preprocessed (``PreprocessError``: registration diverged,
implausible brain volume) is skipped with its name and reason on stderr and in the built
dataset's ``metadata.json``, whatever ``skip_bad`` says; the others go on, and a split whose scans
all failed is one error (``real_data.CaseSkipper``). SimpleITK missing is one line naming the extra.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time

import numpy as np
from etils import epath

from tfvae_datasets import real_data

CACHE_FOLDER = "tfvae_preprocessed"


PreprocessFailed = real_data.PreprocessFailed


@dataclasses.dataclass(eq=False)
class PreprocessConfig(real_data.SliceConfig):
    """The config fields of a builder that can preprocess raw heads (see the module docstring)."""

    preprocess: bool = False
    preprocess_settings: tuple = ()
    preprocess_dir: str | None = None
    preprocess_workers: int = 0


def _hp():
    from tfvae.data import head_preprocessing

    return head_preprocessing


def settings_of(cfg, dataset: str):
    """``head_preprocessing.Settings`` of a config's ``preprocess_settings``; an unknown setting or a
    value of the wrong type is a ``ValueError`` naming the field and the setting."""
    hp = _hp()
    given = cfg.preprocess_settings
    try:
        overrides = dict(given or ())
    except (TypeError, ValueError):
        raise ValueError(f"{dataset} config {cfg.name}: preprocess_settings must be a dict or (name, value) pairs, "
                         f"got {given!r}") from None
    fields = {f.name: f for f in dataclasses.fields(hp.Settings)}
    defaults = hp.Settings()
    for key, value in overrides.items():
        if key not in fields:
            raise ValueError(f"{dataset} config {cfg.name}: preprocess_settings.{key}: unknown setting "
                             f"(known: {', '.join(fields)})")
        default = getattr(defaults, key)
        expected = (int, float) if isinstance(default, float) else type(default)
        if isinstance(default, tuple) and isinstance(value, list):
            value = overrides[key] = tuple(value)
        if not isinstance(value, expected) or (isinstance(value, bool) and not isinstance(default, bool)):
            raise ValueError(f"{dataset} config {cfg.name}: preprocess_settings.{key} must be "
                             f"{type(default).__name__}, got {value!r}")
        if isinstance(default, float):
            overrides[key] = float(value)
    try:
        return hp.Settings(**overrides)
    except ValueError as e:
        raise ValueError(f"{dataset} config {cfg.name}: preprocess_settings: {e}") from None


def check_fields(cfg, dataset: str) -> None:
    """The preprocessing fields of ``cfg`` have their types (a ``ValueError`` naming the field)."""
    if not isinstance(getattr(cfg, "preprocess", False), bool):
        raise ValueError(f"{dataset} config {cfg.name}: preprocess must be true or false, got {cfg.preprocess!r}")
    workers = cfg.preprocess_workers
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        raise ValueError(f"{dataset} config {cfg.name}: preprocess_workers must be an integer >= 0 (0: one per "
                         f"core), got {workers!r}")
    if cfg.preprocess_dir is not None and not isinstance(cfg.preprocess_dir, (str, os.PathLike)):
        raise ValueError(f"{dataset} config {cfg.name}: preprocess_dir must be a folder or None, "
                         f"got {cfg.preprocess_dir!r}")
    settings_of(cfg, dataset)


def settings_digest(settings) -> str:
    """12 hex digits naming a ``Settings`` (the cache's folder per settings); ``threads`` aside,
    which changes no output."""
    chosen = {k: v for k, v in dataclasses.asdict(settings).items() if k != "threads"}
    text = json.dumps(chosen, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cache_root(cfg, dl_manager, settings) -> epath.Path:
    """``<preprocess_dir or <download_dir>/tfvae_preprocessed>/<settings digest>``."""
    base = epath.Path(os.path.expanduser(os.fspath(cfg.preprocess_dir))) if cfg.preprocess_dir \
        else epath.Path(dl_manager.download_dir) / CACHE_FOLDER
    return base / settings_digest(settings)


def to_template(data: np.ndarray, record: dict, *, labels: bool = False) -> np.ndarray:
    """``data`` on the scan's raw grid (``record["raw_affine"]``) on the preprocessed grid
    (``preprocessed_shape`` / ``preprocessed_affine``, template space), pulled through the record's
    ``template_to_raw``: nearest neighbour for ``labels`` (uint8), else linear (float32)."""
    hp = _hp()
    raw = hp.to_sitk(np.asarray(data, dtype=np.float32), np.asarray(record["raw_affine"], dtype=np.float64))
    reference = hp.to_sitk(np.zeros(record["preprocessed_shape"], np.float32),
                           np.asarray(record["preprocessed_affine"], dtype=np.float64))
    out, _ = hp.from_sitk(hp.resample(raw, reference, np.asarray(record["template_to_raw"], dtype=np.float64),
                                      linear=not labels))
    return np.rint(out).astype(np.uint8) if labels else out.astype(np.float32)


@dataclasses.dataclass
class Preprocessed:
    """A scan after preprocessing, ready to slice: the brain in template space and its mask there."""

    image: np.ndarray
    affine: np.ndarray
    mask: np.ndarray
    raw_mask: np.ndarray  # the brain mask in the scan's own raw grid (uint8)
    record: dict
    path: epath.Path  # the preprocessed file (messages name it)

    def label(self, seg: np.ndarray) -> np.ndarray:
        """A segmentation of the raw scan (same grid as the scan) in template space (nearest neighbour)."""
        return to_template(seg, self.record, labels=True)


class Preprocessor:
    """Preprocessing, with its cache, for one build of one dataset (``dataset``: the builder's name).

    ``prepare(jobs)`` preprocesses a split's scans ahead of slicing, ``preprocess_workers`` at once
    (cached ones are reused); ``load(volume_id, scan)`` returns a ``Preprocessed`` (from the cache),
    raising ``PreprocessFailed`` for a scan that failed."""

    def __init__(self, dataset: str, cfg, dl_manager=None, *, root: epath.Path | None = None):
        _hp().require_simpleitk()  # a missing extra: one line, before anything is built
        self.dataset = dataset
        self.settings = settings_of(cfg, dataset)
        self.root = root if root is not None else cache_root(cfg, dl_manager, self.settings)
        self.workers = int(cfg.preprocess_workers)
        self.failed: dict[str, str] = {}  # volume id -> why its preprocessing failed (always skipped)
        self.bad: dict[str, str] = {}  # volume id -> why its file cannot be read (skip_bad decides)
        self.times: list[float] = []
        self._prepared: set = set()

    def out_dir(self, volume_id: str) -> str:
        """``<root>/<dataset>/<the volume id's folders>``: one folder per folder of the source, so two
        scans of one name in different folders never share outputs."""
        parts = volume_id.split("/")[:-1]
        return os.path.join(os.fspath(self.root), self.dataset, *parts)

    def _say(self, line: str) -> None:
        print(f"{self.dataset}: {line}", file=sys.stderr)
        real_data.log.info("%s: %s", self.dataset, line)

    def _one(self, volume_id: str, scan) -> dict:
        """The scan's outputs, preprocessed here unless cached; failures recorded and raised."""
        hp = _hp()
        if volume_id in self.failed:
            raise PreprocessFailed(self.failed[volume_id])
        if volume_id in self.bad:
            raise real_data.BadInputError(self.bad[volume_id])
        out = self.out_dir(volume_id)
        found = hp.reusable(os.fspath(scan), out, self.settings) if os.path.isfile(os.fspath(scan)) else None
        if found is not None:
            return found
        os.makedirs(out, exist_ok=True)
        start = time.perf_counter()
        try:
            paths = hp.preprocess_scan(os.fspath(scan), out, self.settings)
        except (hp.PreprocessError, RuntimeError) as e:
            why = failure(e, scan)
            self.failed[volume_id] = why
            self._say(f"{volume_id} failed preprocessing: {why}")
            raise PreprocessFailed(why) from None
        took = time.perf_counter() - start
        self.times.append(took)
        self._say(f"{volume_id} preprocessed in {took:.0f} s")
        return paths

    def prepare(self, jobs) -> None:
        """Preprocess the scans of ``jobs`` (``(volume_id, scan path)``) that are not cached yet,
        ``preprocess_workers`` at once (1: nothing done ahead; ``load`` preprocesses each in turn)."""
        hp = _hp()
        jobs = [(vid, os.fspath(scan)) for vid, scan in jobs if vid not in self._prepared]
        self._prepared.update(vid for vid, _ in jobs)
        workers = self.workers or (os.cpu_count() or 1)
        if workers <= 1 or len(jobs) <= 1:
            return
        todo = []
        for vid, scan in jobs:
            out = self.out_dir(vid)
            if not os.path.isfile(scan):
                continue  # said when the scan is loaded
            if hp.reusable(scan, out, self.settings) is None:
                os.makedirs(out, exist_ok=True)
                todo.append((vid, scan, out))
        if len(todo) <= 1:
            return
        import concurrent.futures
        import multiprocessing
        from concurrent.futures.process import BrokenProcessPool

        workers = min(workers, len(todo))
        threads = self.settings.threads or max(1, (os.cpu_count() or 1) // workers)
        self._say(f"preprocessing {len(todo)} scan(s), {workers} at once ({threads} thread(s) each)")
        start = time.perf_counter()
        # spawn, not fork: this process has TensorFlow's threads running. The workers' thread count is
        # set in each worker (not in the settings, which the cache compares: it changes no step)
        pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                      initializer=_set_threads, initargs=(threads,))
        try:
            futures = {pool.submit(_preprocess_timed, scan, out, self.settings): (vid, scan) for vid, scan, out in todo}
            for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
                vid, scan = futures[future]
                try:
                    took = future.result()
                except BrokenProcessPool:
                    raise RuntimeError(f"{self.dataset}: a preprocessing worker process died ({workers} scans "
                                       "preprocessed at once: out of memory? or a script that builds at its top "
                                       "level, without if __name__ == '__main__': the workers are spawned and "
                                       "import it); set the config field preprocess_workers lower, 1 to preprocess "
                                       "in this process (scans done so far are cached)") from None
                except real_data.BadInputError as e:  # unreadable: stops the build unless skip_bad
                    self.bad[vid] = str(e)
                    continue
                except (hp.PreprocessError, RuntimeError) as e:
                    why = failure(e, scan)
                    self.failed[vid] = why
                    self._say(f"{vid} failed preprocessing ({done}/{len(todo)}): {why}")
                    continue
                self.times.append(took)
                self._say(f"{vid} preprocessed in {took:.0f} s ({done}/{len(todo)}, "
                          f"{time.perf_counter() - start:.0f} s so far)")
        except BaseException:  # Ctrl-C, a worker lost: the scans not started are not waited for
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()

    def load(self, volume_id: str, scan, *, expect_modality: str | None = None) -> Preprocessed:
        """The scan preprocessed (cached): brain image, affine, mask and record in template space."""
        hp = _hp()
        paths = self._one(volume_id, scan)
        path = epath.Path(paths["preprocessed"])
        image, affine = real_data.load_volume(path, expect_modality=expect_modality)
        record = hp.load_record(paths["record"])
        raw_mask, mask_affine = real_data.load_volume(paths["brainmask"])
        mask = (to_template(raw_mask, {**record, "raw_affine": mask_affine}) >= 0.5).astype(np.uint8)
        if mask.shape != image.shape:
            raise real_data.bad(path, f"shape {image.shape} differs from its record's {tuple(mask.shape)}; "
                                      f"delete {os.path.dirname(paths['record'])} to preprocess again")
        return Preprocessed(image=image, affine=affine, mask=mask, raw_mask=(raw_mask > 0).astype(np.uint8),
                            record=record, path=path)

    def report(self, split: str) -> None:
        """One line (stderr) on the scans preprocessed since the last report and their time; nothing
        when every scan came from the cache."""
        if self.times:
            self._say(f"{split}: preprocessed {len(self.times)} scan(s), {np.median(self.times):.0f} s median per "
                      f"scan ({sum(self.times):.0f} s of worker time); cache: {os.fspath(self.root)}")
        self.times = []


def failure(e: Exception, scan) -> str:
    """Why a scan failed preprocessing, one line naming it: a ``PreprocessError``'s message, or
    SimpleITK's multi-line ``RuntimeError`` (e.g. no overlap left while registering) cut to its
    ``ERROR:`` part; any other ``RuntimeError`` is re-raised (a bug, not the scan)."""
    if not isinstance(e, RuntimeError):
        return str(e)
    text = " ".join(str(e).split())
    if "itk" not in text.lower():
        raise e
    at = text.rfind("ERROR:")
    return f"{os.fspath(scan)}: SimpleITK: " + (text[at + len("ERROR:"):].strip() if at >= 0 else text)


def _set_threads(threads: int) -> None:
    """Worker initializer: SimpleITK's threads in this worker."""
    from tfvae.data import head_preprocessing as hp

    hp.require_simpleitk().ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))


def _preprocess_timed(scan: str, out: str, settings) -> float:
    """Worker: preprocess one scan; seconds taken."""
    from tfvae.data import head_preprocessing as hp

    start = time.perf_counter()
    hp.preprocess_scan(scan, out, settings)
    return time.perf_counter() - start
