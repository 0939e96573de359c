"""The benchmark's PyTorch peer (the same network, skipped in one line without torch) and its
evaluation figures (set-up against scoring, timed on a run without writing in it)."""

import importlib.util
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from tfvae.studies import benchmark, benchmark_peer
from tfvae.commands import benchmark as benchmark_command
from tfvae.utils.timing import Stages


def test_without_torch_the_peer_is_skipped_not_an_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    assert benchmark.peer_figures(True, 2, 2, 1) is None


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch (optional) is not installed")
def test_the_peer_is_the_same_network_and_its_figures_come_back():
    import torch

    from tfvae.model.vae import BetaVAE

    torch.manual_seed(0)
    peer = benchmark_peer.build(latent=64)
    ours = BetaVAE(image_size=64, latent_dim=64, seed=0)
    assert sum(p.numel() for p in peer.parameters()) == ours.count_params()
    # its terms are the model's: Normal(g, 1) NLL and KL(q || N(0, I)), against torch.distributions
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 1, 64, 64)).astype(np.float32))
    rec, kl, g = peer.terms(x, sample=False)
    mu, log_sigma = peer.encoder(x).flatten(1).chunk(2, dim=1)
    normal = torch.distributions.Normal
    expected_kl = torch.distributions.kl_divergence(normal(mu, log_sigma.exp()), normal(0.0, 1.0)).sum(dim=1)
    expected_rec = -normal(g, 1.0).log_prob(x).sum(dim=(1, 2, 3))
    np.testing.assert_allclose(kl.detach().numpy(), expected_kl.detach().numpy(), rtol=1e-4)
    np.testing.assert_allclose(rec.detach().numpy(), expected_rec.detach().numpy(), rtol=1e-4)
    done = subprocess.run([sys.executable, "-m", "tfvae.studies.benchmark_peer", "--batch", "4", "--repeats", "1",
                           "--steps", "1", "--projection-steps", "1"], capture_output=True, text=True, check=True)
    figures = json.loads(done.stdout)
    assert all(figures[k] > 0 for k in ("train_slices_per_s", "predictor_maps_slices_per_s",
                                        "projection_slice_steps_per_s"))


def test_stages_add_up_each_name_in_the_order_first_entered():
    stages = Stages()
    with stages("b"):
        time.sleep(0.02)
    with stages("a"):
        pass
    with stages("b"):
        time.sleep(0.02)
    stages.add("a", 1.0)
    assert list(stages.seconds) == ["b", "a"]
    assert 0.04 <= stages.seconds["b"] < 1.0 and 1.0 <= stages.seconds["a"] < 1.5
    with pytest.raises(RuntimeError), stages("failed"):  # a stage that raises is timed too
        raise RuntimeError
    assert "failed" in stages.seconds


def _listing(folder):
    """Every file and folder under ``folder`` with its modification time."""
    return sorted((os.path.relpath(os.path.join(d, name), folder), os.stat(os.path.join(d, name)).st_mtime_ns)
                  for d, dirs, names in os.walk(folder) for name in dirs + names)


def test_the_evaluation_benchmark_times_set_up_and_scoring_and_writes_nothing_in_the_run(tiny_run, tmp_path,
                                                                                          monkeypatch):
    from tfvae.maps import recommended

    copies, select = [], recommended.select
    monkeypatch.setattr(recommended, "select", lambda fn, volumes, n, *a, **k: copies.append(n) or
                        select(fn, volumes, n, *a, **k))
    before = _listing(os.path.dirname(tiny_run))  # the run and its siblings (a lock file would be one)
    started = time.perf_counter()
    out = benchmark.evaluation(tiny_run, overrides=["recommended.synthetic_copies=1"], out_path=str(tmp_path / "b.json"))
    wall = time.perf_counter() - started
    assert _listing(os.path.dirname(tiny_run)) == before  # no evaluation, threshold, log or lock left
    assert copies == [1, 1] and out["run"]["overrides"] == ["recommended.synthetic_copies=1"]  # both filtered maps
    setup = out["evaluation_selection_s"] + out["evaluation_calibration_s"]
    assert out["evaluation_setup_s"] == pytest.approx(setup)
    assert all(out[k] > 0 for k in ("evaluation_selection_s", "evaluation_calibration_s", "evaluation_scoring_s"))
    assert setup + out["evaluation_scoring_s"] < wall  # disjoint stages of one evaluation
    assert out["evaluation_setup_over_scoring"] == pytest.approx(setup / out["evaluation_scoring_s"])
    with open(tmp_path / "b.json") as f:
        assert json.load(f)["evaluation_scoring_s"] == out["evaluation_scoring_s"]
    assert out["run"]["dir"] == tiny_run and "cpu_flags" in out["machine"]


