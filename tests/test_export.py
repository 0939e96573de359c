"""The exported SavedModel serves the library's maps (to 1e-6) from a fresh load."""

import os

import numpy as np

from script_loader import load_script
from tfvae.maps.predictors import PixelPredictors
from tfvae.runs.run import Run

export_script = load_script("export")


def test_the_saved_model_serves_the_librarys_maps(tiny_run, tmp_path, capsys):
    from tfvae.runs import export

    out = str(tmp_path / "saved")
    assert export_script.main(["--run-dir", tiny_run, "--out", out]) == 0
    assert os.path.isfile(os.path.join(out, "saved_model.pb"))
    x = np.random.default_rng(0).normal(size=(3, 32, 32, 1)).astype(np.float32)
    served = export.serve(out, x)
    expected = PixelPredictors(Run(tiny_run).model())(x)
    for name in ("reconstruction", "rec_error", "elbo_grad", "kl_grad", "rec_grad"):
        np.testing.assert_allclose(served[name], expected[name], rtol=0, atol=1e-6, err_msg=name)
    assert np.abs(served["rec_grad"]).max() > 1e-3
    np.testing.assert_allclose(export.serve(out, x, "reconstruct")["reconstruction"], expected["reconstruction"],
                               rtol=0, atol=1e-6)
    assert export_script.main(["--run-dir", tiny_run, "--out", out]) == 2  # never written over
    assert "already exists" in capsys.readouterr().err
