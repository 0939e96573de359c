"""tfvae.Run: the run layout, markers, and replacing runs and evaluations without losing anything."""

import json
import os

import pytest

from script_loader import ROOT, load_script
from tfvae import config as config_lib
from tfvae.utils import rundir
from tfvae.runs.run import MARKER_FILE, Run, RunDirError, is_ours, sibling

BETA10 = os.path.join(ROOT, "configs", "beta10.json")
train_script = load_script("train")
evaluate_script = load_script("evaluate")


def test_a_folder_without_our_marker_is_never_deleted(tmp_path, tiny_overrides, capsys):
    folder = tmp_path / "P"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "notes.txt").write_text("keep")
    assert train_script.main(["--config", BETA10, "--run-dir", str(folder), "--overwrite",
                              "--set", *tiny_overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert "no .tfvae marker" in err and "\n" not in err
    assert (folder / "notes.txt").read_text() == "keep" and (folder / "sub").is_dir()


def test_overwrite_checks_first_and_puts_the_old_run_back_when_the_new_one_fails(tmp_path, tiny_overrides, capsys):
    run_dir = str(tmp_path / "R")
    old = Run.create(run_dir, config_lib.load(BETA10, tiny_overrides))
    (tmp_path / "R" / "history.csv").write_text("epoch,loss\n0,1.0\n")
    before = sorted(os.listdir(run_dir))
    # a mistyped split: found before the old run is touched
    assert train_script.main(["--config", BETA10, "--run-dir", run_dir, "--overwrite",
                              "--set", *tiny_overrides, "data.train_split=trian"]) == 2
    assert "'trian'" in capsys.readouterr().err
    assert sorted(os.listdir(run_dir)) == before and old.config()["data"]["train_split"] == "train"
    # a failure during training (here: the data disappears): the old run comes back
    new = Run.create(run_dir, config_lib.load(BETA10, tiny_overrides + ["train.epochs=1"]), overwrite=True)
    assert os.path.isdir(new.replaced) and is_ours(new.replaced, "run")
    config = new.config()
    config_lib.save(config_lib.resolve(config, ["data.validation_split=gone"]), new.config_path)
    with pytest.raises(Exception):
        new.train(verbose=0)
    assert not os.path.exists(new.replaced)
    assert (tmp_path / "R" / "history.csv").read_text() == "epoch,loss\n0,1.0\n"  # the old run, whole


def test_an_interrupted_overwrite_keeps_the_original_run_through_the_next_overwrite(tmp_path, tiny_overrides,
                                                                                    monkeypatch):
    from tfvae.runs import training

    run_dir = str(tmp_path / "R")
    Run.create(run_dir, config_lib.load(BETA10, tiny_overrides))
    (tmp_path / "R" / "history.csv").write_text("epoch,loss\n0,1.0\n")  # the user's run

    def interrupted(config, run_dir, **kw):
        with open(os.path.join(run_dir, "history.csv"), "w") as f:
            f.write("epoch,loss\n0,9.0\n")  # the new run's first epoch, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train", interrupted)
    first = Run.create(run_dir, config_lib.load(BETA10, tiny_overrides + ["model.beta=2"]), overwrite=True)
    with pytest.raises(KeyboardInterrupt):
        first.train(verbose=0)
    # interrupted: both are kept, the user's run aside
    assert (tmp_path / "R" / "history.csv").read_text() == "epoch,loss\n0,9.0\n"
    assert open(os.path.join(first.replaced, "history.csv")).read() == "epoch,loss\n0,1.0\n"
    # a second --overwrite replaces the interrupted attempt, never the user's run aside
    second = Run.create(run_dir, config_lib.load(BETA10, tiny_overrides + ["model.beta=4"]), overwrite=True)
    assert open(os.path.join(second.replaced, "history.csv")).read() == "epoch,loss\n0,1.0\n"
    assert not (tmp_path / "R" / "history.csv").exists() and second.config()["model"]["beta"] == 4.0
    monkeypatch.setattr(training, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        second.train(verbose=0)
    # --resume of the interrupted replacement: a failure keeps what it trained, the user's run stays aside
    resumed = Run.create(run_dir, None, resume=True)
    monkeypatch.setattr(training, "train", lambda *a, **k: (_ for _ in ()).throw(ValueError("NaN")))
    with pytest.raises(ValueError):
        resumed.train(verbose=0)
    assert not resumed.restored_previous and resumed.config()["model"]["beta"] == 4.0
    assert (tmp_path / "R" / "history.csv").read_text() == "epoch,loss\n0,9.0\n"
    assert open(os.path.join(resumed.replaced, "history.csv")).read() == "epoch,loss\n0,1.0\n"
    # an --overwrite that fails puts the user's run back
    third = Run.create(run_dir, config_lib.load(BETA10, tiny_overrides + ["model.beta=8"]), overwrite=True)
    with pytest.raises(ValueError):
        third.train(verbose=0)
    assert third.restored_previous
    assert (tmp_path / "R" / "history.csv").read_text() == "epoch,loss\n0,1.0\n"
    assert not os.path.exists(third.replaced)


def test_an_overwrite_whose_cleanup_was_cut_short_keeps_the_finished_run(tmp_path, tiny_overrides, monkeypatch):
    from tfvae.runs import training

    run_dir = str(tmp_path / "R")
    Run.create(run_dir, config_lib.load(BETA10, tiny_overrides))
    first = Run.create(run_dir, config_lib.load(BETA10, tiny_overrides + ["model.beta=2"]), overwrite=True)

    def finished(config, run_dir, **kw):
        open(os.path.join(run_dir, "model.keras"), "w").write("the finished model")

    monkeypatch.setattr(training, "train", finished)
    import tfvae.runs.run as run_module

    monkeypatch.setattr(run_module, "remove_ours", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):  # killed while deleting the replaced run
        first.train(verbose=0)
    monkeypatch.undo()
    assert os.path.isdir(first.replaced) and (tmp_path / "R" / "model.keras").exists()
    # the next --overwrite replaces the finished run as usual (it goes aside), the stale one goes
    second = Run.create(run_dir, config_lib.load(BETA10, tiny_overrides + ["model.beta=4"]), overwrite=True)
    assert open(os.path.join(second.replaced, "model.keras")).read() == "the finished model"
    assert json.loads(open(os.path.join(second.replaced, "config.json")).read())["model"]["beta"] == 2.0


def test_resuming_a_run_whose_data_is_gone_is_one_line(tmp_path, tiny_overrides, capsys):
    run_dir = str(tmp_path / "R")
    missing = str(tmp_path / "moved_away")
    Run.create(run_dir, config_lib.load(BETA10, tiny_overrides + ["data.name=hcp_t2", "data.config=default",
                                                                   f"data.manual_dir={missing}",
                                                                   f"data.data_dir={tmp_path / 'tfds'}"]))
    capsys.readouterr()
    assert train_script.main(["--run-dir", run_dir, "--resume"]) == 2
    err = capsys.readouterr().err.strip()  # the same instructions a new run gets, no traceback
    assert err.startswith("error: hcp_t2: the data is not there yet") and missing in err.splitlines()[0]


def test_overwrite_replaces_a_run_and_deletes_the_old_one_only_after_success(tmp_path, tiny_overrides):
    run_dir = str(tmp_path / "R")
    Run.create(run_dir, config_lib.load(BETA10, tiny_overrides + ["train.epochs=1"])).train(verbose=0)
    new = Run.create(run_dir, config_lib.load(BETA10, tiny_overrides + ["train.epochs=1", "model.beta=2"]),
                     overwrite=True)
    assert json.loads(open(os.path.join(new.replaced, "config.json")).read())["model"]["beta"] == 10.0
    new.train(verbose=0)
    assert not os.path.exists(new.replaced) and new.config()["model"]["beta"] == 2.0
    assert json.loads((tmp_path / "R" / MARKER_FILE).read_text())["kind"] == "run"


KILLED_PARTIAL = "holds an evaluation that was killed before it finished; pass overwrite=True to clear it"


class Killed(BaseException):
    """A kill (SIGKILL, a power cut) emulated: no Python cleanup catches it (Ctrl-C's KeyboardInterrupt
    is caught, and the evaluation's temporary folder removed)."""


def test_evaluations_are_swapped_in_whole(tiny_run, tmp_path, capsys, monkeypatch):
    import shutil

    from tfvae.evaluation import evaluate as evaluation

    run_dir = str(tmp_path / "R")
    shutil.copytree(tiny_run, run_dir, ignore=shutil.ignore_patterns("eval*"))
    run = Run(run_dir)
    fast = ['evaluate.predictors=["rec_error", "intensity"]']
    first = run.evaluate(overrides=fast, verbose=False)
    assert is_ours(run.eval_dir, "evaluation") and set(first) == {"rec_error", "intensity"}
    # a folder that is not ours, given as --out, is never replaced
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "results.json").write_text("{}")
    assert evaluate_script.main(["--run-dir", run_dir, "--out", str(foreign), "--overwrite"]) == 2
    assert "no .tfvae marker" in capsys.readouterr().err and (foreign / "results.json").read_text() == "{}"
    # a mistyped test split: one line, the old evaluation untouched
    assert evaluate_script.main(["--run-dir", run_dir, "--overwrite", "--set", "data.test_split=tst"]) == 2
    assert "'tst'" in capsys.readouterr().err
    assert json.loads(open(os.path.join(run.eval_dir, "results.json")).read()).keys() == first.keys()

    # Ctrl-C while writing: the previous evaluation stays, the partial one is removed at once
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation.reporting, "save_figures", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run.evaluate(overrides=['evaluate.predictors=["intensity"]'], overwrite=True, verbose=False)
    monkeypatch.undo()
    partial = sibling(run.eval_dir, "partial")
    assert not os.path.exists(partial)

    # killed while writing: the previous evaluation stays, the partial one is named, then cleared
    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(evaluation.reporting, "save_figures", killed)
    with pytest.raises(Killed):
        run.evaluate(overrides=['evaluate.predictors=["intensity"]'], overwrite=True, verbose=False)
    monkeypatch.undo()
    assert os.path.isdir(partial)
    assert set(json.loads(open(os.path.join(run.eval_dir, "results.json")).read())) == {"rec_error", "intensity"}
    with pytest.raises(RunDirError, match=KILLED_PARTIAL):
        run.evaluate(overrides=fast, verbose=False)
    again = run.evaluate(overrides=['evaluate.predictors=["intensity"]'], overwrite=True, verbose=False)
    assert set(again) == {"intensity"} and not os.path.exists(partial)
    assert not [p for p in os.listdir(run_dir) if ".tfvae-" in p]

    def results_of(folder):
        return set(json.loads(open(os.path.join(folder, "results.json")).read()))

    aside = sibling(run.eval_dir, "replaced")
    import tfvae.runs.run as run_module

    # killed between the two renames of the swap: the previous evaluation is aside, none in place
    real_rename = os.rename

    def rename_then_kill(src, dst):
        if os.path.basename(src).startswith(".eval.tfvae-partial"):
            raise Killed
        real_rename(src, dst)

    monkeypatch.setattr(run_module.os, "rename", rename_then_kill)
    with pytest.raises(Killed):
        run.evaluate(overrides=fast, overwrite=True, verbose=False)
    monkeypatch.undo()
    assert not os.path.exists(run.eval_dir) and results_of(aside) == {"intensity"}
    # the next evaluation puts the previous one back first, then replaces it only when complete
    with pytest.raises(RunDirError, match=KILLED_PARTIAL):
        run.evaluate(overrides=fast, verbose=False)
    assert results_of(run.eval_dir) == {"intensity"} and not os.path.exists(aside)
    # killed after the swap, before the replaced one was deleted: it is cleared next time
    real_rmtree = shutil.rmtree

    def rmtree_killed(path, *args, **kwargs):
        if ".eval.tfvae-replaced" in os.path.basename(path):
            real_rmtree(os.path.join(path, "maps"), ignore_errors=True)  # killed half way through the delete
            os.remove(os.path.join(path, MARKER_FILE))
            raise Killed
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(rundir.shutil, "rmtree", rmtree_killed)  # the layer that deletes our folders
    with pytest.raises(Killed):
        run.evaluate(overrides=fast, overwrite=True, verbose=False)
    monkeypatch.undo()
    # the half-deleted folder was renamed before the delete began: nothing half-made under a name we read
    assert results_of(run.eval_dir) == {"rec_error", "intensity"} and not os.path.exists(aside)
    assert [p for p in os.listdir(run_dir) if p.endswith(".tfvae-deleting")]
    final = run.evaluate(overrides=['evaluate.predictors=["intensity"]'], overwrite=True, verbose=False)
    assert set(final) == {"intensity"} and not [p for p in os.listdir(run_dir) if ".tfvae-" in p]


def test_a_model_of_another_architecture_dropped_into_a_run_is_refused(tiny_run, tmp_path):
    import shutil

    import numpy as np

    from tfvae.runs import callbacks
    from tfvae.model.vae import BetaVAE

    run_dir = str(tmp_path / "R")
    shutil.copytree(tiny_run, run_dir, ignore=shutil.ignore_patterns("eval*", "thresholds.json"))
    run = Run(run_dir)
    assert run.model().latent_dim == run.config()["model"]["latent_dim"]
    loaded_digest = run.model_digest()
    other = BetaVAE(image_size=32, latent_dim=4)
    other(np.zeros((1, 32, 32, 1), np.float32))
    callbacks.save_model(other, run.model_path())
    assert run.model_digest() == loaded_digest  # the digest is the one of the bytes loaded, not re-read
    with pytest.raises(RunDirError) as e:
        Run(run_dir).model()
    assert str(e.value) == (f"{run.model_path()}: this model is not the run's: its latent size 4 (config: 8); put "
                            "the run's own model back, or train the run again")
