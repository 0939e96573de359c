"""Tiny fabricated NIfTI trees in the layouts the real-data builders read (for tests only).

Volumes are ellipsoid "brains" (24x28x20 voxels by default) with a few intensity bands, so that
z-scoring and slicing behave as on real scans, and optionally a spherical "tumour" with BraTS
labels (1 core, 2 edema, 4 -- or 3 in the 2023+ convention -- enhancing). Voxels are large (6 mm)
so that a 192 mm field of view shows the brain at a sensible size. Every volume can be written with
an RAS or an LPS affine (the same anatomy, stored with flipped x and y axes).

``DUMMY_DATA`` holds the recipes of the checked-in ``datasets/<name>/dummy_data/`` trees that the
builders' ``tfds.testing.DatasetBuilderTestCase`` tests build from; they were written once with

    python -m tfvae_datasets.testing_trees hcp_t2 brats nifti_folder ixi

(``--overwrite`` replaces existing trees; the tests' ``SPLITS`` counts must then be checked).

A raw phantom set for tests and measurement (issue 32: raw tumour heads in BraTS's layout with
their true brain masks, from held-out seeds; ``raw_phantom_tree``):

    python -m tfvae_datasets.testing_trees raw_phantom OUT --cases 6 [--coarse]
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np

SHAPE = (24, 28, 20)


def brain(seed: int = 0, shape=SHAPE, tumour: bool = False, enhancing: int = 4):
    """(image float32, brain mask uint8, label uint8) of one synthetic subject."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij"))
    radii = np.array(shape) * (0.42 + 0.03 * rng.random(3))
    r = np.sqrt(sum((grid[i] / radii[i]) ** 2 for i in range(3)))
    mask = (r < 1).astype(np.uint8)
    image = np.where(mask, 100 + 60 * np.cos(6 * r) + 10 * grid[0] / shape[0] + rng.normal(0, 3, shape), 0)
    label = np.zeros(shape, np.uint8)
    if tumour:
        centre = np.array(shape) / 2 + rng.integers(-2, 3, 3)
        d = np.sqrt(sum((grid[i] + (shape[i] - 1) / 2 - centre[i]) ** 2 for i in range(3)))
        label[(d < 5) & (mask > 0)] = 2
        label[(d < 3.5) & (mask > 0)] = enhancing
        label[(d < 2) & (mask > 0)] = 1
        image = np.where(label > 0, image * 1.8, image)
    return image.astype(np.float32), mask, label


def affine(voxel_mm: float = 6.0, orientation: str = "RAS", shape=SHAPE) -> np.ndarray:
    a = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    a[:3, 3] = -voxel_mm * (np.array(shape) - 1) / 2
    if orientation == "LPS":
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        flip[0, 3], flip[1, 3] = shape[0] - 1, shape[1] - 1
        a = a @ flip
    return a


def save(path, data, voxel_mm: float = 6.0, orientation: str = "RAS", dtype=None):
    """Write ``data`` (given in RAS voxel order) to ``path`` stored in ``orientation``."""
    data = np.asarray(data)
    stored = data[::-1, ::-1, :] if orientation == "LPS" else data
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    img = nib.Nifti1Image(np.ascontiguousarray(stored).astype(dtype or data.dtype),
                          affine(voxel_mm, orientation, data.shape))
    nib.save(img, str(path))
    return str(path)


def hcp_tree(root, subjects=("100307", "100408", "101107", "102311"), *, mni: bool = False,
             masks: bool = True, voxel_mm: float = 6.0):
    """``<subject>/T1w/T2w_acpc_dc_restore_brain.nii.gz`` (+ brainmask_fs), and MNINonLinear copies."""
    for i, subject in enumerate(subjects):
        image, mask, _ = brain(seed=i)
        folders = [("T1w", "T2w_acpc_dc_restore_brain.nii.gz")]
        if mni:
            folders.append(("MNINonLinear", "T2w_restore_brain.nii.gz"))
        for folder, name in folders:
            save(os.path.join(root, subject, folder, name), image, voxel_mm)
            if masks:
                save(os.path.join(root, subject, folder, "brainmask_fs.nii.gz"), mask, voxel_mm)
    return str(root)


BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")
BRATS_2023_MODALITIES = ("t1n", "t1c", "t2w", "t2f")


