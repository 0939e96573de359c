"""Results as the paper shows them: a table per predictor (text, markdown, CSV, JSON) and figures
like its Fig. 1 and 2 (input, ground truth, reconstruction, restored reconstruction, each predictor's map)."""

from __future__ import annotations

import csv
import io
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tfvae.utils.rundir import RESULTS_FILE  # noqa: E402

# evaluation metrics shown as HParams metrics (written by log_evaluation)
EVAL_METRICS = ("auroc", "auroc_brain", "auprc_brain", "dice_fpr01")
EVAL_PREDICTORS = ("recommended", "rec_grad", "rec_error", "intensity")
# the TensorBoard runs under a run's logs/: the curves of each part (the same tags: one chart per
# quantity with both curves), and the evaluation (its figures, its HParams metrics, one summary card)
TRAIN_RUN, VALIDATION_RUN, EVALUATION_RUN = "train", "validation", "evaluation"


# TensorBoard's Time Series sorts its sections by tag name and opens the first ones: the figures go
# under a section that sorts after the curves (kl, loss, rec, rec_sq) and the test/ metrics
IMAGE_SECTION = "views"


def image_tag(name: str) -> str:
    """A figure's tag: ``views/<name>``, after the curves in TensorBoard's alphabetical order."""
    return f"{IMAGE_SECTION}/{name}"


def eval_tag(predictor: str, metric: str) -> str:
    """The tag of an evaluation metric in the ``EVALUATION_RUN``: ``test/<predictor>/<metric>``
    (after the curves' sections, kl, loss, rec, in TensorBoard's alphabetical order)."""
    return f"test/{predictor}/{metric}"


COLUMNS = ("auroc", "auprc", "auroc_brain", "auprc_brain", "best_dice", "dice_fpr01", "measured_fpr01",
           "measured_fpr01_p90", "measured_fpr01_max", "measured_fpr01_far", "dice_fpr05", "measured_fpr05",
           "fallback_fpr01")
HEADERS = {"auroc": "AUROC", "auprc": "AUPRC", "auroc_brain": "AUROC brain", "auprc_brain": "AUPRC brain",
           "best_dice": "best Dice", "dice_fpr01": "Dice@1%FPR", "dice_fpr05": "Dice@5%FPR",
           "measured_fpr01": "FPR@1%", "measured_fpr01_p90": "FPR@1% p90", "measured_fpr01_max": "max",
           "measured_fpr01_far": "FPR@1% >6mm", "measured_fpr05": "FPR@5%", "fallback_fpr01": "fallbacks"}
# columns read from the distribution of the volumes' measured rates (``<measured>_volumes`` in results.json)
VOLUME_COLUMNS = {"measured_fpr01_p90": ("measured_fpr01", "p90"), "measured_fpr01_max": ("measured_fpr01", "max")}


def title(config: dict, checkpoint: str = "final") -> str:
    """What an evaluation scored: run name, test data and split (and how many of its volumes
    ``evaluate.exclude_volumes`` leaves out), beta, latent size, checkpoint."""
    from tfvae.data.pipelines import test_data_config

    test = test_data_config(config["data"])
    excluded = config.get("evaluate", {}).get("exclude_volumes") or []
    held = f" without {len(excluded)} volume(s) held apart for tuning" if excluded else ""
    return (f"{config['name']}: {test['name']}/{test['config']} {config['data']['test_split']}{held}, "
            f"beta {config['model']['beta']:g}, latent {config['model']['latent_dim']}, {checkpoint} model")


def value(result: dict, column: str):
    """A table column's value in one predictor's results: its key, or a statistic of the volumes'
    measured rates (``VOLUME_COLUMNS``); NaN where the results lack it (made before it existed)."""
    if column in VOLUME_COLUMNS:
        measured, stat = VOLUME_COLUMNS[column]
        return result.get(f"{measured}_volumes", {}).get(stat, float("nan"))
    return result.get(column, float("nan"))


