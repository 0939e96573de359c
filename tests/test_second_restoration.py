"""The recommended map's second restoration (``recommended.second_restoration``) on a trained tiny run."""

import numpy as np
import pytest
from scipy import ndimage

from tfvae import config as config_lib


@pytest.fixture(scope="module")
def inputs(tiny_run):
    from tfvae.evaluation.evaluate import run_inputs
    from tfvae.maps.scoring import volumes
    from tfvae.runs.run import Run

    run = Run(tiny_run)
    config = config_lib.resolve(run.config(), ["recommended.second_restoration=true", "recommended.median_mm=0",
                                               "recommended.gaussian_sigma_mm=4"])
    model, test, validation = run_inputs(run, config)
    return config, model, list(volumes(test)), validation


def scorer_for(config, model, *overrides):
    from tfvae.maps.scoring import Scorer

    return Scorer(model, config_lib.resolve(config, list(overrides)), ["recommended"])


def test_the_freed_region_is_the_first_maps_healthy_one_percent_and_the_map_is_made_again(inputs):
    from tfvae.maps import recommended
    from tfvae.maps.scoring import as_volumes

    config, model, test, validation = inputs
    first = scorer_for(config, model, "recommended.second_restoration=false")
    first.fit(validation)
    healthy = [first(v.image, v.brain_mask, v.geometry.voxel_mm())["recommended"][v.brain_mask > 0]
               for v in as_volumes(validation)]
    second = scorer_for(config, model)
    with pytest.raises(RuntimeError, match="second restoration's threshold"):
        second(test[0].image, test[0].brain_mask, test[0].geometry.voxel_mm())
    second.fit(validation)
    assert second.flag_threshold == pytest.approx(float(np.quantile(np.concatenate(healthy), 0.99)), rel=1e-6)
    assert second.reference["recommended_flag_threshold"] == second.flag_threshold
    volume = test[0]
    voxel_mm = volume.geometry.voxel_mm()
    maps = first(volume.image, volume.brain_mask, voxel_mm)
    brain = volume.brain_mask > 0
    flagged = ndimage.binary_dilation(maps["recommended"][..., 0] >= second.flag_threshold)[..., None] & brain
    assert 0 < flagged.sum() < brain.sum()
    x_init = np.where(flagged, maps["projected_reconstruction"], volume.image).astype(np.float32)
    again = second.projection.masked(volume.image, x_init, (~flagged).astype(np.float32))
    expected = recommended.postprocess(recommended.positive_residual(volume.image, again)[..., 0], brain[..., 0],
                                       0.0, 4.0, voxel_mm)[..., None]
    got = second(volume.image, volume.brain_mask, voxel_mm)["recommended"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert np.abs(got - maps["recommended"]).max() > 1e-3  # a second restoration, not the first map again
    stored = scorer_for(config, model)
    stored.fit(validation, stored=second.reference)
    assert stored.flag_threshold == second.flag_threshold


def test_a_second_restoration_without_a_first_is_refused(inputs):
    config, model, _, _ = inputs
    with pytest.raises(ValueError, match="second_restoration needs recommended.restore"):
        scorer_for(config, model, "recommended.restore=false")


def test_the_threshold_is_stored_with_the_calibration_and_localize_reuses_it(tiny_run, tmp_path, monkeypatch):
    """Calibrating with the option stores the first restoration's threshold beside the filter sizes;
    a later scorer (what localize builds) takes it from there and reads no healthy scan; saved
    calibrations without the option keep their key (the option off is left out of it)."""
    import json
    import shutil

    from tfvae.maps.scoring import FLAG_KEY
    from tfvae.runs.run import Run
    from tfvae.thresholds import calibration

    run_dir = str(tmp_path / "run")
    shutil.copytree(tiny_run, run_dir)
    run = Run(run_dir)
    config = config_lib.resolve(run.config(), ["recommended.second_restoration=true", "recommended.median_mm=0",
                                               "recommended.gaussian_sigma_mm=4"])
    run.threshold("recommended", 0.01, config=config)
    stored = json.load(open(run.thresholds_path))["calibrations"]
    mine = [c for c in stored if c["key"]["settings"]["recommended"].get("second_restoration")]
    assert len(mine) == 1 and FLAG_KEY in mine[0]["reference"] and "recommended" in mine[0]["reference"]
    monkeypatch.setattr(Run, "healthy_split", lambda self, config=None: pytest.fail("read the healthy split again"))
    scorer = run.scorer(["recommended"], config=config)
    assert scorer.flag_threshold == mine[0]["reference"][FLAG_KEY]
    off = config_lib.resolve(config, ["recommended.second_restoration=false"])
    assert "second_restoration" not in calibration.map_settings(off)["recommended"]
    assert calibration.map_settings(config)["recommended"]["second_restoration"] is True
    with pytest.raises(ValueError, match="no healthy validation data"):
        from tfvae.maps.scoring import Scorer

        Scorer(run.model(), config, ["recommended"]).fit(None, stored={"recommended": mine[0]["reference"]["recommended"]})
