"""Results as the paper shows them: a table per predictor (text, markdown, CSV, JSON) and figures
like its Fig. 1 and 2 (input, ground truth, reconstruction, projected image, each predictor's map)."""

from __future__ import annotations

import csv
import io
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

COLUMNS = ("auroc", "auprc", "auroc_brain", "auprc_brain", "best_dice", "dice_fpr01", "dice_fpr05")
HEADERS = {"auroc": "AUROC", "auprc": "AUPRC", "auroc_brain": "AUROC brain", "auprc_brain": "AUPRC brain",
           "best_dice": "best Dice", "dice_fpr01": "Dice@1%FPR", "dice_fpr05": "Dice@5%FPR"}


def title(config: dict, checkpoint: str = "final") -> str:
    """What an evaluation scored: run name, test data and split, beta, latent size, checkpoint."""
    from tfvae.data import test_data_config

    test = test_data_config(config["data"])
    return (f"{config['name']}: {test['name']}/{test['config']} {config['data']['test_split']}, "
            f"beta {config['model']['beta']:g}, latent {config['model']['latent_dim']}, {checkpoint} model")


def _cell(result: dict, column: str) -> str:
    value = result[column]
    if column.startswith("dice_fpr"):
        return f"{value:.3f}±{result[column + '_std']:.3f}"
    return f"{value:.3f}"


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
    "threshold flagging 1%/5% of healthy validation brain pixels (mean ± std; what localize uses).",
    "intensity: the scan itself thresholded (a baseline, no model); recommended: the restored positive residual, "
    "3D-filtered (tfvae/recommended.py); ensemble: fitted on labelled test volumes.",
)


def legend() -> str:
    """Three lines under every printed table: what the columns mean and what the baseline is."""
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
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        extra = [c + "_std" for c in COLUMNS if c.startswith("dice_fpr")]
        writer.writerow(["predictor", *COLUMNS, *extra])
        for name, r in table_entries(results).items():
            writer.writerow([name, *(r[c] for c in COLUMNS), *(r[c] for c in extra)])
    note = ensemble_note(results)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write((header + "\n\n" if header else "") + markdown_table(results) + "\n" + (f"\n{note}\n" if note else "")
                + "\n" + "\n".join(f"- {line}" for line in LEGEND) + "\n")


def figure(items: list[dict], predictors: list[str], title: str):
    """One row per slice: input, ground truth, reconstruction, projected image (when computed),
    then each predictor's map."""
    panels = ["image", "label", "reconstruction"] + (["projected"] if items and "projected" in items[0] else [])
    panels += [p for p in predictors if p != "intensity" and items and p in items[0]]
    fig, axes = plt.subplots(len(items), len(panels), figsize=(1.6 * len(panels), 1.7 * len(items) + 0.4),
                             squeeze=False)
    for row, item in zip(axes, items):
        for ax, panel in zip(row, panels):
            data = np.asarray(item[panel])[..., 0]
            if panel in ("image", "reconstruction", "projected"):
                ax.imshow(data, cmap="gray", vmin=np.percentile(item["image"], 1), vmax=np.percentile(item["image"], 99.5))
            elif panel == "label":
                ax.imshow(data, cmap="viridis", vmin=0, vmax=4, interpolation="nearest")
            else:
                low = min(0.0, float(np.percentile(data, 1)))  # the ensemble's log-odds are negative
                ax.imshow(data, cmap="inferno", vmin=low, vmax=max(float(np.percentile(data, 99.5)), low) + 1e-12)
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(item["title"], fontsize=6)
    for ax, panel in zip(axes[0], panels):
        ax.set_title({"image": "input", "label": "ground truth"}.get(panel, panel), fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def save_figures(figures, predictors, out_dir: str) -> dict[str, np.ndarray]:
    """``tumour_slices.png`` and ``healthy_slices.png`` in ``out_dir``; returns them as RGB arrays
    (for TensorBoard)."""
    os.makedirs(out_dir, exist_ok=True)
    images = {}
    for kind, pool in (("tumour_slices", figures.tumour), ("healthy_slices", figures.healthy)):
        if not pool:
            continue
        fig = figure([item for _, item in pool], predictors, kind.replace("_", " "))
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        with open(os.path.join(out_dir, f"{kind}.png"), "wb") as f:
            f.write(buffer.getvalue())
        images[kind] = plt.imread(io.BytesIO(buffer.getvalue()))[..., :3]
    return images


def overlay_montage(image: np.ndarray, score: np.ndarray, mask: np.ndarray, path: str, title: str,
                    n: int = 12) -> None:
    """A PNG montage of ``n`` axial slices (RAS volumes, anterior up) through the brain: the scan in
    grey, the top 10 % of the brain's anomaly scores as a heat map over it, the thresholded mask
    outlined in cyan."""
    area = (image != 0).reshape(-1, image.shape[2]).sum(axis=0)
    zs = np.nonzero(area >= 0.2 * area.max())[0]
    zs = zs[np.linspace(0, len(zs) - 1, min(n, len(zs))).astype(int)] if len(zs) else np.arange(image.shape[2])[:n]
    cols = 4
    rows_ = int(np.ceil(len(zs) / cols))
    fig, axes = plt.subplots(rows_, cols, figsize=(2.6 * cols, 2.8 * rows_), squeeze=False)
    brain_scores = score[image != 0]
    shown = np.percentile(brain_scores, 90) if brain_scores.size else 0.0
    top = np.percentile(brain_scores, 99.5) if brain_scores.size else 1.0
    lo, hi = np.percentile(image[image != 0], [1, 99.5]) if (image != 0).any() else (0, 1)
    for ax in axes.flat:
        ax.axis("off")
    for ax, z in zip(axes.flat, zs):
        ax.imshow(image[:, :, z].T, cmap="gray", origin="lower", vmin=lo, vmax=hi)
        ax.imshow(np.ma.masked_less_equal(score[:, :, z].T, shown), cmap="hot", origin="lower", alpha=0.6,
                  vmin=shown, vmax=max(top, shown + 1e-12))
        if mask[:, :, z].any():
            ax.contour(mask[:, :, z].T, levels=[0.5], colors="cyan", linewidths=0.8, origin="lower")
        ax.set_title(f"z={z}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class FigureSlices:
    """Keeps the ``n`` test slices with the largest tumour area, and ``n`` tumour-free slices with
    the largest brain area, with their maps, for the figures."""

    def __init__(self, n: int):
        self.n = n
        self.tumour: list[tuple[float, dict]] = []
        self.healthy: list[tuple[float, dict]] = []

    def update(self, volume):
        tumour_area = (volume.label > 0).sum(axis=(1, 2, 3))
        brain_area = (volume.brain_mask > 0).sum(axis=(1, 2, 3))
        for i in range(len(volume.image)):
            pool, key = (self.tumour, tumour_area[i]) if tumour_area[i] else (self.healthy, brain_area[i])
            if len(pool) < self.n or key > pool[-1][0]:
                item = {"title": f"{volume.volume_id} z={volume.slice_index[i]}", "image": volume.image[i],
                        "label": volume.label[i], **{k: v[i] for k, v in volume.maps.items()}}
                pool.append((float(key), item))
                pool.sort(key=lambda t: -t[0])
                del pool[self.n:]