def _cell(result: dict, column: str) -> str:
    v = value(result, column)
    if column.startswith("fallback_"):  # volumes whose per-scan threshold fell back, of those scored
        return f"{v}/{result['volumes']}" if column in result and "volumes" in result else "n/a"
    if v is None or not np.isfinite(v):
        return "n/a"
    if column.startswith("dice_fpr"):
        return f"{v:.3f}±{result[column + '_std']:.3f}"
    if column.startswith("measured_fpr"):
        return f"{100 * v:.2f}%"
    return f"{v:.3f}"


def table_entries(results: dict) -> dict:
    """Each predictor's metrics, followed by ``<name> +pp`` for its post-processed metrics."""
    out = {}
    for name, r in results.items():
        out[name] = r
        if "postprocessed" in r:
            out[f"{name} +pp"] = r["postprocessed"]
    return out


def rows(results: dict) -> list[list[str]]:
    return [[name] + [_cell(r, c) for c in COLUMNS] for name, r in table_entries(results).items()]


def text_table(results: dict) -> str:
    header = ["predictor"] + [HEADERS[c] for c in COLUMNS]
    body = rows(results)
    widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]
    line = lambda row: "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in body])


def markdown_table(results: dict) -> str:
    header = ["predictor"] + [HEADERS[c] for c in COLUMNS]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows(results)]
    return "\n".join(out)


def recommended_note(results: dict) -> str:
    """The filtered maps' filter sizes (recommended, intensity_filtered) in mm, with their voxels on
    the healthy validation grid, and the threshold mode."""
    lines = []
    for name in ("recommended", "intensity_filtered"):
        settings = results.get(name, {}).get("settings")
        if not settings:
            continue
        mode = results[name].get("threshold_mode", "fixed")
        if "median_mm" not in settings:  # results written before the sizes were millimetres
            k, sigma, grid = settings["median_size"], settings["gaussian_sigma"], settings.get("voxel_mm")
            lines.append(f"{name}: 3D median {k} and Gaussian sigma {sigma:g} voxels of the healthy validation grid"
                         f"{' (' + ' x '.join(f'{v:g}' for v in grid) + ' mm)' if grid else ''}; threshold mode {mode}")
            continue
        k, sigma, grid = settings["median_mm"], settings["gaussian_sigma_mm"], settings["voxel_mm"]
        voxels = lambda v: " x ".join(f"{x:.3g}" for x in v)  # noqa: E731
        median = f"{k:g} mm ({voxels(settings['median_voxels'])} voxels)" if k else "off"
        gaussian = f"{sigma:g} mm ({voxels(settings['sigma_voxels'])} voxels)" if sigma else "off"
        lines.append(f"{name}: 3D median {median}, Gaussian sigma {gaussian} on the healthy validation grid "
                     f"({voxels(grid)} mm, slice x row x column), sized for each scan's own grid; "
                     f"threshold mode {mode}")
    return "\n".join(lines)


def ensemble_note(results: dict) -> str:
    if "ensemble" not in results or "coefficients" not in results["ensemble"]:
        return ""
    c = results["ensemble"]["coefficients"]
    coefs = ", ".join(f"{f} {w:.3g}" for f, w in zip(c["features"], c["raw"]))
    return (f"ensemble: logistic regression fitted on {len(c['fit_volumes'])} test volume(s) "
            f"({', '.join(c['fit_volumes'])}), scored on the other {results['ensemble']['scored_volumes']}; "
            f"raw-scale coefficients: {coefs}")


