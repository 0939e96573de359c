import glob
import json
import os

import pytest

from tfvae import config as config_lib
from tfvae.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(tmp_path, content):
    path = tmp_path / "c.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_partial_config_takes_defaults_and_converts_int_to_float(tmp_path):
    cfg = config_lib.load(write(tmp_path, {"model": {"beta": 10}}))
    assert cfg["model"]["beta"] == 10.0 and isinstance(cfg["model"]["beta"], float)
    assert cfg["model"]["latent_dim"] == 64
    assert cfg["train"]["learning_rate"] == 1e-4


@pytest.mark.parametrize("content, words", [
    ({"model": {"betta": 1}}, ["c.json", "unknown key", "'model.betta'"]),
    ({"extra": 1}, ["c.json", "'extra'"]),
    ({"train": {"epochs": "10"}}, ["c.json", "train.epochs", "integer", "'10'"]),
    ({"train": {"epochs": 2.5}}, ["train.epochs", "integer", "2.5"]),
    ({"train": {"epochs": True}}, ["train.epochs", "integer", "True"]),
    ({"model": {"beta": -1}}, ["model.beta", ">= 0", "-1"]),
    ({"data": {"image_size": 48}}, ["data.image_size", "power of 2", "48"]),
    ({"model": {"filters": [16, 0]}}, ["model.filters", "positive"]),
    ({"model": 3}, ["model", "JSON object"]),
    ({"augment": {"scale": [1.2, 0.9]}}, ["augment.scale", "range", "[1.2, 0.9]"]),
    ({"augment": {"noise_std": [0.1]}}, ["augment.noise_std", "range"]),
    ({"augment": {"contrast": "x"}}, ["augment.contrast", "number", "list", "'x'"]),
    ({"data": {"clip": 0}}, ["data.clip", "> 0"]),
    ({"recommended": {"median_size": 3}}, ["recommended.median_size", "voxels", "recommended.median_mm", "9 mm", "3"]),
    ({"recommended": {"gaussian_sigma": 2.0}}, ["recommended.gaussian_sigma", "recommended.gaussian_sigma_mm", "6 mm"]),
    ({"recommended": {"median_mm": -1}}, ["recommended.median_mm", ">= 0", "-1"]),
    ({"ensemble": {"features": ["rec_error", "ensemble"]}}, ["ensemble.features", "distinct predictors"]),
    ({"predictors": {"combi": "sum"}}, ["predictors.combi", "'zimmerer'"]),
    ({"model": {"beta": float("inf")}}, ["model.beta", "finite", "inf"]),
    ({"train": {"learning_rate": float("nan")}}, ["train.learning_rate", "finite", "nan"]),
    ({"augment": {"scale": [0.9, float("inf")]}}, ["augment.scale", "finite"]),
    ({"seed": 10**20}, ["seed", "2**31", str(10**20)]),
    ({"seed": -1}, ["seed", "2**31"]),
    ({"evaluate": {"exclude_volumes": "test_000"}}, ["evaluate.exclude_volumes", "list", "'test_000'"]),
    ({"evaluate": {"exclude_volumes": ["test_000", 3]}}, ["evaluate.exclude_volumes", "volume ids"]),
])
def test_bad_values_are_one_line_errors_naming_file_and_key(tmp_path, content, words):
    with pytest.raises(ConfigError) as err:
        config_lib.load(write(tmp_path, content))
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_invalid_json_names_file_and_line(tmp_path):
    with pytest.raises(ConfigError, match=r"c\.json: not valid JSON \(line 2"):
        config_lib.load(write(tmp_path, '{"model":\n {,}}'))


def test_unreadable_configs_are_one_line_errors(tmp_path):
    latin = tmp_path / "latin.json"
    latin.write_bytes('{"name": "caf\xe9"}'.encode("latin-1"))
    for path, words in ((latin, ["latin.json", "UTF-8"]), (tmp_path, ["is a folder"])):
        with pytest.raises(ConfigError) as err:
            config_lib.load(path)
        assert "\n" not in str(err.value) and all(w in str(err.value) for w in words), str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        config_lib.load(tmp_path / "nope.json")


