"""ixi built through TFDS: TFDS's own builder test on the checked-in dummy_data/, and builds from
fabricated IXI folders: split by subject, sites recorded, the same features as hcp_t2, the
preprocessing cache, a scan that fails preprocessing, the refusals.

``dummy_data/`` is the manual folder of ``IxiTest``: ``IXI-T2/IXI002-Guys-0828-T2.nii.gz`` and
``IXI-T2/IXI012-HH-1211-T2.nii.gz``, raw phantom heads (skull, scalp, random pose, bias field;
``raw_heads.synthesize_raw_head``) on a coarse grid of 4 x 4 x 4.8 mm voxels, stored as int16 like
IXI's; written once by ``testing_trees.DUMMY_DATA["ixi"]``:

    python -m tfvae_datasets.testing_trees ixi

The tests preprocess them with coarse settings (``testing_trees.COARSE_PREPROCESSING``: 4 mm, one
registration level; a few seconds a scan), in a cache folder of their own (never TFDS's download folder, which TFDS's builder
test points at dummy_data/).
"""

import dataclasses
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from tfvae.data import head_preprocessing as hp  # noqa: E402
from tfvae_datasets import raw_scans, real_data  # noqa: E402
from tfvae_datasets import testing_trees as tt  # noqa: E402
from tfvae_datasets.hcp_t2 import hcp_t2_dataset_builder as hcp  # noqa: E402
from tfvae_datasets.ixi import ixi_dataset_builder as ixi  # noqa: E402

COARSE = tt.COARSE_PREPROCESSING
coarse = tt.coarse_preprocessing


class IxiTest(tfds.testing.DatasetBuilderTestCase):
    """TFDS's standard checks of the default config (with coarse preprocessing into a temporary
    cache), built from dummy_data/: one subject trains, one validates (10% of 2, at least one); 31
    slices each (the coarse template grid has 40 axial slices of 4 mm)."""

    DATASET_CLASS = ixi.Builder
    SPLITS = {"train": 31, "validation": 31}

    def setUp(self):
        super().setUp()
        self.BUILDER_CONFIG_NAMES_TO_TEST = [dataclasses.replace(
            ixi.Builder.builder_configs["default"], name="coarse_test", **coarse(self.get_temp_dir()))]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One preprocessing cache for this module's builds (each scan preprocessed once)."""
    return tmp_path_factory.mktemp("ixi_cache")


@pytest.fixture(scope="module")
def three_sites(tmp_path_factory):
    return tt.ixi_tree(str(tmp_path_factory.mktemp("ixi") / "data"))


def test_dummy_data_is_what_testing_trees_writes(tmp_path):
    tt.assert_same_niftis(tt.dummy_data_dir("ixi"), tt.write_dummy_data("ixi", tmp_path))


def test_builds_by_subject_with_sites_and_hcp_features_from_a_read_only_source(tmp_path, cache, three_sites):
    before = tt.file_bytes(three_sites)
    builder = tt.build(ixi.Builder, three_sites, tmp_path / "tfds", image_size=32, validation_fraction=0.34,
                       **coarse(cache))
    assert set(builder.info.splits) == {"train", "validation"}
    train, validation = tt.volume_ids(builder, "train"), tt.volume_ids(builder, "validation")
    names = [f"{s}-{site}-{n}-T2" for s, site, n in tt.IXI_SCANS]
    assert len(validation) == 1 and sorted(train + validation) == names
    assert real_data.validation_subset([n[:6] for n in names], 0.34, 0) == {validation[0][:6]}
    # the same features as hcp_t2's: training reads either unchanged
    hcp_builder = hcp.Builder(config=dataclasses.replace(hcp.Builder.builder_configs["default"], name="x",
                                                         image_size=32), data_dir=str(tmp_path / "h"))
    assert repr(builder.info.features) == repr(hcp_builder.info.features)
    metadata = builder.info.metadata
    assert metadata["site"] == {n: n.split("-")[1] for n in names}
    assert sum(sum(counts.values()) for counts in metadata["sites"].values()) == 3
    assert metadata["volumes"] == {"train": 2, "validation": 1}
    for split in ("train", "validation"):
        keys = [(ex["volume_id"].decode(), int(ex["slice_index"])) for ex in tt.examples(builder, split)]
        assert keys == sorted(keys)
        for ex in tt.examples(builder, split):
            assert not ex["label"].any() and np.all(ex["image"][ex["brain_mask"] == 0] == 0)
            # in template space: the brain is RAS+, 4 mm (the coarse template's grid)
            np.testing.assert_allclose(np.abs(np.diag(ex["source_affine"])[:3]), 4.0, atol=1e-4)
    assert tt.file_bytes(three_sites) == before  # nothing written beside the data
    # the cache: one folder per settings, each scan's three outputs, made from this very content
    settings = raw_scans.settings_of(builder.builder_config, "ixi")
    folder = cache / raw_scans.settings_digest(settings) / "ixi"
    assert sorted(os.listdir(folder)) == sorted(n + s for n in names for s in hp.OUTPUT_SUFFIXES.values())