LEGEND = (
    "AUROC/AUPRC: over all pixels of the test slices (the paper's convention); 'brain': inside the brain mask only.",
    "best Dice: at the best threshold found on the test labels (an upper bound); Dice@1%/5%FPR: per volume, at the "
    "threshold flagging 1%/5% of healthy validation brain pixels (mean ± std; what localize uses), moved with each "
    "scan's own score distribution when threshold.mode is per_scan; FPR@1%/5%: the share of the test scans' healthy "
    "brain pixels (label 0) those thresholds flag, measured (nominal 1%/5%); FPR@1% >6mm: the same over the healthy "
    "brain pixels more than 6 mm from any lesion (evaluation.FAR_MM), the lesions' borders left out. FPR@1% p90 / "
    "max: the 90th percentile and the maximum of each test volume's own FPR@1% (its healthy brain pixels), what a "
    "single scan may get (median, mean and std in results.json, also at 5% and at the calibrated thresholds); "
    "fallbacks: the volumes, of those scored, whose per-scan threshold fell back to the calibrated one because "
    "their scores could not be fitted (per_volume.csv says why).",
    "intensity: the scan itself thresholded (a baseline, no model); intensity_filtered: the same through the "
    "recommended map's recipe (positive part, 3D median and Gaussian, brain mask; no model); recommended: the "
    "restored positive residual, 3D-filtered (tfvae/maps/recommended.py); ensemble: fitted on labelled test volumes.",
)


def legend() -> str:
    """The lines under every printed table: what the columns mean and what the baseline is."""
    return "\n".join(LEGEND)