def brats_case(folder, case: str, seed: int, *, modalities=BRATS_MODALITIES, sep: str = "_", enhancing: int = 4,
               orientation: str = "RAS", suffix: str = ".nii.gz", seg_name: str | None = None,
               voxel_mm: float = 6.0):
    """One BraTS case folder ``folder/case/case<sep><modality><suffix>`` plus the segmentation."""
    image, _, label = brain(seed=seed, tumour=True, enhancing=enhancing)
    case_dir = os.path.join(folder, case)
    for k, modality in enumerate(modalities):
        # modalities differ non-linearly, so that their z-scored slices differ too
        save(os.path.join(case_dir, f"{case}{sep}{modality}{suffix}"), image ** (1 + 0.2 * k), voxel_mm, orientation)
    save(os.path.join(case_dir, seg_name or f"{case}{sep}seg{suffix}"), label, voxel_mm, orientation)
    return case_dir


def brats2018_tree(root, prefix: str = "Brats18"):
    """``{HGG,LGG}/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` (2019: prefix ``BraTS19``)."""
    brats_case(os.path.join(root, "HGG"), f"{prefix}_CBICA_AAB_1", 0)
    brats_case(os.path.join(root, "HGG"), f"{prefix}_TCIA01_131_1", 1)
    brats_case(os.path.join(root, "LGG"), f"{prefix}_TCIA09_141_1", 2)
    return str(root)


def brats2020_tree(root):
    """``BraTS20_Training_NNN/...``: one case uncompressed, case 355 with its odd seg name."""
    brats_case(root, "BraTS20_Training_001", 0)
    brats_case(root, "BraTS20_Training_002", 1, suffix=".nii")
    brats_case(root, "BraTS20_Training_355", 2, seg_name="W39_1998.09.19_Segm.nii")
    return str(root)


def brats2021_tree(root):
    brats_case(root, "BraTS2021_00000", 0)
    brats_case(root, "BraTS2021_00002", 1)
    return str(root)


def brats2023_tree(root):
    """``BraTS-GLI-NNNNN-NNN/BraTS-GLI-NNNNN-NNN-{t2w,t2f,t1n,t1c,seg}.nii.gz``, label 3 enhancing."""
    for i, case in enumerate(("BraTS-GLI-00000-000", "BraTS-GLI-00002-000")):
        brats_case(root, case, i, modalities=BRATS_2023_MODALITIES, sep="-", enhancing=3)
    return str(root)


def nifti_folder_tree(root, healthy: int = 4, with_seg: int = 2):
    """``IXI00N-T2.nii.gz`` healthy scans (some with ``_mask``) and ``caseN.nii.gz`` + ``caseN_seg.nii.gz``."""
    for i in range(healthy):
        image, mask, _ = brain(seed=10 + i)
        save(os.path.join(root, f"IXI{i:03d}-T2.nii.gz"), image)
        if i == 0:
            save(os.path.join(root, f"IXI{i:03d}-T2_mask.nii.gz"), mask)
    for i in range(with_seg):
        image, _, label = brain(seed=20 + i, tumour=True)
        save(os.path.join(root, "lesions", f"case{i}.nii.gz"), image)
        save(os.path.join(root, "lesions", f"case{i}_seg.nii.gz"), label)
    return str(root)


IXI_SCANS = (("IXI002", "Guys", "0828"), ("IXI012", "HH", "1211"), ("IXI035", "IOP", "0873"))
# raw phantom heads on a coarse grid (4 mm voxels): a few seconds each through coarse preprocessing
COARSE_HEAD = dict(brain_voxel_mm=4.0, voxel_mm=(4.0, 4.0, 4.8))
# head_preprocessing settings for them: 4 mm everywhere, one registration level, few iterations, one
# thread (as tests/test_head_preprocessing.py); a builder's preprocess_settings
COARSE_PREPROCESSING = (("resolution_mm", 4.0), ("template_resolution_mm", 4.0), ("n4_shrink", 2),
                        ("n4_iterations", (20, 20)), ("registration_shrink", (1,)),
                        ("registration_smoothing_mm", (2.0,)), ("registration_iterations", 100), ("threads", 1),
                        # registered as before a7ca729's speed-up, on the 4 mm grid itself: with the 1 mm
                        # defaults (2 mm copy, 0.01 mm stop, gradients at the samples) one of the three
                        # coarse IXI heads diverged (affine scale 0.10) and was skipped
                        ("registration_moving_mm", 0.0), ("registration_min_step", 1e-4),
                        ("registration_gradient_images", True))


