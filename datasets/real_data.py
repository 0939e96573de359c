"""The plumbing the real-data builders (hcp_t2, brats, nifti_folder, ixi) share: their config fields
(``SliceConfig``), the manual folder they read (``manual_root``), the case loop of their
``_generate_examples`` (``case_examples``), ``skip_bad`` handling (``CaseSkipper``), seeded subject
splits (``validation_subset``), label checks, and safe NIfTI reading (re-exported from ``tfvae.data.nifti``).

Every problem with a source file becomes a ``BadInputError`` whose message is one line that names
the file and the problem (``<path>: <problem>``): a missing, corrupt or truncated file, a 2D or 4D
volume, NaN or infinite voxels, a segmentation or mask whose shape or affine differs from its
image's, a label value the dataset does not know, an empty brain. ``CaseSkipper`` implements the
builders' ``skip_bad`` option: it either re-raises or records the bad case and reports the skipped
cases when the split is done. Nothing here writes to the source folders.
"""

from __future__ import annotations

import dataclasses
import logging
import sys

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from tfvae.data import preprocessing
from tfvae_datasets.slices import slice_examples
from tfvae.data.nifti import (AFFINE_ATOL, NIFTI_SUFFIXES, BadInputError, bad, check_same_grid,  # noqa: F401
                         find_nifti, ignored, label_scaling, load_volume, strip_nifti_suffix)

log = logging.getLogger("tfvae_datasets")


@dataclasses.dataclass(eq=False)
class SliceConfig(tfds.core.BuilderConfig):
    """Fields shared by the real-data builders' configs. ``image_size`` pixels span ``fov_mm`` mm
    (so pixels have the same physical size whatever the scan's voxel size); axial slices with less
    than ``min_brain_fraction`` of the largest slice's brain area are dropped; ``skip_bad`` skips
    (and reports) bad cases instead of stopping the build."""

    image_size: int = 64
    fov_mm: float = 192.0
    min_brain_fraction: float = 0.2
    skip_bad: bool = False


class PreprocessFailed(BadInputError):
    """A raw scan the preprocessing could not handle (``tfvae.data.head_preprocessing.PreprocessError``:
    registration diverged, implausible brain volume; one line naming the scan). ``CaseSkipper``
    always skips it, whatever ``skip_bad`` says: the other scans go on (``raw_scans``)."""


LABEL_TOLERANCE = 1e-3  # labels read back within this of an integer (a header's scl_slope on integer storage)


def check_labels(path, label: np.ndarray, allowed, mapping: dict | None = None) -> np.ndarray:
    """Integer label values from ``allowed`` as uint8, with ``mapping`` applied (e.g. {3: 4}).

    A segmentation saved with a scaling (float labels stored as integers get a ``scl_slope``, and
    read back as 2.0000305) is rounded when every value lies within ``LABEL_TOLERANCE`` of an
    integer, and said once (a log line); farther values are a one-line error naming the values
    found and the header's scaling."""
    rounded = np.round(label)
    if not np.all(label == rounded):
        off = np.abs(label - rounded)
        if float(off.max()) > LABEL_TOLERANCE:
            found = np.unique(label[off > LABEL_TOLERANCE])
            shown = ", ".join(f"{v:.6g}" for v in found[:5]) + (", ..." if len(found) > 5 else "")
            raise bad(path, f"segmentation has non-integer values ({shown}; header: {label_scaling(path)})")
        log.warning("%s: label values within %g of integers (header: %s); rounded", path, float(off.max()),
                    label_scaling(path))
        label = rounded
    values = set(int(v) for v in np.unique(label))
    unknown = sorted(values - set(allowed))
    if unknown:
        raise bad(path, f"unknown label value(s) {unknown} (expected {sorted(allowed)})")
    out = label.astype(np.uint8)
    for source, target in (mapping or {}).items():
        out[out == source] = target
    return out


def slices_of(path, image, affine, *, mask=None, label=None, cfg) -> preprocessing.SlicedVolume:
    """``preprocessing.volume_to_slices`` with its errors turned into ``BadInputError`` naming ``path``."""
    try:
        return preprocessing.volume_to_slices(image, affine, mask=mask, label=label, image_size=cfg.image_size,
                                              fov_mm=cfg.fov_mm, min_brain_fraction=cfg.min_brain_fraction)
    except preprocessing.PreprocessingError as e:
        raise bad(path, e) from None