def write_per_volume(rows: list[dict], path: str) -> None:
    """``per_volume.csv``: one row per volume and predictor (see ``evaluation.PerVolume``)."""
    if not rows:
        return
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def write_results(results: dict, out_dir: str, header: str = "") -> None:
    """results.json (everything), results.csv and results.md (the table)."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, RESULTS_FILE), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        extra = [c + "_std" for c in COLUMNS if c.startswith("dice_fpr")]
        writer.writerow(["predictor", *COLUMNS, *extra])
        for name, r in table_entries(results).items():
            writer.writerow([name, *(value(r, c) for c in COLUMNS), *(r[c] for c in extra)])
    note = "\n".join(n for n in (recommended_note(results), ensemble_note(results)) if n)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write((header + "\n\n" if header else "") + markdown_table(results) + "\n" + (f"\n{note}\n" if note else "")
                + "\n" + "\n".join(f"- {line}" for line in LEGEND) + "\n")


LABEL_NAMES = {1: ("necrosis", "#3d8bff"), 2: ("edema", "#ffd400"), 4: ("enhancing", "#ff3df2")}
# the grey panels of a figure, in order, with their titles
IMAGE_PANELS = {"image": "input + ground truth", "reconstruction": "reconstruction",
                "projected_reconstruction": "restored reconstruction"}
# each map's unit under its colour bar (intensities are z-scored per volume: "z"; tfvae.maps.predictors)
MAP_UNITS = {"rec_error": "(x - g)², z²", "proj_rec_error": "(x - g)², z²", "elbo_grad": "|∂ELBO/∂x|, nats / z",
             "kl_grad": "|∂KL/∂x|, nats / z", "rec_grad": "|∂Lrec/∂x|, nats / z", "combi": "nats (KL-gradient weighted)",
             "recommended": "x above its restoration, z", "intensity": "intensity, z",
             "intensity_filtered": "intensity above 0, z", "ensemble": "log-odds"}
MAP_CMAP = "inferno"  # the maps of the evaluation figures
OVERLAY_CMAP = "plasma"  # perceptual, dark to bright yellow: never white like the bright T2 tissue beneath
# the masks' outlines: a cyan, a hue that neither colour map (MAP_CMAP, OVERLAY_CMAP) nor the label
# colours use: 80 degrees of CIELAB hue or more from the maps' coloured colours (lime: 28 from inferno's
# yellow end, 31 from plasma's), 70 from the labels', and 71 CIELAB units or more from each (lime: 62)
MASK_COLOUR = "#19e8ff"
DPI = 100  # the figures' PNGs (and their TensorBoard images) at DPI dots per inch
FONT = 12  # points: 16.7 px at DPI, digits and capitals 12 px tall, legible at 100 % zoom
PANEL = 1.8  # inches per slice panel of the evaluation figures (180 px at DPI)


def _wrap(text: str, inches: float, size: float = FONT) -> str:
    """``text`` on as many lines as it takes to fit ``inches`` at ``size`` points (never breaking a word)."""
    import textwrap

    width = max(8, int(inches * 72 / (0.62 * size)))
    head, sep, tail = text.rpartition(", ")
    if len(text) > width and sep and len(head) < width and len(tail) < width:  # "unit, scale" on two lines
        return head + ",\n" + tail
    return textwrap.fill(text, width, break_long_words=False,
                         break_on_hyphens=False)


def save_png(fig, path) -> None:
    """``fig`` as a PNG at ``DPI``, trimmed to what is drawn (a file path or a binary buffer)."""
    fig.savefig(path, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.04)


def draw_labels(ax, label: np.ndarray) -> None:
    """Ground truth as one contour per BraTS label (necrosis / edema / enhancing)."""
    for value, (_, colour) in LABEL_NAMES.items():
        if (label == value).any():
            ax.contour(label == value, levels=[0.5], colors=[colour], linewidths=0.9)


def figure(items: list[dict], predictors: list[str], title: str, scales: dict | None = None,
           thresholds: dict | None = None, legend: bool = True):
    """One row per slice: the input with the ground truth as labelled contours, the reconstruction,
    the restored reconstruction g(mu(x_T)) of the projected input x_T (when computed: what the
    recommended map subtracts from the input), then each predictor's map (``intensity`` included) on ONE
    colour scale per predictor -- ``scales[p] = (low, high)``, taken from healthy validation maps,
    the same on every row and in every figure -- with a colour bar labelled with its unit; where
    ``thresholds[p]`` is given, the mask at that threshold (1 % FPR on healthy validation) is outlined
    in ``MASK_COLOUR``, and the first such predictor's mask also on the input. Laid out to be read at
    100 % and as a TensorBoard thumbnail: panels of ``PANEL`` inches with no gap to spare, text of
    ``FONT`` points (wrapped to its panel), the title and legend (unless ``legend`` is false) in one
    band above the panels."""
    from matplotlib.ticker import MaxNLocator

    scales, thresholds = scales or {}, thresholds or {}
    panels = ["image"] + [p for p in list(IMAGE_PANELS)[1:] if any(p in item for item in items)]
    panels += [p for p in predictors if any(p in item for item in items)]
    on_input = next((p for p in panels if p in thresholds), None)  # its mask is outlined on the input too
    shape = np.asarray(items[0]["image"]).shape[:2]
    aspect = shape[0] / shape[1]  # height / width of a panel
    maps = [p for p in panels if p not in IMAGE_PANELS]
    # room below the panels for a colour bar with its ticks and (up to two lines of) unit
    below = 0.0 if not maps else (0.12 + 3.6 * FONT / 72)
    fig, axes = plt.subplots(len(items), len(panels), squeeze=False, layout="constrained",
                             figsize=(PANEL * len(panels) + 0.4,
                                      PANEL * aspect * len(items) + below + 3.4 * FONT / 72))
    fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.01, hspace=0.01)
    bars: set = set()
    for row, item in zip(axes, items):
        lo, hi = np.percentile(item["image"], [1, 99.5])
        for ax, panel in zip(row, panels):
            ax.set_xticks([])
            ax.set_yticks([])
            if panel not in item:  # e.g. no ensemble map for the volumes the ensemble was fitted on
                continue
            data = np.asarray(item[panel])[..., 0]
            if panel in IMAGE_PANELS:
                ax.imshow(data, cmap="gray", vmin=lo, vmax=hi)
                if panel == "image":
                    draw_labels(ax, np.asarray(item["label"])[..., 0])
                    if on_input in item:
                        ax.contour(np.asarray(item[on_input])[..., 0] >= thresholds[on_input], levels=[0.5],
                                   colors=[MASK_COLOUR], linewidths=1.0)
            else:
                vmin, vmax = scales.get(panel) or (min(0.0, float(np.percentile(data, 1))),
                                                   float(np.percentile(data, 99.5)))
                shown = ax.imshow(data, cmap=MAP_CMAP, vmin=vmin, vmax=max(vmax, vmin + 1e-12))
                if panel in thresholds:
                    ax.contour(data >= thresholds[panel], levels=[0.5], colors=[MASK_COLOUR], linewidths=1.0)
                if panel not in bars:
                    bars.add(panel)
                    bar = fig.colorbar(shown, ax=list(axes[:, panels.index(panel)]), location="bottom",
                                       fraction=0.05, pad=0.01, shrink=0.9, aspect=12)
                    bar.ax.xaxis.set_major_locator(MaxNLocator(3))  # few ticks: they stay readable at FONT
                    bar.ax.tick_params(labelsize=FONT, pad=1)
                    bar.set_label(_wrap(MAP_UNITS.get(panel, "score"), PANEL * 0.95), fontsize=FONT, labelpad=1,
                                  linespacing=1.0)
        row[0].set_ylabel(item["title"], fontsize=FONT, labelpad=2)
    for ax, panel in zip(axes[0], panels):
        ax.set_title(_wrap(IMAGE_PANELS.get(panel, panel), PANEL), fontsize=FONT, pad=3, linespacing=1.0)
    drawn = {int(v) for item in items for v in np.unique(np.asarray(item["label"]))}  # labels on these slices
    handles = [plt.Line2D([], [], color=c, label=n) for value, (n, c) in LABEL_NAMES.items() if value in drawn]
    if on_input:
        handles.append(plt.Line2D([], [], color=MASK_COLOUR, label=f"mask at 1% FPR (on the input: {on_input})"))
    _title_band(fig, title, handles if legend else [])
    return fig


def _title_band(fig, title: str, handles: list) -> None:
    """The figure's title (left) and its legend (right, when there are ``handles``) in one band above the
    panels, which constrained layout keeps clear."""
    em = FONT / 72  # inches
    widths = sorted((len(h.get_label()) * 0.62 * em + 2.7 * em for h in handles), reverse=True)  # roughly
    ncol = len(handles)
    while ncol > 1 and sum(widths[:ncol]) > 0.6 * fig.get_figwidth():  # on more lines, beside the title
        ncol -= 1
    legend = sum(widths[:ncol])
    fig.suptitle(_wrap(title, fig.get_figwidth() - legend - 2 * em, FONT + 1), fontsize=FONT + 1, x=0.005,
                 ha="left", linespacing=1.0)
    if handles:
        fig.legend(handles=handles, loc="outside upper right", fontsize=FONT, ncol=ncol, frameon=False,
                   borderaxespad=0.1, handlelength=1.5, columnspacing=1.2, borderpad=0.1)


def _rgb(fig) -> tuple[bytes, np.ndarray]:
    """``fig`` as PNG bytes (``save_png``) and as an RGB array; the figure is closed."""
    buffer = io.BytesIO()
    save_png(fig, buffer)
    plt.close(fig)
    return buffer.getvalue(), plt.imread(io.BytesIO(buffer.getvalue()))[..., :3]


def thumbnail(item: dict, predictor: str, scales: dict | None = None, thresholds: dict | None = None):
    """One slice as TensorBoard shows it legibly in a card: the input with its ground truth and the
    ``predictor``'s map (with its mask), two panels at ``FONT`` points (about 400 px wide); the
    legend of the colours and the title are the full figure's (TensorBoard names it by its tag)."""
    compact = {k: item[k] for k in ("image", "label", "title", predictor) if k in item}
    return figure([compact], [predictor], "", scales, thresholds, legend=False)


