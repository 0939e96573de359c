"""reporting's figures legible at 100 % zoom (issue 34), measured on the
PNGs the reporting functions write: no margin beside the panels, text at least 12 px tall at the
saved dpi, no text over another, and mask outlines in a colour (a hue) that neither colour map uses."""

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import colors as mcolors  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from matplotlib.textpath import TextPath  # noqa: E402

from tfvae.config.predictor_names import ALL_PREDICTORS  # noqa: E402
from tfvae.evaluation import reporting  # noqa: E402

MAX_MARGIN = 0.05  # of the image's width (left, right) or height (top, bottom), per side
MIN_TEXT_PX = 12.0  # the height of a capital (or digit) as drawn, at the PNG's dpi
MIN_COLOUR_DISTANCE = 70.0  # CIELAB units (CIE76) between the outline colour and any colour of a map
MIN_HUE_SEPARATION = 60.0  # degrees of CIELAB hue between the outline colour and any coloured (chroma >= 15) one


def lab(rgb) -> np.ndarray:
    """sRGB (0..1, last axis) in CIELAB (D65)."""
    rgb = np.asarray(rgb, float)
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def colour_distance(colour, cmap: str) -> float:
    """The smallest CIELAB distance between ``colour`` and the 256 colours of ``cmap``."""
    samples = matplotlib.colormaps[cmap](np.linspace(0, 1, 256))[:, :3]
    return float(np.min(np.linalg.norm(lab(samples) - lab(mcolors.to_rgb(colour)), axis=1)))


def hue(lab_colours) -> np.ndarray:
    return np.degrees(np.arctan2(lab_colours[..., 2], lab_colours[..., 1]))


def hue_separation(colour, others) -> float:
    """The smallest CIELAB hue difference (degrees) between ``colour`` and the coloured ones of
    ``others`` (RGB rows; chroma >= 15: greys and near-blacks have no hue to confuse)."""
    others = lab(others)
    coloured = others[np.hypot(others[:, 1], others[:, 2]) >= 15]
    return float(np.min(np.abs((hue(coloured) - hue(lab(mcolors.to_rgb(colour))) + 180) % 360 - 180)))


def cap_height_px(fontsize_pt: float, dpi: float) -> float:
    """How tall a capital H is drawn at ``fontsize_pt`` points and ``dpi``, in pixels."""
    return TextPath((0, 0), "H", size=fontsize_pt * dpi / 72).get_extents().height


def measure(fig, path) -> dict:
    """Save ``fig`` with ``reporting.save_png`` and measure it: the PNG's size, per side the share of
    the image beside the panels (everything the axes draw, colour bars and their labels included;
    the title and legend band above them counts only for its empty part), the texts drawn (their
    extents in the PNG's pixels) and the smallest text's cap height."""
    drawn = []
    draw = Text.draw

    def recorded(text, renderer):  # the texts savefig draws (not those of a hidden axis)
        if text.get_visible() and text.get_text().strip():
            drawn.append(text)
        return draw(text, renderer)

    Text.draw = recorded
    try:  # (before reporting.save_png: as save_figures saved them)
        getattr(reporting, "save_png", lambda f, p: f.savefig(p, dpi=100, bbox_inches="tight"))(fig, path)
    finally:
        Text.draw = draw
    dpi = getattr(reporting, "DPI", 100)
    image = plt.imread(path)
    height, width = image.shape[:2]
    fig.set_dpi(dpi)
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    whole = fig.get_tightbbox(renderer)  # inches: what bbox_inches="tight" keeps, before its padding
    pad = (width / dpi - whole.width) / 2  # the padding savefig added, inches
    inches = lambda box: matplotlib.transforms.Bbox(box.get_points() / dpi)  # noqa: E731  (from pixels)
    panels = inches(matplotlib.transforms.Bbox.union([ax.get_tightbbox(renderer) for ax in fig.axes]))
    # the title and legend band above the panels: its empty part counts as margin, not its text
    band = [inches(a.get_window_extent(renderer)) for a in [fig._suptitle, *fig.legends] if a is not None]
    band_bottom = min([b.y0 for b in band if b.y0 >= panels.y1 - 1e-6], default=whole.y1)
    margins = {"left": (panels.x0 - whole.x0 + pad) * dpi / width, "right": (whole.x1 - panels.x1 + pad) * dpi / width,
               "top": (band_bottom - panels.y1 + (pad if band_bottom >= whole.y1 else 0)) * dpi / height,
               "bottom": (panels.y0 - whole.y0 + pad) * dpi / height}
    texts = list(dict.fromkeys(drawn))
    extents = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    return {"size": (width, height), "margins": margins, "extents": extents, "dpi": dpi,
            "cap_px": min(cap_height_px(t.get_fontsize(), dpi) for t in texts),
            "font_px": min(t.get_fontsize() for t in texts) * dpi / 72}