def coarse_preprocessing(cache, **fields) -> dict:
    """Builder config fields: coarse preprocessing (``COARSE_PREPROCESSING``) into the cache folder
    ``cache``, in this process; ``fields`` override."""
    return {**dict(preprocess_settings=COARSE_PREPROCESSING, preprocess_dir=str(cache), preprocess_workers=1),
            **fields}


def raw_head(path, seed: int, *, tumours: bool = False, seg_path=None, **head):
    """A raw phantom head (skull, scalp, pose, bias field; ``raw_heads.synthesize_raw_head``, coarse
    unless ``head`` says otherwise) at ``path``, stored as int16 like IXI's; with ``seg_path`` its
    tumour labels (BraTS convention) on the same grid there. Returns the ``RawHead`` (the truth)."""
    from tfvae_datasets.brain_phantom import raw_heads

    raw = raw_heads.synthesize_raw_head(seed, tumours=tumours, **{**COARSE_HEAD, **head})
    img = raw.nifti()
    out = nib.Nifti1Image(np.clip(np.rint(raw.image * 4.0), 0, 32767).astype(np.int16), img.affine, img.header)
    out.set_data_dtype(np.int16)
    out.header.set_slope_inter(1.0, 0.0)
    for target, image in ((path, out), (seg_path, raw.nifti("label"))):
        if target is not None:
            os.makedirs(os.path.dirname(os.fspath(target)), exist_ok=True)
            nib.save(image, os.fspath(target))
    return raw


def ixi_tree(root, scans=IXI_SCANS, *, folder: str = "IXI-T2", seed: int = 0, **head):
    """``IXI-T2/IXI<nnn>-<site>-<nnnn>-T2.nii.gz``: raw phantom heads (``raw_head``, seeds ``seed``,
    ``seed + 1``, ...)."""
    for i, (subject, site, number) in enumerate(scans):
        raw_head(os.path.join(root, folder, f"{subject}-{site}-{number}-T2.nii.gz"), seed + i, **head)
    return str(root)


# Held-out subject seeds of the raw phantom set (``raw_phantom_tree``): no phantom config, test or
# study uses them (the builder's subject seeds are 32-bit ``subject_seed`` draws, checked in
# tests/test_raw_phantom_tree.py; the raw-head tests and scripts/brain_extraction_study.py use 0-5).
RAW_PHANTOM_SEEDS = range(9000, 10000)
# the tumour heads of the raw phantom set, in BraTS's layout and file names
RAW_PHANTOM_PREFIX = "RawPhantom"


def raw_phantom_case(seed: int) -> str:
    """The case name of held-out seed ``seed`` (``RawPhantom_09000``)."""
    return f"{RAW_PHANTOM_PREFIX}_{int(seed):05d}"


def raw_phantom_paths(root, case: str) -> dict:
    """{"t2", "seg", "brainmask", "truth"} -> path of one case of a raw phantom tree."""
    root = os.fspath(root)
    return {"t2": os.path.join(root, case, f"{case}_t2.nii.gz"),
            "seg": os.path.join(root, case, f"{case}_seg.nii.gz"),
            "brainmask": os.path.join(root, "truth", f"{case}_brainmask.nii.gz"),
            "truth": os.path.join(root, "truth", f"{case}_truth.json")}


