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
                        ("registration_smoothing_mm", (2.0,)), ("registration_iterations", 100), ("threads", 1))


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


def main(argv=None) -> None:
    """Write ``datasets/<name>/dummy_data`` of the named builders (see ``DUMMY_DATA``)."""
    import argparse

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