def assert_legible(m: dict) -> None:
    assert max(m["margins"].values()) <= MAX_MARGIN, m["margins"]
    assert m["cap_px"] >= MIN_TEXT_PX, f"smallest text {m['cap_px']:.1f} px tall (font {m['font_px']:.1f} px)"
    extents = m["extents"]
    for i, (text, box) in enumerate(extents):  # no text over another (a long label over its neighbour)
        for other, other_box in extents[i + 1:]:
            assert not box.overlaps(other_box), f"{text!r} overlaps {other!r}"


def slice_items(n: int, size: int = 64, predictors=ALL_PREDICTORS, labels=(2, 4)) -> list[dict]:
    """Figure rows like the evaluation's: a brain with a labelled lesion, every map high on the lesion."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size] / size
    brain = ((yy - 0.5) / 0.4) ** 2 + ((xx - 0.5) / 0.34) ** 2 < 1
    lesion = (yy - 0.38) ** 2 + (xx - 0.6) ** 2 < 0.015
    label = np.where(lesion, labels[0], 0).astype(np.uint8)
    label[(yy - 0.38) ** 2 + (xx - 0.6) ** 2 < 0.004] = labels[-1]
    items = []
    for i in range(n):
        image = np.where(brain, rng.normal(0, 1, brain.shape) + 3 * lesion, -3.0)[..., None]
        item = {"title": f"test_{i:03d} z=55", "image": image, "label": label[..., None],
                "reconstruction": 0.5 * image, "projected_reconstruction": 0.4 * image}
        for p in predictors:
            item[p] = ((np.abs(rng.normal(0, 1, brain.shape)) + 4 * lesion) * brain)[..., None]
        items.append(item)
    return items


@pytest.mark.parametrize("predictors", [list(ALL_PREDICTORS), ["intensity"]], ids=["every map", "one map"])
def test_evaluation_figure_is_legible(tmp_path, predictors):
    """The quick start's figure (4 rows, every map: 2587 x 832 px with 7-10 % margins beside the panels
    and 9 px capitals before) and a narrow one whose legend is wider than its panels."""
    fig = reporting.figure(slice_items(4, predictors=predictors), predictors, "tumour slices",
                           {p: (0.0, 4.0) for p in predictors}, {p: 3.0 for p in predictors})
    m = measure(fig, tmp_path / "figure.png")
    plt.close(fig)
    assert_legible(m)
    # every panel is at least as large as the map it shows (64 px): nothing is lost by the trimming
    assert m["size"][0] >= 64 * (3 + len(predictors))


def test_overlay_is_legible(tmp_path):
    rng = np.random.default_rng(0)
    x, y, z = np.meshgrid(np.arange(48), np.arange(56), np.arange(40), indexing="ij")
    head = ((x - 24) / 20) ** 2 + ((y - 28) / 24) ** 2 + ((z - 20) / 18) ** 2 < 1
    image = np.where(head, 100 + rng.normal(0, 5, head.shape), 0).astype(np.float32)
    score = np.where(head, rng.random(head.shape), 0).astype(np.float32)
    score[(x - 15) ** 2 + (y - 30) ** 2 + (z - 22) ** 2 < 20] += 3
    mask = (score >= 0.99).astype(np.uint8)
    title = "subject101_t2: recommended, mask at 1% FPR, threshold from the calibration 'site_a' (17.2 ml)"
    fig = reporting.overlay_figure(image, score, mask, title, scale=(0.99, None))
    m = measure(fig, tmp_path / "overlay.png")
    plt.close(fig)
    assert_legible(m)


def test_mask_outlines_use_a_colour_no_map_uses():
    """The masks' outline colour is far from every colour of the maps' colour map and the overlay's,
    and from the ground truth's label colours, in hue and as a whole (lime: 28 and 31 degrees of hue
    from inferno's and plasma's yellow ends, 62 CIELAB units from plasma's)."""
    for cmap in (getattr(reporting, "MAP_CMAP", "inferno"), reporting.OVERLAY_CMAP):
        assert colour_distance(reporting.MASK_COLOUR, cmap) >= MIN_COLOUR_DISTANCE, cmap
        colours = matplotlib.colormaps[cmap](np.linspace(0, 1, 256))[:, :3]
        assert hue_separation(reporting.MASK_COLOUR, colours) >= MIN_HUE_SEPARATION, cmap
    for name, colour in reporting.LABEL_NAMES.values():
        distance = np.linalg.norm(lab(mcolors.to_rgb(reporting.MASK_COLOUR)) - lab(mcolors.to_rgb(colour)))
        assert distance >= MIN_COLOUR_DISTANCE, name
        assert hue_separation(reporting.MASK_COLOUR, [mcolors.to_rgb(colour)]) >= MIN_HUE_SEPARATION, name
    # and the figures draw their maps in that colour map, their outlines in that colour
    fig = reporting.figure(slice_items(1, predictors=["recommended"]), ["recommended"], "t",
                           {"recommended": (0.0, 4.0)}, {"recommended": 3.0})
    maps = [im.get_cmap().name for ax in fig.axes for im in ax.images if im.get_cmap().name != "gray"]
    assert maps == [reporting.MAP_CMAP]
    outlines = {mcolors.to_hex(c.get_edgecolor()[0]) for ax in fig.axes[:4] for c in ax.collections
                if len(c.get_edgecolor())}
    assert mcolors.to_hex(reporting.MASK_COLOUR) in outlines
    plt.close(fig)