def raw_phantom_tree(root, cases: int = 6, *, first_seed: int = RAW_PHANTOM_SEEDS.start, coarse: bool = False,
                     log=None, **head) -> list[str]:
    """Raw tumour heads (``raw_heads.synthesize_raw_head``, tumours on) of ``cases`` held-out subjects
    (seeds ``first_seed``, ``first_seed + 1``, ... within ``RAW_PHANTOM_SEEDS``) in BraTS's layout::

        root/RawPhantom_09000/RawPhantom_09000_t2.nii.gz    the raw head (int16 like IXI's, LPS)
        root/RawPhantom_09000/RawPhantom_09000_seg.nii.gz   tumour labels in the raw grid (1 core,
                                                            2 edema, 4 enhancing: BraTS 2018-2021)
        root/truth/RawPhantom_09000_brainmask.nii.gz        the true brain mask in the raw grid
        root/truth/RawPhantom_09000_truth.json              seed, pose, world -> phantom mm, grid

    The brats builder (``preprocess: true``) reads ``root`` as it is (``truth/`` is no case); the
    phantom-space subject behind a head is ``phantom.synthesize_subject(seed, tumours=True,
    voxel_mm=brain_voxel_mm)`` (the JSON says both). IXI-sized (1 mm brain, 0.94 x 0.94 x 1.2 mm
    grid, about 50 s and 2 GB a head) unless ``coarse`` (``COARSE_HEAD``: 4 mm, a few seconds);
    ``head`` overrides either. Resumable: a case whose truth JSON (written last) is there is kept.
    Returns the case names."""
    import json

    from tfvae_datasets.brain_phantom import raw_heads

    seeds = range(int(first_seed), int(first_seed) + int(cases))
    if cases < 1 or seeds.start not in RAW_PHANTOM_SEEDS or seeds[-1] not in RAW_PHANTOM_SEEDS:
        raise ValueError(f"raw phantom seeds {seeds.start}-{seeds[-1]} are not all in the held-out range "
                         f"{RAW_PHANTOM_SEEDS.start}-{RAW_PHANTOM_SEEDS.stop - 1}")
    settings = {**(COARSE_HEAD if coarse else dict(brain_voxel_mm=1.0, voxel_mm=raw_heads.IXI_VOXEL_MM)), **head}
    names = []
    for seed in seeds:
        case = raw_phantom_case(seed)
        names.append(case)
        paths = raw_phantom_paths(root, case)
        if os.path.isfile(paths["truth"]) and all(os.path.isfile(paths[k]) for k in ("t2", "seg", "brainmask")):
            continue
        raw = raw_head(paths["t2"], seed, tumours=True, seg_path=paths["seg"], **settings)
        os.makedirs(os.path.dirname(paths["brainmask"]), exist_ok=True)
        nib.save(raw.nifti("brain_mask"), paths["brainmask"])

        truth = {"case": case, "seed": int(seed), "tumours": True,
                 "brain_voxel_mm": float(settings["brain_voxel_mm"]),
                 "voxel_mm": [float(v) for v in settings["voxel_mm"]],
                 "shape": list(raw.image.shape), "affine": raw.affine.tolist(),
                 "world_to_phantom": raw.world_to_phantom.tolist(), "pose": raw.pose,
                 "brain_ml": float(raw.brain_mask.sum() * abs(np.linalg.det(raw.affine[:3, :3])) / 1000.0),
                 "tumour_ml": float((raw.label > 0).sum() * abs(np.linalg.det(raw.affine[:3, :3])) / 1000.0),
                 "phantom_subject": f"phantom.synthesize_subject({int(seed)}, tumours=True, "
                                    f"voxel_mm={float(settings['brain_voxel_mm']):g})"}
        tmp = paths["truth"] + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(truth, f, indent=1)
        os.replace(tmp, paths["truth"])  # written last: the case is complete
        if log is not None:
            log(f"{case}: seed {seed}, tumour {truth['tumour_ml']:.1f} ml in a {truth['brain_ml']:.0f} ml brain")
    return names


DUMMY_DATA = {
    # name: (what the tree holds, recipe writing it under a root folder)
    "hcp_t2": ("3 HCP subjects with T1w/ and MNINonLinear/ images and brain masks",
               lambda root: hcp_tree(root, ("100307", "100408", "101107"), mni=True)),
    "brats": ("2 BraTS cases, a 2021 one and a 2023+ one (all four modalities, label 3 enhancing), "
              "each under a release folder",
              lambda root: [brats_case(os.path.join(root, "BraTS2021_Training_Data"), "BraTS2021_00000", 0),
                            brats_case(os.path.join(root, "BraTS2023_GLI_Training_Data"), "BraTS-GLI-00001-000", 1,
                                       modalities=BRATS_2023_MODALITIES, sep="-", enhancing=3)]),
    "nifti_folder": ("3 healthy IXI-like scans (one with a _mask) and one lesions/ case with a _seg",
                     lambda root: nifti_folder_tree(root, healthy=3, with_seg=1)),
    "ixi": ("2 raw IXI-named phantom heads (4 mm voxels, skull, pose, bias field) in IXI-T2/",
            lambda root: ixi_tree(root, IXI_SCANS[:2])),
}


def dummy_data_dir(name: str) -> str:
    """``datasets/<name>/dummy_data`` (the folder TFDS's builder test reads as the manual folder)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), name, "dummy_data")


def write_dummy_data(name: str, root) -> str:
    """Write the dummy data tree of builder ``name`` under ``root``."""
    DUMMY_DATA[name][1](str(root))
    return str(root)


def nifti_contents(root) -> dict:
    """{relative path: (voxel data, affine)} of every NIfTI file under ``root`` (to compare trees
    without depending on how gzip compressed them)."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith((".nii", ".nii.gz")):
                img = nib.load(os.path.join(folder, name))
                out[os.path.relpath(os.path.join(folder, name), root)] = (np.asarray(img.dataobj), img.affine)
    return out