def save_figures(figures, predictors, out_dir: str, scales: dict | None = None,
                 thresholds: dict | None = None) -> dict[str, np.ndarray]:
    """``tumour_slices.png`` and ``healthy_slices.png`` in ``out_dir`` (see ``figure``); returns them
    as RGB arrays (for TensorBoard), with ``tumour_slice_<predictor>``: the first tumour slice and
    the first predictor's map alone (``thumbnail``), legible in TensorBoard's card without opening it."""
    os.makedirs(out_dir, exist_ok=True)
    images = {}
    for kind, pool in (("tumour_slices", figures.tumour), ("healthy_slices", figures.healthy)):
        if not pool:
            continue
        png, images[kind] = _rgb(figure([item for _, item in pool], predictors, kind.replace("_", " "), scales,
                                        thresholds))
        with open(os.path.join(out_dir, f"{kind}.png"), "wb") as f:
            f.write(png)
        first = next((p for p in predictors if p in pool[0][1]), None)
        if kind == "tumour_slices" and first is not None:
            images[f"tumour_slice_{first}"] = _rgb(thumbnail(pool[0][1], first, scales, thresholds))[1]
    return images


def overlay_montage(image: np.ndarray, score: np.ndarray, mask: np.ndarray, path: str, title: str,
                    n: int = 12, scale: tuple | None = None) -> None:
    """``overlay_figure`` saved as a PNG at ``path``."""
    fig = overlay_figure(image, score, mask, title, n=n, scale=scale)
    save_png(fig, path)
    plt.close(fig)