def test_long_units_and_titles_wrap_to_their_panel():
    assert reporting._wrap("x above its restoration, z", reporting.PANEL) == "x above its restoration,\nz" or \
        max(len(line) for line in reporting._wrap("x above its restoration, z", reporting.PANEL).split("\n")) \
        <= reporting.PANEL * 72 / (0.62 * reporting.FONT)
    assert reporting._wrap("|∂ELBO/∂x|, nats / z", reporting.PANEL) == "|∂ELBO/∂x|,\nnats / z"
    assert reporting._wrap("log-odds", reporting.PANEL) == "log-odds"


def test_the_tensorboard_thumbnail_is_legible_in_a_card(tmp_path):
    """TensorBoard shows an image in a card about 400 px wide: the evaluation's figure of every map
    (13 panels, ~2400 px) has capitals under 2 px there; the thumbnail of one slice and one map keeps
    them at 9 px or more when fitted to 400 px, and legible at 100 %."""
    item = slice_items(1)[0]
    fig = reporting.thumbnail(item, "recommended", {"recommended": (0.0, 4.0)}, {"recommended": 3.0})
    m = measure(fig, tmp_path / "thumbnail.png")
    plt.close(fig)
    assert_legible(m)
    assert m["cap_px"] * min(1.0, 400 / m["size"][0]) >= 9.0, m["size"]
    assert {" ".join(t.split()) for t, _ in m["extents"]} >= {"input + ground truth", "recommended"}


def test_save_figures_gives_tensorboard_the_thumbnail_beside_the_figures(tmp_path):
    class Figures:  # what evaluation collects: (rank, item) pairs of tumour and healthy slices
        tumour = [(0, item) for item in slice_items(2, predictors=["recommended", "intensity"])]
        healthy = [(0, item) for item in slice_items(1, predictors=["recommended", "intensity"], labels=(0,))]

    images = reporting.save_figures(Figures, ["recommended", "intensity"], str(tmp_path),
                                    {"recommended": (0.0, 4.0)}, {"recommended": 3.0})
    assert set(images) == {"tumour_slices", "healthy_slices", "tumour_slice_recommended"}
    assert images["tumour_slice_recommended"].shape[1] < images["tumour_slices"].shape[1] / 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["healthy_slices.png", "tumour_slices.png"]