def assert_same_niftis(root, other) -> None:
    """The NIfTI files under ``root`` and ``other`` have the same names, grids and voxels."""
    first, second = nifti_contents(root), nifti_contents(other)
    assert sorted(first) == sorted(second), (sorted(first), sorted(second))
    for rel, (data, affine) in first.items():
        assert data.shape == second[rel][0].shape and data.dtype == second[rel][0].dtype, rel
        np.testing.assert_allclose(affine, second[rel][1], err_msg=rel)
        np.testing.assert_allclose(data, second[rel][0], rtol=1e-5, atol=1e-4, err_msg=rel)


def file_bytes(root) -> dict:
    """{relative path: bytes} of every file under ``root`` (to check a build changed nothing)."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def build(builder_cls, manual_dir, data_dir, config: str = "default", *, image_size: int = 32, **fields):
    """Build ``builder_cls`` through TFDS from ``manual_dir`` (a derived config with ``fields``)."""
    import dataclasses

    import tensorflow_datasets as tfds

    base = builder_cls.builder_configs[config]
    cfg = dataclasses.replace(base, name=f"{base.name}_test", image_size=image_size, **fields)
    builder = builder_cls(config=cfg, data_dir=str(data_dir))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return builder


def examples(builder, split: str) -> list[dict]:
    return list(builder.as_dataset(split=split, shuffle_files=False).as_numpy_iterator())


def volume_ids(builder, split: str) -> list[str]:
    """Volume ids of a split in stored order, each once."""
    return list(dict.fromkeys(ex["volume_id"].decode() for ex in examples(builder, split)))


def raw_phantom_main(argv) -> None:
    """Write a raw phantom set (``raw_phantom_tree``): raw tumour heads in BraTS's layout, the true
    brain masks and poses in OUT/truth/ (held-out seeds 9000-9999)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m tfvae_datasets.testing_trees raw_phantom",
                                description=raw_phantom_main.__doc__)
    p.add_argument("out", help="the folder to write (cases already there are kept)")
    p.add_argument("--cases", type=int, default=6, help="how many heads (default 6)")
    p.add_argument("--first-seed", type=int, default=RAW_PHANTOM_SEEDS.start,
                   help=f"the first subject seed ({RAW_PHANTOM_SEEDS.start}-{RAW_PHANTOM_SEEDS.stop - 1})")
    p.add_argument("--coarse", action="store_true", help="4 mm heads for tests (default: IXI-sized, ~50 s each)")
    args = p.parse_args(argv)
    try:
        names = raw_phantom_tree(args.out, args.cases, first_seed=args.first_seed, coarse=args.coarse, log=print)
    except ValueError as e:
        p.error(str(e))
    span = names[0] if len(names) == 1 else f"{names[0]} ... {names[-1]}"
    print(f"{args.out}: {len(names)} raw phantom head{'s' * (len(names) != 1)} ({span}), truth in "
          f"{os.path.join(args.out, 'truth')}")


def main(argv=None) -> None:
    """Write ``datasets/<name>/dummy_data`` of the named builders (see ``DUMMY_DATA``), or with
    ``raw_phantom OUT [--cases N]`` a raw phantom set (``raw_phantom_main``)."""
    import argparse
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["raw_phantom"]:
        return raw_phantom_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m tfvae_datasets.testing_trees", description=main.__doc__)
    p.add_argument("names", nargs="+", choices=sorted(DUMMY_DATA))
    p.add_argument("--overwrite", action="store_true", help="first delete the NIfTI files already there")
    args = p.parse_args(argv)
    for name in args.names:
        root = dummy_data_dir(name)
        existing = nifti_contents(root) if os.path.isdir(root) else {}
        if existing and not args.overwrite:
            p.error(f"{root} already holds {len(existing)} NIfTI files (use --overwrite)")
        for rel in existing:
            os.remove(os.path.join(root, rel))
        for folder, _, _ in sorted(os.walk(root), reverse=True):  # drop the folders left empty
            if folder != root and not os.listdir(folder):
                os.rmdir(folder)
        write_dummy_data(name, root)
        total = sum(os.path.getsize(os.path.join(f, n)) for f, _, files in os.walk(root) for n in files)
        print(f"{root}: {DUMMY_DATA[name][0]} ({total} bytes)")


if __name__ == "__main__":
    main()