def test_overrides_parse_json_values_and_strings(tmp_path):
    cfg = config_lib.load(write(tmp_path, {}), ["train.epochs=2", "data.config=tiny", "model.filters=[8,16,32]",
                                                "data.image_size=32", "data.data_dir=null", "model.beta=0.5"])
    assert cfg["train"]["epochs"] == 2
    assert cfg["data"]["config"] == "tiny"
    assert cfg["model"]["filters"] == [8, 16, 32]
    assert cfg["data"]["data_dir"] is None
    assert cfg["model"]["beta"] == 0.5


@pytest.mark.parametrize("item, words", [
    ("train.epoch=2", ["--set train.epoch=2", "'train.epoch'"]),
    ("train.epochs=two", ["train.epochs", "'two'"]),
    ("epochs", ["KEY=VALUE"]),
])
def test_bad_overrides(tmp_path, item, words):
    with pytest.raises(ConfigError) as err:
        config_lib.load(write(tmp_path, {}), [item])
    for word in words:
        assert word in str(err.value)


def test_shipped_configs_are_valid_and_cover_the_papers_tables():
    settings = set()
    for path in glob.glob(os.path.join(ROOT, "configs", "*.json")):
        if os.path.basename(path).startswith(("search_", "reproduce_")):  # tested in test_tuning / test_reproduce_tables
            continue
        cfg = config_lib.load(path)
        settings.add((cfg["model"]["beta"], cfg["model"]["latent_dim"]))
    for beta in (0.1, 0.5, 1.0, 2.0, 10.0):
        assert (beta, 64) in settings
    for latent in (32, 64, 256):
        assert (1.0, latent) in settings
    paper = config_lib.load(os.path.join(ROOT, "configs", "beta10.json"))
    assert paper["train"] == {**paper["train"], "epochs": 500, "batch_size": 64, "learning_rate": 1e-4}
    for name in ("beta0.1", "beta0.5", "beta1", "beta2", "beta10", "latent32", "latent64", "latent256"):
        cfg = config_lib.load(os.path.join(ROOT, "configs", f"{name}.json"))
        # the reference code's augmentation and map-making (Zimmerer et al.)
        assert cfg["augment"] == {**cfg["augment"], "flip": True, "rotation_deg": 5.73, "scale": [0.9, 1.2],
                                  "contrast": [0.95, 1.1], "noise_std": [0.0, 0.05]}, name
        assert cfg["predictors"]["combi"] == "zimmerer" and cfg["predictors"]["smooth_gradients"], name


def test_save_and_load_round_trip(tmp_path):
    cfg = config_lib.resolve({"model": {"beta": 2.0}}, ["train.epochs=3"])
    config_lib.save(cfg, tmp_path / "saved.json")
    assert config_lib.load(tmp_path / "saved.json") == cfg


@pytest.mark.parametrize("command, required", [
    ("train", ["--config", "c.json"]), ("evaluate", ["--run-dir", "r"]), ("localize", ["--run-dir", "r", "--out", "o", "s"]),
    ("calibrate", ["--run-dir", "r", "--name", "n", "s"]), ("tune", ["--search", "s.json"]), ("reproduce", [])])
def test_set_given_twice_applies_every_occurrence(command, required):
    import importlib

    module = importlib.import_module(f"tfvae.commands.{command}")
    args = module.parse_args(required + ["--set", "train.epochs=2", "seed=1", "--set", "model.beta=4"])
    assert args.set == ["train.epochs=2", "seed=1", "model.beta=4"]
    assert module.parse_args(required).set == []  # the default is not shared between calls