class CaseSkipper:
    """Stop at the first bad case (``skip_bad=False``) or skip it and report at the end.

    Usage::

        skipper = CaseSkipper(skip_bad, "hcp_t2", split)
        for case in cases:
            with skipper(case_name):
                ...  # yields nothing when a BadInputError is raised
        skipper.finish(num_examples, where)
    """

    def __init__(self, skip_bad: bool, dataset: str, split: str, record: dict | None = None):
        self.skip_bad, self.dataset, self.split = skip_bad, dataset, split
        self.skipped: list[tuple[str, str]] = []
        self.record = record  # e.g. the builder's info.metadata: gets {"skipped": {split: [...]}}

    def run(self, case: str, make):
        """Call ``make()``; on ``BadInputError`` re-raise or record ``case`` and return None
        (``PreprocessFailed``: always recorded)."""
        try:
            return make()
        except BadInputError as e:
            if not self.skip_bad and not isinstance(e, PreprocessFailed):
                raise
            self.skipped.append((case, str(e)))
            log.warning("%s/%s: skipping bad case %s: %s", self.dataset, self.split, case, e)
            return None

    def finish(self, num_examples: int, where) -> None:
        """Report the skipped cases; an empty split is an error."""
        if self.skipped:
            lines = [f"{self.dataset}: skipped {len(self.skipped)} bad case(s) of split {self.split!r}:"]
            lines += [f"  {case}: {reason}" for case, reason in self.skipped]
            print("\n".join(lines), file=sys.stderr)
            log.warning("\n".join(lines))
            if self.record is not None:
                self.record.setdefault("skipped", {})[self.split] = [
                    {"case": case, "reason": reason} for case, reason in self.skipped]
        if num_examples == 0:
            why = (f" ({len(self.skipped)} bad case(s) skipped; the first, {self.skipped[0][0]}: {self.skipped[0][1]})"
                   if self.skipped else "")
            raise BadInputError(f"{where}: split {self.split!r} of {self.dataset} would be empty{why}")


def validation_subset(ids, fraction: float, seed: int) -> set:
    """The ids that go to validation: ``round(fraction * n)`` of them (at least one when there are
    two or more ids and ``fraction`` > 0), chosen by a seeded hash of each id, so the choice is
    reproducible and does not depend on the listing order (adding subjects moves few others)."""
    import hashlib

    ids = sorted(ids)
    if fraction <= 0 or len(ids) < 2:
        return set()
    n_val = min(len(ids) - 1, max(1, int(round(fraction * len(ids)))))
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    return set(ranked[:n_val])


def manual_root(dl_manager, dataset: str) -> epath.Path:
    """The manual folder, or its ``<dataset>/`` subfolder when there is one (so one folder can hold
    ``hcp_t2/`` and ``brats/`` side by side)."""
    root = epath.Path(dl_manager.manual_dir)
    sub = root / dataset
    return sub if sub.is_dir() else root


class BeamSupport:
    """Mixin (before ``tfds.core.GeneratorBasedBuilder``) of the real-data builders: they generate
    through TFDS's Apache Beam support when the build asks for it -- a ``beam_runner`` or
    ``beam_options`` in the ``DownloadConfig``, e.g. ``tfds build datasets/ixi
    --beam_pipeline_options="runner=DataflowRunner,..."`` -- and in this process otherwise (tfvae's own
    builds). ``split_examples`` makes either. The attributes named in ``BEAM_STATE`` (set by
    ``_split_generators``, used by ``_load``) travel with the builder to Beam's workers, which
    rebuild it from its pickled state."""

    BEAM_STATE: tuple = ()
    _beam = False

    def _download_and_prepare(self, dl_manager, download_config):
        self._beam = download_config.beam_runner is not None or download_config.beam_options is not None
        return super()._download_and_prepare(dl_manager, download_config)

    def __getstate__(self):
        state = dict(super().__getstate__())
        state["_tfvae_state"] = {k: getattr(self, k) for k in self.BEAM_STATE if hasattr(self, k)}
        return state

    def __setstate__(self, state):
        state = dict(state)
        extra = state.pop("_tfvae_state", {})
        super().__setstate__(state)
        for key, value in extra.items():
            setattr(self, key, value)


