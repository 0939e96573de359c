"""nifti_folder: any folder of brain-extracted 3D NIfTI scans (e.g. IXI T2), for training or testing.

Every ``*.nii`` / ``*.nii.gz`` file under the folder (searched recursively) is a scan, except label
maps and masks, which are never taken as scans (``tfvae.data.labelmaps``): files whose names say so
(``<scan>_seg``, ``*_label*``, ``consensus_gt``, ``*_mask``, ...), files in label folders
(``labelsTr/``, ``labels/``, ``segmentations/``, ...), and -- found when a scan is read -- volumes
of a few integer values. A label map is paired with its scan:

- ``<scan>_seg.nii[.gz]`` (or another label word after the scan's name: ``<scan>_label``,
  ``<scan>-seg``, ``<scan>_gt``) beside the scan;
- nnU-Net / Medical Segmentation Decathlon layout: ``imagesTr/<case>_0000.nii.gz`` (or
  ``<case>.nii.gz``) with ``labelsTr/<case>.nii.gz`` (any ``images*`` / ``labels*`` pair of folders);
- a label map named for no scan (MSLUB's ``patientNN/consensus_gt.nii.gz``) with the one scan beside
  it -- or, beside several scans (the modalities of one case), with the scan of the config's
  ``modality`` (configs ``t2``, ``flair``, ``t1``, ``t1ce``; the other modalities of the case are not
  used). Without a modality that is a one-line error saying so.

A label map paired with no scan, beside several scans, or labelling most of the brain (a tissue
segmentation, not lesions) stops the build with one line naming it and what to do. A scan with a
label map is a test case (``test`` split); a scan without one is healthy (``train`` / ``validation``,
split by file, seeded); ``<scan>_mask.nii[.gz]`` is a scan's brain mask. A split with no scans is not
declared (the build says so).

Raw heads (skull on, any pose, as IXI ships them): with ``preprocess`` (``data.preprocess: true``)
each scan is first preprocessed (``raw_scans``: 1 mm, N4, registration to MNI152 2009a, brain
extraction, crop; cached in TFDS's download folder) and its brain sliced in template space; its
label map follows it there by nearest neighbour, and a ``<scan>_mask`` is not used (the
preprocessing extracts the brain). A scan that fails preprocessing is skipped and reported.
"""

from __future__ import annotations

import dataclasses
import logging
import re

import tensorflow_datasets as tfds
from etils import epath

from tfvae.data import labelmaps
from tfvae_datasets import raw_scans, real_data
from tfvae_datasets.slices import slice_dataset_info