def test_a_data_folder_that_is_a_file_is_refused_up_front(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    for key in ("data.data_dir", "data.manual_dir"):
        with pytest.raises(config_lib.ConfigError) as e:
            config_lib.resolve({}, [f"{key}={a_file}"])
        assert str(e.value) == f"--set {key}={a_file}: {key} is a file, not a folder, got '{a_file}'"
    config_lib.resolve({}, [f"data.data_dir={tmp_path / 'not_yet'}"])  # a folder to be made is fine


def test_an_output_folder_that_is_a_file_is_refused_before_anything(tmp_path):
    from tfvae.evaluation import localization

    a_file = tmp_path / "out"
    a_file.write_text("x")
    with pytest.raises(ValueError, match=r"--out .*out is a file, not a folder"):
        localization.check_outputs([str(tmp_path / "scan.nii.gz")], str(a_file), overwrite=False)


def test_filters_that_do_not_fit_the_image_size_are_refused_before_a_run_folder_exists(tmp_path):
    from script_loader import load_script

    with pytest.raises(ConfigError, match=r"model\.filters has 3 entries but data\.image_size 64 needs 4"):
        config_lib.resolve({"model": {"filters": [16, 32, 64]}})
    config_lib.resolve({"model": {"filters": [16, 32, 64]}, "data": {"image_size": 32}})  # 3 levels at 32x32
    run_dir = tmp_path / "run"
    assert load_script("train").main(["--config", os.path.join(os.path.dirname(__file__), "..", "configs",
                                                                "quickstart.json"),
                                      "--run-dir", str(run_dir), "--set", "model.filters=[16,32,64]"]) == 2
    assert not run_dir.exists()  # nothing left behind: the corrected rerun is not told "already exists"


def test_shipped_configs_are_found_by_name_from_any_folder(tmp_path, monkeypatch):
    from tfvae.runs import tuning

    monkeypatch.chdir(tmp_path)  # not the repository: configs/quickstart.json is not here
    for name in ("quickstart", "beta10.json"):
        found = config_lib.load(name)
        assert found == config_lib.load(os.path.join(os.path.dirname(__file__), "..", "configs",
                                                     name if name.endswith(".json") else name + ".json"))
    assert tuning.load_search("search_paper").objective_key == "neg_elbo"
    (tmp_path / "quickstart").mkdir()  # a file or folder of the user's with that name wins: it is what they gave
    with pytest.raises(ConfigError, match="is a folder"):
        config_lib.load("quickstart")
    with pytest.raises(ConfigError) as e:
        config_lib.load("quickstrat")
    assert "quickstrat: config file not found (shipped, found by name from any folder:" in str(e.value)
    assert "quickstart" in str(e.value)


# --- issue 31: configs as Windows editors save them, keys given twice, flags in messages -------------
def test_a_config_saved_with_a_utf8_bom_and_crlf_reads_as_the_plain_file(tmp_path):
    """Notepad's "UTF-8 with BOM" (field case 29): read like the same JSON without it, search configs too."""
    text = json.dumps({"name": "bom", "train": {"epochs": 3}, "model": {"beta": 4}}, indent=2)
    plain, bom = tmp_path / "plain.json", tmp_path / "bom.json"
    plain.write_text(text, encoding="utf-8")
    bom.write_bytes(("\ufeff" + text.replace("\n", "\r\n") + "\r\n").encode("utf-8"))
    assert bom.read_bytes()[:3] == b"\xef\xbb\xbf"
    assert config_lib.load(bom) == config_lib.load(plain)
    assert config_lib.load(bom)["train"]["epochs"] == 3
    assert config_lib.read_json(bom, what="search config") == json.loads(text)


@pytest.mark.parametrize("text, key", [
    ('{"train": {"epochs": 1, "batch_size": 8, "epochs": 2}}', "train.epochs"),
    ('{"seed": 1, "model": {"beta": 2}, "seed": 3}', "seed"),
    ('{"data": {"name": "hcp_t2"}, "data": {"config": "mni"}}', "data"),  # a whole section: the first silently lost
])
def test_a_key_given_twice_in_a_json_config_is_one_line_naming_the_file_and_the_key(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        config_lib.load(path)
    assert str(e.value) == (f"{path}: key {key!r} is given twice; keep one of them (JSON would keep the last "
                            "silently)")
    # the same key in two sections is two keys, not one given twice
    ok = write(tmp_path, '{"postprocess": {"median_size": 3}, "recommended": {"median_mm": 5}}')
    assert config_lib.load(ok)["recommended"]["median_mm"] == 5.0


@pytest.mark.parametrize("command, required", [("train", ["--config", "x.json"]), ("evaluate", ["--run-dir", "r"]),
                                               ("calibrate", ["--run-dir", "r", "--name", "n", "scan.nii"])])
def test_set_of_one_key_twice_ends_the_command_with_one_line_naming_it(command, required, capsys):
    import importlib

    module = importlib.import_module(f"tfvae.commands.{command}")
    with pytest.raises(SystemExit) as e:
        module.parse_args(required + ["--set", "train.epochs=2", "seed=1", "--set", "train.epochs=3"])
    assert e.value.code == 2
    assert capsys.readouterr().err == ("error: train.epochs is set twice (--set train.epochs=2, then --set "
                                       "train.epochs=3); give it once\n")
    assert module.parse_args(required + ["--set", "train.epochs=2", "--set", "seed=1"]).set == ["train.epochs=2",
                                                                                              "seed=1"]


def test_a_key_set_by_a_flag_and_by_set_is_one_line_naming_both(tmp_path, capsys):
    from tfvae.commands import evaluate, train

    assert evaluate.main(["--run-dir", str(tmp_path), "--projection-steps", "5", "--set",
                          "predictors.projection_steps=10"]) == 2
    assert capsys.readouterr().err == ("error: predictors.projection_steps is set twice (--set "
                                       "predictors.projection_steps=10, then --projection-steps 5); give it once\n")
    assert train.main(["--config", "quickstart", "--manual-dir", str(tmp_path), "--set",
                       f"data.manual_dir={tmp_path}"]) == 2
    assert capsys.readouterr().err == (f"error: data.manual_dir is set twice (--set data.manual_dir={tmp_path}, then "
                                       f"--manual-dir {tmp_path}); give it once\n")


def test_a_data_folder_below_a_file_is_refused_up_front(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    with pytest.raises(ConfigError) as e:
        config_lib.resolve({}, [f"data.data_dir={a_file}/tfds"])
    assert str(e.value) == (f"--set data.data_dir={a_file}/tfds: data.data_dir is below {a_file}, a file, not a "
                            f"folder, got '{a_file}/tfds'")


def test_calibrate_name_errors_speak_of_the_flag_on_the_command_line_and_of_the_argument_in_python(tmp_path, capsys):
    from tfvae.commands import calibrate
    from tfvae.runs.run import Run

    assert calibrate.main(["--run-dir", str(tmp_path / "run"), "--name", "my site", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == ("error: --name 'my site': must be a name of letters, digits, '_', '.' or '-' (at most 64 "
                   "characters), as calibrations are named\n")
    with pytest.raises(ConfigError) as e:
        Run(str(tmp_path / "run")).calibrate([str(tmp_path)], name="my site")
    assert str(e.value).startswith("name 'my site': must be a name of letters") and "--" not in str(e.value)
    from tfvae.utils import console

    assert console.COMMAND_LINE is False  # the command gave the Python voice back when it ended


def test_a_saved_config_with_the_voxel_counted_filter_keys_at_null_reads_as_the_millimetre_keys(tmp_path):
    """Every run saved before the recommended map's sizes were millimetres has recommended.median_size and
    gaussian_sigma null (chosen on validation): it still loads, as the new keys' null (chosen again, in mm)."""
    saved = write(tmp_path, {"recommended": {"restore": True, "median_size": None, "gaussian_sigma": None,
                                             "synthetic_copies": 3}})
    config = config_lib.load(saved)
    assert config["recommended"] == config_lib.defaults()["recommended"]
    assert "median_size" not in config["recommended"] and config["recommended"]["median_mm"] is None
    with pytest.raises(ConfigError, match="recommended.median_size counted voxels"):
        config_lib.resolve({}, ["recommended.median_size=3"])
    assert config_lib.resolve({}, ["recommended.median_mm=7"])["recommended"]["median_mm"] == 7.0