def overlay_figure(image: np.ndarray, score: np.ndarray, mask: np.ndarray, title: str, n: int = 12,
                   scale: tuple | None = None):
    """A PNG montage of ``n`` axial slices (RAS volumes: anterior up, the patient's right on the
    right, marked) through the brain, the slices through the largest findings first: the scan in
    grey, the anomaly score over it from ``scale`` = (low, high) -- the scan's threshold, and a
    value the scan reaches (high None: the 99.5th percentile of its scores at or above the
    threshold; no scale: its brain scores' 90th and 99.5th percentiles) -- in a perceptual colour
    map that does not end in white (``OVERLAY_CMAP``), more opaque the higher the score, so lesions
    show at a glance and weak scores stay faint, with a labelled colour bar and the mask outlined."""
    from scipy import ndimage

    area = (image != 0).reshape(-1, image.shape[2]).sum(axis=0)
    candidates = np.nonzero(area >= 0.2 * area.max())[0] if area.any() else np.arange(image.shape[2])
    labels, found = ndimage.label(mask > 0, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(labels.ravel())[1:]
    findings = list(dict.fromkeys(int(round(np.argwhere(labels == i + 1)[:, 2].mean()))
                                  for i in np.argsort(-sizes)[:n // 2]))  # through the largest findings
    spread = [int(z) for z in candidates[np.linspace(0, len(candidates) - 1, min(n, len(candidates))).astype(int)]]
    zs = list(dict.fromkeys(findings + spread))[:n]
    cols = 4
    rows_ = int(np.ceil(len(zs) / cols))
    aspect = image.shape[1] / image.shape[0]  # a slice's height / width as drawn (transposed)
    panel = 2.6  # inches per slice, text of FONT points
    fig, axes = plt.subplots(rows_, cols, squeeze=False, layout="constrained",
                             figsize=(panel * cols + 0.2, (panel * aspect + 1.5 * FONT / 72) * rows_ + 6.5 * FONT / 72))
    fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.01, hspace=0.01)
    brain_scores = score[image != 0]
    if scale is None:
        scale = ((np.percentile(brain_scores, 90), np.percentile(brain_scores, 99.5)) if brain_scores.size
                 else (0.0, 1.0))
    shown = float(scale[0])
    if scale[1] is None:  # the scan's own high: what its flagged scores reach
        flagged = brain_scores[brain_scores >= shown]
        scale = (shown, float(np.percentile(flagged, 99.5)) if flagged.size else shown)
    top = max(float(scale[1]), shown + 1e-12)
    lo, hi = np.percentile(image[image != 0], [1, 99.5]) if (image != 0).any() else (0, 1)
    heat = None
    for ax in axes.flat:
        ax.axis("off")
    for ax, z in zip(axes.flat, zs):
        ax.imshow(image[:, :, z].T, cmap="gray", origin="lower", vmin=lo, vmax=hi)
        plane = score[:, :, z].T
        strength = np.clip((plane - shown) / (top - shown), 0.0, 1.0)
        heat = ax.imshow(np.ma.masked_less(plane, shown), cmap=OVERLAY_CMAP, origin="lower", vmin=shown, vmax=top,
                         alpha=np.where(plane >= shown, 0.35 + 0.55 * strength, 0.0))
        if mask[:, :, z].any():
            ax.contour(mask[:, :, z].T, levels=[0.5], colors=[MASK_COLOUR], linewidths=0.9, origin="lower")
        ax.set_title(f"z={z}" + (" (finding)" if z in findings else ""), fontsize=FONT, pad=3)
        ax.text(0.02, 0.5, "L", transform=ax.transAxes, color="white", fontsize=FONT, va="center")
        ax.text(0.98, 0.5, "R", transform=ax.transAxes, color="white", fontsize=FONT, va="center", ha="right")
    if heat is not None:
        bar = fig.colorbar(heat, ax=list(axes.flat), location="bottom", fraction=0.03, pad=0.01, shrink=0.6,
                           aspect=40)
        bar.set_label(f"anomaly score, from the threshold ({shown:.3g}) to {top:.3g}", fontsize=FONT, labelpad=1)
        bar.ax.tick_params(labelsize=FONT, pad=1)
    _title_band(fig, title, [plt.Line2D([], [], color=MASK_COLOUR, label="anomaly mask")])
    return fig


class FigureSlices:
    """Keeps, for the figures, the slice with the largest tumour area of each of the ``n`` volumes
    with the largest tumours, and the slice with the largest brain area of ``n`` tumour-free
    volumes (or tumour-free slices, when no volume is healthy) -- one row per volume."""

    def __init__(self, n: int):
        self.n = n
        self.tumour: list[tuple[float, dict]] = []
        self.healthy: list[tuple[float, dict]] = []

    def _offer(self, pool: list, key: float, volume, i: int) -> None:
        if self.n <= 0:  # evaluate.num_figures=0: no figure, nothing kept
            return
        if len(pool) < self.n or key > pool[-1][0]:
            item = {"title": f"{volume.volume_id} z={volume.slice_index[i]}", "image": volume.image[i],
                    "label": volume.label[i], **{k: v[i] for k, v in volume.maps.items()}}
            pool.append((float(key), item))
            pool.sort(key=lambda t: -t[0])
            del pool[self.n:]

    def update(self, volume):
        tumour_area = (volume.label > 0).sum(axis=(1, 2, 3))
        brain_area = (volume.brain_mask > 0).sum(axis=(1, 2, 3))
        if tumour_area.any():
            i = int(np.argmax(tumour_area))
            self._offer(self.tumour, tumour_area[i], volume, i)
        healthy = np.nonzero(tumour_area == 0)[0]
        if len(healthy):
            i = int(healthy[np.argmax(brain_area[healthy])])
            # a healthy volume's slice ranks above tumour-free slices of tumour volumes
            self._offer(self.healthy, brain_area[i] + (1e9 if not tumour_area.any() else 0), volume, i)


def log_evaluation(log_dir: str, results: dict, images: dict) -> None:
    """The evaluation in the run's TensorBoard folder, as the run ``log_dir/evaluation``
    (``EVALUATION_RUN``): its figures, the HParams metrics (``EVAL_METRICS`` of
    ``EVAL_PREDICTORS``, tagged ``eval_tag``) and one text card with the whole
    results table (every predictor and metric)."""
    import tensorflow as tf

    with tf.summary.create_file_writer(os.path.join(log_dir, EVALUATION_RUN)).as_default(step=0):
        for name, image in images.items():
            tf.summary.image(image_tag(name), image[None])  # after the curves in the Time Series
        for predictor in EVAL_PREDICTORS:
            for metric in EVAL_METRICS:
                if metric in results.get(predictor, {}):
                    tf.summary.scalar(eval_tag(predictor, metric), float(results[predictor][metric]))
        tf.summary.text("evaluation/results", markdown_table(results))