def split_examples(builder, split: str, cases, load, root, *, start=None, done=None):
    """A split's examples as ``_generate_examples`` returns them: on Beam (``BeamSupport``) a
    ``PTransform`` (``beam_case_examples``), else the generator of ``case_examples``, before which
    ``start()`` runs (e.g. preprocessing ahead) and after which ``done()`` runs (e.g. a report)."""
    cases = list(cases)
    if getattr(builder, "_beam", False):
        return beam_case_examples(builder, split, cases, load)

    def generate():
        if start is not None:
            start()
        yield from case_examples(builder, split, cases, load, root)
        if done is not None:
            done()
    return generate()


SLICES_PER_CASE = 100_000  # more axial slices than any volume has (Beam keys: case * this + slice)


def beam_case_examples(builder, split: str, cases, load):
    """The split's examples as a Beam ``PTransform``: one element per case, each case loaded
    (``load(item)``, e.g. preprocessed) and sliced on a worker. The datasets keep generation order
    (``disable_shuffling``), for which TFDS's Beam writer sorts integer keys: examples are keyed
    ``<case number> * SLICES_PER_CASE + <slice>``, so they are stored volume by volume in the order
    of ``cases``, as ``case_examples`` stores them. Bad cases fail the
    pipeline, or with ``skip_bad`` (and always for ``PreprocessFailed``) are skipped, logged on the
    worker and counted in the Beam counter ``<dataset>/<split>_skipped``. The built dataset's
    metadata records the cases given (``volumes``): which were skipped is in the workers' logs."""
    import apache_beam as beam  # not TFDS's lazy proxy: the workers' function must pickle

    name, skip_bad = builder.name, builder.builder_config.skip_bad

    def examples(numbered):
        from apache_beam.metrics import Metrics

        number, (case_id, item) = numbered
        try:
            sliced = load(item)
        except BadInputError as e:
            if not skip_bad and not isinstance(e, PreprocessFailed):
                raise
            log.warning("%s/%s: skipping bad case %s: %s", name, split, case_id, e)
            Metrics.counter(name, f"{split}_skipped").inc()
            return
        Metrics.counter(name, f"{split}_volumes").inc()
        for _, example in slice_examples(case_id, sliced):  # TFDS's Beam writer keeps order by integer keys
            yield number * SLICES_PER_CASE + int(example["slice_index"]), example

    if builder.info.metadata is not None:
        builder.info.metadata.setdefault("volumes", {})[split] = len(cases)
        builder.info.metadata["generated_with"] = "apache_beam"
    return beam.Create(list(enumerate(cases))) | beam.FlatMap(examples)


def case_examples(builder, split: str, cases, load, root):
    """(key, example) of every slice of every case, for a builder's ``_generate_examples``.

    ``cases`` are ``(case id, item)`` pairs and ``load(item)`` returns the case's
    ``SlicedVolume``; bad cases stop the build, or are skipped and reported with ``skip_bad``
    (``CaseSkipper``), and an empty split is an error.
    """
    skipper = CaseSkipper(builder.builder_config.skip_bad, builder.name, split, builder.info.metadata)
    count = volumes = 0
    for case_id, item in cases:
        sliced = skipper.run(case_id, lambda: load(item))
        if sliced is None:
            continue
        volumes += 1
        if sliced.outside_fov > preprocessing.MAX_OUTSIDE_FOV:
            log.warning("%s %s: %.1f%% of the brain lies outside the %g mm field of view (check the voxel sizes "
                        "in the header); those voxels are not in the dataset", builder.name, case_id,
                        100 * sliced.outside_fov, builder.builder_config.fov_mm)
        for key, example in slice_examples(case_id, sliced):
            count += 1
            yield key, example
    skipper.finish(count, root)
    if builder.info.metadata is not None:  # shown when a run starts (tfvae.data.pipelines.describe)
        builder.info.metadata.setdefault("volumes", {})[split] = volumes