def test_a_rebuild_at_another_size_reuses_the_preprocessing(tmp_path, cache, three_sites, monkeypatch):
    tt.build(ixi.Builder, three_sites, tmp_path / "a", image_size=32, validation_fraction=0.34, **coarse(cache))

    def refuse(*args, **kwargs):
        raise AssertionError("preprocessed again")
    monkeypatch.setattr(hp, "preprocess_scan", refuse)
    builder = tt.build(ixi.Builder, three_sites, tmp_path / "b", image_size=16, validation_fraction=0.34,
                       **coarse(cache))
    assert builder.info.splits["train"].num_examples > 0


def test_a_scan_that_fails_preprocessing_is_skipped_and_named(tmp_path, cache, three_sites, monkeypatch, capsys):
    real = hp.preprocess_scan

    def failing(scan, *args, **kwargs):
        if "IXI012" in os.fspath(scan):
            raise hp.PreprocessError(f"{scan}: registration to the template diverged (affine scales 9.00)")
        return real(scan, *args, **kwargs)
    monkeypatch.setattr(hp, "preprocess_scan", failing)
    # skip_bad off: a preprocessing failure is skipped all the same, the others go on
    builder = tt.build(ixi.Builder, three_sites, tmp_path / "tfds", image_size=32, validation_fraction=0.34,
                       **coarse(tmp_path / "own_cache"))
    ids = tt.volume_ids(builder, "train") + tt.volume_ids(builder, "validation")
    assert sorted(ids) == ["IXI002-Guys-0828-T2", "IXI035-IOP-0873-T2"]
    err = capsys.readouterr().err
    assert "IXI012-HH-1211-T2" in err and "registration to the template diverged" in err
    skipped = [s for split in builder.info.metadata["skipped"].values() for s in split]
    assert [s["case"] for s in skipped] == ["IXI012-HH-1211-T2"] and "diverged" in skipped[0]["reason"]
    assert "IXI012-HH-1211-T2" not in builder.info.metadata["site"]


def test_when_every_scan_fails_the_build_stops_in_one_line(tmp_path, three_sites):
    # an impossible brain volume: every scan fails its plausibility check
    with pytest.raises(real_data.BadInputError) as e:
        tt.build(ixi.Builder, three_sites, tmp_path / "tfds", image_size=32, validation_fraction=0.34,
                 **coarse(tmp_path / "cache", preprocess_settings=COARSE + (("brain_volume_ml", (1.0, 2.0)),)))
    message = str(e.value)
    assert "would be empty" in message and "implausible brain volume" in message and "\n" not in message


def test_other_files_are_left_out_and_refusals_name_the_field(tmp_path, cache, three_sites, capsys):
    import shutil

    src = tmp_path / "ixi"
    shutil.copytree(three_sites, src)
    (src / "IXI-T2" / "IXI002-Guys-0828-T1.nii.gz").write_bytes(b"not read")
    assert [vid for vid, _ in ixi.find_scans(src)] == [f"{s}-{site}-{n}-T2" for s, site, n in tt.IXI_SCANS]
    assert "1 NIfTI file(s)" in capsys.readouterr().err
    # one site: one subject is not enough for train and validation
    with pytest.raises(real_data.BadInputError, match="only 1 IXI subject"):
        tt.build(ixi.Builder, src, tmp_path / "t1", "hh", **coarse(cache))
    (tmp_path / "empty" / "IXI-T2").mkdir(parents=True)
    with pytest.raises(real_data.BadInputError, match="no IXI T2 scans found"):
        tt.build(ixi.Builder, tmp_path / "empty", tmp_path / "t2", **coarse(cache))
    for fields, said in ((dict(preprocess_settings=(("resolution", 2.0),)), "preprocess_settings.resolution: unknown"),
                         (dict(preprocess_settings={"resolution_mm": "2"}), "preprocess_settings.resolution_mm must"),
                         (dict(preprocess_workers=-1), "preprocess_workers must"),
                         (dict(preprocess=False), "preprocess cannot be off"),
                         (dict(sites=("Guys", "KCL")), "sites must be")):
        with pytest.raises(ValueError, match=said):
            tt.build(ixi.Builder, src, tmp_path / "t3", **{**coarse(cache), **fields})


