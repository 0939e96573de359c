"""reporting: the figure slices kept while the test split streams by."""

import numpy as np

from tfvae.data import preprocessing
from tfvae.evaluation.reporting import FigureSlices
from tfvae.maps.scoring import Volume


def test_no_figure_asked_keeps_no_slice_and_does_not_fail():
    """evaluate.num_figures=0 (a valid setting) once failed on the first volume with a tumour (IndexError)."""
    label = np.zeros((3, 8, 8, 1), np.uint8)
    label[1, 2:4, 2:4] = 1
    geometry = preprocessing.SliceGeometry((8, 8, 3), np.eye(4), (4.0, 4.0), (1.0, 1.0))
    volume = Volume("v", np.ones((3, 8, 8, 1), np.float32), label, np.ones_like(label), np.arange(3), geometry)
    for n, kept in ((0, 0), (1, 1)):
        figures = FigureSlices(n)
        figures.update(volume)
        assert len(figures.tumour) == kept and len(figures.healthy) == kept