COMPANIONS = ("_seg", "_mask")
MAX_DEPTH = 8
# modality -> the words that name it in file names (and in nnU-Net's dataset.json channel names)
MODALITY_WORDS = {
    "flair": {"flair", "t2f", "tirm", "darkfluid"},
    "t1ce": {"t1ce", "t1c", "t1gd", "t1post", "t1km"},
    "t2": {"t2", "t2w"},
    "t1": {"t1", "t1w", "t1n", "mprage"},
}

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put your brain-extracted 3D NIfTI scans (.nii or .nii.gz, any voxel size and orientation; e.g. the
IXI T2 scans after skull stripping) into the manual folder (--manual-dir DIR, data.manual_dir or
TFVAE_MANUAL_DIR; either DIR itself or DIR/nifti_folder/), or name the folder in the builder
config's `folder` field. Subfolders are searched. Healthy scans train (train / validation split by
file); a scan with a segmentation next to it, <scan>_seg.nii[.gz] (0 background, tumour labels
1, 2, 3 or 4), is a test case; so is imagesTr/<case>_0000.nii.gz with labelsTr/<case>.nii.gz
(nnU-Net / Decathlon layout), and the scan beside a label map such as consensus_gt.nii.gz (several
modalities beside it: choose one with the config t2, flair, t1 or t1ce). Label maps and masks are
never taken as scans. An optional <scan>_mask.nii[.gz] is the scan's brain mask.
Raw heads (skull on, as IXI ships them): set the config field preprocess (data.preprocess: true) and
each scan is preprocessed first (SimpleITK: pip install tfvae[preprocess]). Nothing in the folder
is changed."""


@dataclasses.dataclass(eq=False)
class NiftiFolderConfig(raw_scans.PreprocessConfig):
    """``folder``: read this folder instead of the manual folder; ``validation_fraction`` of the
    healthy scans (chosen by ``seed``) validate; ``labels``: the label values a segmentation may
    hold (stored unchanged; the whole tumour is ``label > 0``); ``modality``: which scan of a case
    is used where a label map lies beside several (t2, flair, t1, t1ce; None: such a case is an error);
    ``preprocess`` and its fields: raw heads (``raw_scans``)."""

    folder: str | None = None
    validation_fraction: float = 0.1
    seed: int = 0
    labels: tuple = (0, 1, 2, 3, 4)
    modality: str | None = None


@dataclasses.dataclass
class Case:
    """One scan of the folder: its volume id, its file, and the label map and brain mask paired with it."""

    volume_id: str
    scan: epath.Path
    seg: epath.Path | None = None
    mask: epath.Path | None = None
    seg_folder: str | None = None  # the label folder (labelsTr) the label map was paired from, if it was


def _files(root: epath.Path) -> list[tuple[tuple, str, epath.Path]]:
    """``(folder parts relative to root, stem, path)`` of every NIfTI file under ``root`` (hidden and
    operating-system files and tfvae's outputs left out), at most ``MAX_DEPTH`` folders deep."""
    found, pending = [], [(root, (), 0)]
    while pending:  # an explicit walk: epath's glob refuses "**"
        folder, parts, depth = pending.pop()
        try:
            entries = list(folder.iterdir())
        except PermissionError:
            raise real_data.bad(folder, "cannot be read (permission denied)") from None
        for path in entries:
            if real_data.ignored(path.name):  # hidden / OS metadata files, tfvae's outputs
                continue
            if path.is_dir():
                if depth + 1 < MAX_DEPTH:
                    pending.append((path, parts + (path.name,), depth + 1))
                continue
            stem = real_data.strip_nifti_suffix(path.name)
            if stem is not None:
                found.append((parts, stem, path))
    return sorted(found, key=lambda f: (f[0], f[1], str(f[2])))


def modality_of(name: str) -> str | None:
    """The modality a file or channel name says (``MODALITY_WORDS``; FLAIR before T2, T1ce before
    T1: ``t2_tirm_tra_dark-fluid`` is FLAIR), else None."""
    found = set(labelmaps.words(name))
    if {"dark", "fluid"} <= found:
        found.add("darkfluid")
    return next((m for m, named in MODALITY_WORDS.items() if found & named), None)


def _base(stem: str) -> str:
    """A label map's name without its trailing label or mask words: ``case0_seg`` -> ``case0``."""
    parts = re.split(r"([_\-.\s]+)", stem)
    while len(parts) >= 3 and (parts[-1].lower() in labelmaps.LABEL_WORDS | labelmaps.MASK_WORDS):
        parts = parts[:-2]
    return "".join(parts)


def _channels(dataset_root: epath.Path) -> dict[str, str]:
    """nnU-Net's / the Decathlon's ``dataset.json`` channel names (``{"0000": "T2"}``), else {}."""
    import json

    path = dataset_root / "dataset.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    named = info.get("channel_names") or info.get("modality") or {}
    return {f"{int(k):04d}": str(v) for k, v in named.items() if str(k).isdigit()} if isinstance(named, dict) else {}


def find_cases(root: epath.Path, modality: str | None = None) -> list[Case]:
    """Every scan under ``root`` with the label map and brain mask paired with it (see the module
    docstring), sorted by volume id. Label maps and masks are never scans; a label map paired with
    no scan, or beside several scans without a ``modality`` to choose one, is a one-line
    ``BadInputError`` naming it and what to do."""
    import collections

    scans: dict[tuple, dict[str, epath.Path]] = collections.defaultdict(dict)  # folder -> stem -> path
    labels, masks = [], []  # (parts, stem, path)
    for parts, stem, path in _files(root):
        in_label_folder = labelmaps.label_folder(parts)
        kind = labelmaps.name_kind(stem)
        if stem.endswith("_mask") or (kind == "mask" and not in_label_folder):
            masks.append((parts, stem, path))
        elif in_label_folder or kind == "label" or stem.endswith("_seg"):
            labels.append((parts, stem, path))
        elif stem in scans[parts]:  # e.g. patient0.nii beside patient0.nii.gz: one volume id, two scans
            first = scans[parts][stem]
            raise real_data.bad(first, f"the same case {'/'.join(parts + (stem,))!r} as {path}; keep one of them")
        else:
            scans[parts][stem] = path
    cases = {(parts, stem): Case("/".join(parts + (stem,)), path) for parts, stem_paths in scans.items()
             for stem, path in stem_paths.items()}
    used: set = set()  # scans left out: other modalities of a labelled case

    def pair(case: Case, label: epath.Path, folder: str | None = None) -> None:
        if case.seg is not None:
            raise real_data.bad(label, f"a second label map for the scan {case.scan} (the first: {case.seg}); keep one")
        case.seg, case.seg_folder = label, folder

    for parts, stem, path in labels:
        folder = labelmaps.label_folder(parts)
        if folder is not None:  # labelsTr/<case> -> imagesTr/<case>_0000 (nnU-Net) or imagesTr/<case>
            i = parts.index(folder)
            images = parts[:i] + (re.sub(r"^(labels?|segs?|segmentations?|masks|gt|groundtruth|annotations?)",
                                         "images", folder, flags=re.IGNORECASE),) + parts[i + 1:]
            found = {s: p for s, p in scans.get(images, {}).items() if s == stem or re.fullmatch(
                re.escape(stem) + r"_\d{4}", s)}
            if not found:
                raise real_data.bad(path, f"a label map (in the label folder {folder}/) that no scan is paired with: "
                                          f"nifti_folder pairs {folder}/<case> with {images[-1] if images else 'images'}/"
                                          "<case>_0000 or <case> (nnU-Net layout), and <scan>_seg beside its scan; "
                                          "put its scan there, or move it out of the folder")
            chosen = _one_channel(path, found, root / "/".join(parts[:i]) if i else root, modality)
            pair(cases[(images, chosen)], path, folder)
            used.update((images, s) for s in found if s != chosen)  # the case's other channels: not healthy scans
            continue
        beside = scans.get(parts, {})
        if _base(stem) in beside:  # named after its scan: <scan>_seg, <scan>_label, <scan>-seg, ...
            pair(cases[(parts, _base(stem))], path)
            continue
        free = {s: p for s, p in beside.items() if cases[(parts, s)].seg is None}
        if not free:
            why = "no scan beside it" if not beside else "every scan beside it has a label map already"
            raise real_data.bad(path, f"a label map (by its name), and {why}; put it beside its scan as "
                                      "<scan>_seg.nii.gz, or move it out of the folder")
        if len(free) > 1:
            picked = [s for s in free if modality is not None and modality_of(s) == modality]
            if len(picked) != 1:
                names = ", ".join(p.name for p in free.values())
                why = (f"none or several of them are {modality} by name" if modality is not None
                       else "which one it labels cannot be told")
                raise real_data.bad(path, f"a label map (by its name) beside {len(free)} scans ({names}): {why}; "
                                          "choose the modality with the config t2, flair, t1 or t1ce "
                                          "(data.config, or data.test_config for test data), or name it "
                                          "<scan>_seg.nii.gz after its scan and move the others out")
            used.update((parts, s) for s in free if s != picked[0])
            free = {picked[0]: free[picked[0]]}
        pair(cases[(parts, next(iter(free)))], path)
    for parts, stem, path in masks:
        if stem.endswith("_mask") and (parts, stem[:-len("_mask")]) in cases:
            cases[(parts, stem[:-len("_mask")])].mask = path
        else:
            real_data.log.warning("%s: a mask not named after a scan (<scan>_mask.nii.gz): not used", path)
    for key in sorted(used):
        real_data.log.warning("%s: another modality of a labelled case (config modality %s): not used",
                              cases[key].scan, modality)
    return sorted((c for key, c in cases.items() if key not in used), key=lambda c: (c.volume_id, str(c.scan)))


def _one_channel(label: epath.Path, found: dict, dataset_root: epath.Path, modality: str | None) -> str:
    """The stem of the one image an nnU-Net label map labels among its case's channels ``found``
    (``<case>_0000``, ``<case>_0001``, ...): the only one, or the one of ``modality`` by
    ``dataset.json``'s channel names; else a one-line ``BadInputError``."""
    if len(found) == 1:
        return next(iter(found))
    channels = _channels(dataset_root)
    named = {s: channels.get(s[-4:], "") for s in found}
    picked = [s for s, name in named.items() if modality is not None and modality_of(name) == modality]
    if len(picked) == 1:
        return picked[0]
    shown = ", ".join(f"{s}" + (f" ({named[s]})" if named[s] else "") for s in sorted(found))
    raise real_data.bad(label, f"labels a case of {len(found)} channels ({shown}) and nifti_folder reads one scan "
                               "per case; choose the modality with the config t2, flair, t1 or t1ce (named in "
                               "dataset.json's channel_names), or keep one channel in the folder")


def find_scans(root: epath.Path) -> list[tuple[str, epath.Path]]:
    """(volume id, path) of every scan under ``root`` (label maps, masks and tfvae's own outputs,
    ``*_tfvae_*``, excluded), sorted."""
    return [(c.volume_id, c.scan) for c in find_cases(root)]


def companion(path: epath.Path, kind: str) -> epath.Path | None:
    return real_data.find_nifti(path.parent, real_data.strip_nifti_suffix(path.name) + kind)


class Builder(real_data.BeamSupport, tfds.core.GeneratorBasedBuilder):
    """Slices of the scans of a folder: healthy train / validation, segmented test. Generated in this
    process, or through Apache Beam when the build names a runner (``BeamSupport``)."""

    BEAM_STATE = ("_preprocessor",)
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [NiftiFolderConfig(name="default", description="64x64 slices of a 192 mm field of view.")] + [
        NiftiFolderConfig(name=m, modality=m, description=f"As default; a case with several scans beside its label "
                                                          f"map is read from its {m} scan.")
        for m in ("t2", "flair", "t1", "t1ce")]
    DEFAULT_CONFIG_NAME = "default"

    def _info(self) -> tfds.core.DatasetInfo:
        # description: README.md; CITATIONS.bib is empty (the scans are the user's: cite their source)
        return slice_dataset_info(self, homepage="https://brain-development.org/ixi-dataset/", metadata=True)

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        cfg = self.builder_config
        raw_scans.check_fields(cfg, self.name)
        if cfg.folder:
            root = epath.Path(cfg.folder).expanduser()
            if not root.is_dir():
                raise real_data.bad(root, "folder not found (nifti_folder config field `folder`)")
        else:
            root = real_data.manual_root(dl_manager, self.name)
        cases = find_cases(root, cfg.modality)
        if not cases:
            raise real_data.BadInputError(f"{root}: no NIfTI scans (.nii or .nii.gz) found")
        test = [(c.volume_id, c) for c in cases if c.seg is not None]
        healthy = [(c.volume_id, c) for c in cases if c.seg is None]
        validation = real_data.validation_subset([vid for vid, _ in healthy], cfg.validation_fraction, cfg.seed)
        splits = {
            "train": [s for s in healthy if s[0] not in validation],
            "validation": [s for s in healthy if s[0] in validation],
            "test": test,
        }
        missing = [name for name, items in splits.items() if not items]
        if missing:
            logging.getLogger("tfvae_datasets").warning(
                "nifti_folder %s: no scans for split(s) %s (healthy scans: %d, with a label map: %d); not declared",
                root, ", ".join(missing), len(healthy), len(test))
        self._preprocessor = raw_scans.Preprocessor(self.name, cfg, dl_manager) if cfg.preprocess else None
        self._all_scans = [(c.volume_id, c.scan) for c in cases]
        return {name: self._generate_examples(name, items, root) for name, items in splits.items() if items}

    def _load(self, case: Case):
        cfg = self.builder_config
        path = case.scan
        image, affine = real_data.load_volume(path, expect_modality=self.builder_config.modality)
        # a label map by its content, whatever its name: never trained on as a scan
        labelmaps.refuse_label_map(path, image, "name it <scan>_seg.nii.gz after its scan (or put it in a labels/ "
                                                "folder), or move it out of the folder")
        mask = label = None
        if self._preprocessor is not None:
            return self._load_preprocessed(case, image, affine)
        if case.mask is not None:
            mask, mask_affine = real_data.load_volume(case.mask)
            real_data.check_same_grid(case.mask, mask, mask_affine, path, image, affine, "brain mask")
        if case.seg is not None:
            label = self._checked_label(case, image, affine, mask if mask is not None else image != 0)
        return real_data.slices_of(path, image, affine, mask=mask, label=label, cfg=cfg)

    def _checked_label(self, case: Case, image, affine, mask):
        """The case's label map, checked (same grid as ``image``, known values, not most of the brain)."""
        cfg = self.builder_config
        seg, seg_affine = real_data.load_volume(case.seg)
        real_data.check_same_grid(case.seg, seg, seg_affine, case.scan, image, affine, "segmentation")
        label = real_data.check_labels(case.seg, seg, cfg.labels)
        share = labelmaps.lesion_share(label, mask)
        if share > labelmaps.MAX_LESION_SHARE:
            raise real_data.bad(case.seg, f"labels {100 * share:.0f}% of the brain of {case.scan}: a tissue or "
                                          "anatomy segmentation, not lesions, so the scan would be a test case; to "
                                          "train on the scan as healthy, move "
                                          + (f"{case.seg_folder}/" if case.seg_folder else "the label map")
                                          + " out of the data folder")
        return label

    def _load_preprocessed(self, case: Case, image, affine):
        """A raw head: preprocessed (cached), its label map pulled into template space with it."""
        if case.mask is not None:
            real_data.log.warning("%s: not used (with preprocess the brain mask comes from the preprocessing)",
                                  case.mask)
        pre = self._preprocessor.load(case.volume_id, case.scan, expect_modality=self.builder_config.modality)
        label = None
        if case.seg is not None:
            raw_label = self._checked_label(case, image, affine, pre.raw_mask)
            label = pre.label(raw_label)
        return real_data.slices_of(pre.path, pre.image, pre.affine, mask=pre.mask, label=label,
                                   cfg=self.builder_config)

    def _generate_examples(self, split, items, root):
        pre = self._preprocessor
        if pre is None:
            return real_data.split_examples(self, split, items, self._load, root)
        return real_data.split_examples(  # every split's scans preprocessed at once, in parallel (once)
            self, split, items, self._load, root, start=lambda: pre.prepare(self._all_scans),
            done=lambda: pre.report(split))