def test_scans_preprocessed_in_parallel_workers_are_reused_by_the_builder(tmp_path, three_sites):
    """Two worker processes (spawned): their outputs are the cache the slicing then reads."""
    cfg = dataclasses.replace(ixi.Builder.builder_configs["default"], name="w",
                              **coarse(tmp_path / "c", preprocess_workers=2))
    pre = raw_scans.Preprocessor("ixi", cfg, root=tmp_path / "c" / "x")
    jobs = ixi.find_scans(tt.ixi_tree(str(tmp_path / "data"), tt.IXI_SCANS[:2]))
    pre.prepare(jobs)
    assert len(pre.times) == 2 and not pre.failed
    for vid, scan in jobs:
        record = json.loads(open(hp.output_paths(scan, pre.out_dir(vid))["record"]).read())
        assert record["settings"]["threads"] == 1  # the builder's settings, as recorded
        assert hp.reusable(os.fspath(scan), pre.out_dir(vid), pre.settings) is not None
        loaded = pre.load(vid, scan)
        assert loaded.image.shape == loaded.mask.shape and loaded.mask.any()
    # scans failing in the workers: recorded with their reason, said when loaded (always skipped)
    failing = raw_scans.Preprocessor("ixi", dataclasses.replace(cfg, preprocess_settings=COARSE + (
        ("brain_volume_ml", (1.0, 2.0)),)), root=tmp_path / "c" / "y")
    failing.prepare(jobs)
    assert sorted(failing.failed) == [vid for vid, _ in jobs] and not failing.times
    with pytest.raises(real_data.PreprocessFailed, match=r"IXI002-Guys-0828-T2\.nii\.gz: implausible brain volume"):
        failing.load(*jobs[0])


def test_beam_local_runner_builds_the_same_dataset(tmp_path, three_sites, monkeypatch):
    """Through TFDS's Apache Beam support (Beam's local DirectRunner, as a user would name Dataflow,
    Spark or Flink): the scans preprocessed on Beam's workers into the cache, and the same examples
    in the same order as the plain build (which then finds every scan preprocessed)."""
    pytest.importorskip("apache_beam")
    cfg = dataclasses.replace(ixi.Builder.builder_configs["default"], name="beam_test", image_size=32,
                              validation_fraction=0.34, **coarse(tmp_path / "cache"))
    beam = ixi.Builder(config=cfg, data_dir=str(tmp_path / "beam"))
    beam.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=three_sites,
                                                                           beam_runner="DirectRunner"))
    assert beam.info.metadata["generated_with"] == "apache_beam"
    plain = ixi.Builder(config=cfg, data_dir=str(tmp_path / "plain"))
    monkeypatch.setattr(hp, "preprocess_scan", None)  # the plain build must find every scan in the cache
    plain.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=three_sites))
    assert beam.info.metadata["site"] == plain.info.metadata["site"]
    assert beam.info.metadata["volumes"] == plain.info.metadata["volumes"]
    for split in ("train", "validation"):
        ours, theirs = tt.examples(beam, split), tt.examples(plain, split)
        assert [(ex["volume_id"], int(ex["slice_index"])) for ex in ours] == \
            [(ex["volume_id"], int(ex["slice_index"])) for ex in theirs]
        for a, b in zip(ours, theirs):
            for key in ("image", "brain_mask", "label", "source_affine", "crop"):
                np.testing.assert_array_equal(a[key], b[key])


def test_without_simpleitk_building_is_one_line_naming_the_extra(tmp_path, monkeypatch, three_sites):
    from tfvae import config as config_lib
    from tfvae.data import pipelines as data

    def missing():
        raise hp.MissingExtraError(f"raw-head preprocessing needs SimpleITK, which is not installed: {hp.EXTRA_HINT}")
    monkeypatch.setattr(hp, "require_simpleitk", missing)
    config = {**config_lib.defaults()["data"], "name": "ixi", "data_dir": str(tmp_path / "tfds"),
              "manual_dir": three_sites}
    with pytest.raises(data.DataError, match=r"^building ixi/default: raw-head preprocessing needs SimpleITK.*"
                                             r"pip install tfvae\[preprocess\]$"):
        data.prepare(config, log=lambda line: None)


def test_a_build_preprocessed_with_other_settings_is_stale(tmp_path, cache, three_sites, monkeypatch):
    """A built raw-head dataset records its preprocessing settings' digest; tfvae's preprocessing
    changing (issue 32's masks) or the config's settings make it stale, never silently reused."""
    from tfvae.data import pipelines

    builder = tt.build(ixi.Builder, three_sites, tmp_path / "a", image_size=16, validation_fraction=0.34,
                       **coarse(cache))
    folder = os.path.join(three_sites, "IXI-T2")
    pipelines._record_source(builder, folder)
    assert pipelines._stale_reason(builder, folder) is None
    monkeypatch.setattr(raw_scans, "settings_digest", lambda settings: "another")
    assert "preprocessed with other settings" in pipelines._stale_reason(builder, folder)
    monkeypatch.undo()
    record = os.path.join(os.fspath(builder.data_dir), pipelines.SOURCE_RECORD)
    with open(record) as f:
        old = {k: v for k, v in json.load(f).items() if k != "preprocessing"}  # as a build before it recorded
    with open(record, "w") as f:
        json.dump(old, f)
    assert "preprocessed with other settings" in pipelines._stale_reason(builder, folder)