@pytest.mark.parametrize("predictors", [["rec_error", "intensity_filtered"], None], ids=["no-ensemble", "ensemble"])
def test_the_calibration_inside_the_scoring_is_counted_as_set_up_only(tiny_run, tmp_path, monkeypatch, predictors):
    """A clock that moves only while the calibration runs: all of it is set-up, none of it scoring
    (with the ensemble the calibration runs after the ensemble's volumes, without it before any)."""
    from tfvae import config as config_lib
    from tfvae.evaluation import evaluate as evaluation
    from tfvae.runs.run import Run

    run = Run(tiny_run)
    overrides = ["evaluate.write_nifti=false"] + ([f"evaluate.predictors={json.dumps(predictors)}"] if predictors else [])
    config = run.config(overrides)
    model, test, validation = evaluation.run_inputs(run, config)
    clock, calibrate = [0.0], evaluation.calibrate

    def slow_calibrate(*args, **kwargs):
        clock[0] += 100.0
        return calibrate(*args, **kwargs)

    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(evaluation, "calibrate", slow_calibrate)
    stages = Stages()
    results = evaluation.evaluate(model, config, test, validation, str(tmp_path), verbose=False, stages=stages)[0]
    assert ("ensemble" in results) == (predictors is None)
    assert stages.seconds == {"selection": 0.0, "calibration": 100.0, "scoring": 0.0}


def test_the_evaluation_benchmark_refuses_bad_input_in_one_line(tiny_run, tmp_path, capsys):
    for args, said in ((["--evaluation", str(tmp_path)], str(tmp_path)),
                       (["--evaluation", tiny_run, "--set", "recommended.synthetic_copeis=2"], "synthetic_copeis"),
                       (["--evaluation", "--set", "recommended.synthetic_copies=x"], "synthetic_copies"),
                       (["--evaluation", tiny_run, "--set", "data.test_split=validation"], "lesion"),
                       (["--evaluation", "--checkpoint", "best"], "--checkpoint"),
                       (["--evaluation", tiny_run, "--quick", "--peer"], "--quick, --peer"),
                       (["--quick", "--set", "recommended.synthetic_copies=2"], "--evaluation")):
        assert benchmark_command.main(args + ["--out", str(tmp_path / "b.json")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and said in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "b.json").exists()


# ---- interleaved rounds against the peer (scripts/benchmark.py --peer --rounds N --isa ...) ----

def test_each_kernel_class_gets_its_own_environment_and_nothing_of_the_parents():
    parent = {"PATH": "/bin", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "ATEN_CPU_CAPABILITY": "default"}
    native = benchmark.class_environment("native", parent)
    assert "ONEDNN_MAX_CPU_ISA" not in native and "ATEN_CPU_CAPABILITY" not in native and native["PATH"] == "/bin"
    avx2 = benchmark.class_environment("avx2", parent)
    assert avx2["ONEDNN_MAX_CPU_ISA"] == "AVX2" and avx2["ATEN_CPU_CAPABILITY"] == "avx2"
    assert parent["ONEDNN_MAX_CPU_ISA"] == "AVX512_CORE"  # the parent's own environment untouched
    with pytest.raises(ValueError, match="avx512"):
        benchmark.class_environment("avx512", parent)


def _round(train, maps, proj):
    peer = {"train_slices_per_s": 100.0, "predictor_maps_slices_per_s": 100.0, "projection_slice_steps_per_s": 100.0}
    ours = {"train_slices_per_s": train, "predictor_maps_slices_per_s": maps, "projection_slice_steps_per_s": proj}
    return {"load": 1.0, "tfvae": ours, "peer": peer, "ratio": {k: ours[k] / peer[k] for k in ours}}


def test_the_rounds_summary_judges_the_target_by_median_and_floor_and_its_table_fits_80_columns():
    found = [_round(160, 150, 200), _round(150, 110, 210), _round(170, 190, 190)]
    figures = benchmark.summarise(found)
    assert figures["train_slices_per_s"]["ratio_median"] == pytest.approx(1.6)
    assert (figures["train_slices_per_s"]["ratio_min"], figures["train_slices_per_s"]["ratio_max"]) == (1.5, 1.7)
    assert figures["train_slices_per_s"]["target_met"] is True
    assert figures["predictor_maps_slices_per_s"]["target_met"] is False  # median 1.5, one round at 1.1
    assert benchmark.summarise(found[:2])["train_slices_per_s"]["target_met"] is None  # under 3 rounds: not judged
    cpu = {"model": "Some CPU with a long name " * 4, "cores": 2,
           "flags": {"avx2": True, "avx512f": False, "avx512_bf16": False, "amx_tile": False}}
    kernels = {"tensorflow": "2.21.0", "tensorflow_onednn": True, "torch": "2.10.0+cpu", "torch_threads": 2,
               "torch_cpu_capability": "AVX2"}
    for name in ("native", "avx2"):
        lines = benchmark.class_table(name, {"kernels": kernels, "rounds": found, "load_end": 2.0,
                                             "figures": figures}, cpu)
        assert all(len(line) <= 80 for line in lines), lines
        assert "no avx512f" in "\n".join(lines) and ("AVX2" in lines[0]) == (name == "avx2")
        assert "NOT met" in lines[-2] and lines[-3].endswith("met") and "load (1 min) 1.0-2.0" in "\n".join(lines)
    # other work on the cores while PyTorch ran: every verdict starred, and why; while tfvae ran: shown
    shared = [{**r, "other_cores": {"tfvae": 0.1, "peer": 0.1 + i}, "own_cores": {"tfvae": 1.5, "peer": 1.9}}
              for i, r in enumerate(found)]
    lines = benchmark.class_table("avx2", {"kernels": kernels, "rounds": shared, "load_end": 2.0,
                                           "figures": figures}, cpu)
    text = "\n".join(lines)
    assert all(len(line) <= 80 for line in lines), lines
    assert "0.1-2.1 in PyTorch's halves, 0.1 in tfvae's" in text and "kept 1.5 cores busy" in text
    assert "up to 2.1 cores busy while PyTorch ran" in text and "overstate tfvae" in text
    assert sum(line.rstrip().endswith("met*") for line in lines) == 3
    for r in shared:
        r["other_cores"] = {"tfvae": 1.0, "peer": 0.2}
    lines = benchmark.class_table("avx2", {"kernels": kernels, "rounds": shared, "load_end": 2.0,
                                           "figures": figures}, cpu)
    assert not any("*" in line for line in lines) and "1.0 in tfvae's" in "\n".join(lines)


def test_the_rounds_options_refuse_what_does_not_apply_in_one_line(tmp_path, capsys):
    for args, said in ((["--rounds", "3"], "--peer"),
                       (["--peer", "--isa", "avx2"], "--rounds only"),
                       (["--peer", "--rounds", "3", "--isa", "native,sse"], "sse"),
                       (["--peer", "--rounds", "0"], "at least 1"),
                       (["--peer", "--rounds", "2", "--layers"], "--layers"),
                       (["--peer", "--rounds", "2", "--evaluation"], "--evaluation")):
        assert benchmark_command.main(args + ["--out", str(tmp_path / "b.json")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and said in err and len(err.splitlines()) == 1, err
    args = benchmark_command.parse_args(["--peer", "--rounds", "3", "--isa", "AVX2, native,avx2"])
    assert benchmark_command.isa_classes(args) == ["avx2", "native"] and benchmark_command.misplaced(args) is None
    default = benchmark_command.parse_args(["--peer", "--rounds", "1"])
    assert benchmark_command.isa_classes(default) == ["native", "avx2"]
    assert not (tmp_path / "b.json").exists()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch (optional) is not installed: "
                                                                      "the rounds compare tfvae with its PyTorch peer")
def test_one_round_of_the_avx2_class_runs_in_its_environment_and_records_it(tmp_path, capsys, monkeypatch):
    """The smallest configuration (not timed): one round, batch 2, one class. The class's variables
    reach both its tfvae process and the peer's, even against the parent's own."""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")  # the parent's: not the class's
    out_path = tmp_path / "rounds.json"
    out = benchmark.rounds(1, ["avx2"], batch=2, steps=2, projection_steps=1, repeats=1, out_path=str(out_path))
    with open(out_path) as f:
        assert json.load(f) == json.loads(json.dumps(out))
    assert set(out) == {"date", "cpu", "settings", "classes"} and list(out["classes"]) == ["avx2"]
    assert set(out["cpu"]["flags"]) == {"avx2", "avx512f", "avx512_bf16", "amx_tile"}
    assert out["settings"]["rounds"] == 1 and out["settings"]["batch"] == 2
    found = out["classes"]["avx2"]
    expected = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    assert found["environment"] == expected
    assert found["environment_seen"] == {"tfvae": expected, "peer": expected}
    assert found["kernels"]["torch_cpu_capability"] == "AVX2"  # PyTorch obeyed it
    assert len(found["rounds"]) == 1
    assert set(found["rounds"][0]["other_cores"]) == set(found["rounds"][0]["own_cores"]) == {"tfvae", "peer"}
    assert "other_cores_max" in found and "load_end" in found
    for key, _ in benchmark.FIGURES:
        r = found["rounds"][0]
        assert r["tfvae"][key] > 0 and r["peer"][key] > 0
        assert r["ratio"][key] == pytest.approx(r["tfvae"][key] / r["peer"][key])
        f = found["figures"][key]
        assert f["ratio_median"] == f["ratio_min"] == f["ratio_max"] == r["ratio"][key] and f["target_met"] is None
    printed = capsys.readouterr().out.splitlines()
    assert any(line.startswith("avx2 kernels: ONEDNN_MAX_CPU_ISA=AVX2") for line in printed)
    assert all(len(line) <= 80 for line in printed if not line.startswith("written:")), printed
