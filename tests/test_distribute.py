"""Training under MirroredStrategy (two logical CPUs) equals one device for the same global batch;
mixed precision keeps the distributions in float32."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfvae import X86
from tfvae import config as config_lib
from tfvae.runs import training

SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from tfvae.model import vae as model_lib

    # z = mu: the sampled noise would differ between one and two replicas
    model_lib.keras.random.normal = lambda shape, seed=None: tf.zeros(shape)

    x = np.random.default_rng(0).normal(size=(16, 32, 32, 1)).astype(np.float32)

    def trained(strategy):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            m = model_lib.BetaVAE(image_size=32, latent_dim=4, beta=2.0, seed=0)
            # plain SGD: unlike Adam it is not invariant to a wrongly scaled gradient
            m.compile(optimizer=keras.optimizers.SGD(1e-3))
        ds = tf.data.Dataset.from_tensor_slices(x).batch(16).repeat(3)
        m.fit(ds, epochs=1, verbose=0, shuffle=False)
        return [w.numpy() for w in m.weights]

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    one, two = trained(tf.distribute.get_strategy()), trained(mirrored)
    worst = max(float(np.abs(a - b).max() / (np.abs(a).max() + 1e-12)) for a, b in zip(one, two))
    moved = max(float(np.abs(a - b).max()) for a, b in zip(one, [w.numpy() for w in
                model_lib.BetaVAE(image_size=32, latent_dim=4, beta=2.0, seed=0).weights]))
    print("RESULT", worst, moved)
""")


@pytest.mark.slow
def test_mirrored_training_equals_one_device_for_the_same_global_batch():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    worst, moved = map(float, lines[0].split()[1:])
    assert moved > 1e-5  # training changed the weights
    assert worst < 1e-4


def test_mixed_precision_keeps_the_distributions_in_float32():
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        from tfvae.model.vae import BetaVAE

        model = BetaVAE(image_size=32, latent_dim=4, seed=0)
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
    assert model.encoder.layers[1].compute_dtype == "float16"
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 1)).astype(np.float32)
    terms = model.loss_terms(x, sample=True)
    for key in ("rec", "kl", "loss", "reconstruction", "mu", "sigma"):
        assert terms[key].dtype == tf.float32, key
    assert np.all(np.isfinite(terms["loss"].numpy()))


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="this machine has a GPU")
def test_mixed_precision_without_a_gpu_trains_in_float32(capsys):
    config = config_lib.resolve({}, ["train.mixed_precision=true", "data.image_size=32", "model.latent_dim=4"])
    model = training.build_model(config)
    assert model.encoder.layers[1].compute_dtype == "float32"
    assert "needs a GPU" in capsys.readouterr().err
    assert keras.mixed_precision.dtype_policy().name == "float32"


def test_a_mixed_precision_model_makes_its_maps_in_float32():
    """Built (trained) under mixed_float16, the model computes in float16; the scorer rebuilds it in
    float32, so its maps equal those of a float32 model with the same weights."""
    from tfvae.evaluation import evaluate as evaluation
    from tfvae.model.vae import BetaVAE, in_float32
    from tfvae.maps.predictors import PixelPredictors

    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        mixed = BetaVAE(image_size=32, latent_dim=4, beta=1.0, seed=0)
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
    assert mixed.encoder.layers[1].compute_dtype == "float16"
    plain = BetaVAE(image_size=32, latent_dim=4, beta=1.0, seed=1)
    plain.encoder.set_weights(mixed.encoder.get_weights())
    plain.decoder.set_weights(mixed.decoder.get_weights())
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 1)).astype(np.float32)
    config = config_lib.resolve({}, ["data.image_size=32"])
    maps = evaluation.Scorer(mixed, config, ["rec_grad", "kl_grad"])(x)
    expected = PixelPredictors(plain)(x)
    for name in ("rec_grad", "kl_grad", "rec_error"):
        assert maps[name].dtype == np.float32
        np.testing.assert_allclose(maps[name], expected[name], rtol=1e-4, atol=1e-7)
    # in float16 the same maps differ (the reason for the rebuild)
    half = PixelPredictors(mixed, smooth_gradients=False)(x)["kl_grad"]
    assert not np.allclose(half, PixelPredictors(plain, smooth_gradients=False)(x)["kl_grad"], rtol=1e-3, atol=0)
    assert in_float32(plain) is plain


def test_precision_choices(monkeypatch, capsys):
    config = config_lib.resolve({}, ["data.image_size=32", "model.latent_dim=4"])
    assert training.resolve_precision(config) == ("float32", None)
    bf16 = config_lib.resolve(config, ["train.precision=mixed_bfloat16"])
    model = training.build_model(bf16)
    runs_bf16 = training.bfloat16_convolutions() or bool(tf.config.list_physical_devices("GPU"))
    assert model.encoder.layers[1].compute_dtype == ("bfloat16" if runs_bf16 else "float32")
    assert keras.mixed_precision.dtype_policy().name == "float32"
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 1)).astype(np.float32)
    terms = model.loss_terms(x, sample=False)
    assert terms["loss"].dtype == tf.float32 and terms["reconstruction"].dtype == tf.float32
    if not tf.config.list_physical_devices("GPU"):
        auto = config_lib.resolve(config, ["train.precision=auto"])
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        monkeypatch.setattr(training, "onednn_enabled", lambda: True)
        monkeypatch.setattr(training, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
        assert training.resolve_precision(auto) == ("mixed_bfloat16", None)
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # an AVX2 machine emulated: oneDNN has no bfloat16
        assert training.resolve_precision(auto) == ("float32", None)
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
        assert training.resolve_precision(auto) == ("mixed_bfloat16", None)
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
        monkeypatch.setattr(training, "cpu_flags", lambda: {"avx2", "fma"})
        assert training.resolve_precision(auto) == ("float32", None)
        monkeypatch.setattr(training, "bfloat16_convolutions", lambda: True)  # e.g. Eigen's kernels: slow
        policy, warning = training.resolve_precision(bf16)
        assert policy == "mixed_bfloat16" and "no native bfloat16" in warning
        monkeypatch.setattr(training, "bfloat16_convolutions", lambda: False)  # oneDNN below AVX-512
        policy, warning = training.resolve_precision(bf16)
        assert policy == "float32" and "cannot run bfloat16 convolutions" in warning and "training in float32" in warning
    with pytest.raises(config_lib.ConfigError, match="train.precision"):
        config_lib.resolve(config, ["train.precision=half"])


ONEDNN_PROBE = textwrap.dedent("""
    import os
    from tfvae.runs import training
    import tensorflow
    print("RESULT", os.environ.get("TF_ENABLE_ONEDNN_OPTS"), training.onednn_enabled(), training.onednn_warning())
""")


def onednn_probe(**env) -> list[str]:
    environ = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    done = subprocess.run([sys.executable, "-c", ONEDNN_PROBE], capture_output=True, text=True,
                          timeout=120, env={**environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env})
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return lines[0].split(" ", 3)[1:]


def test_bfloat16_is_refused_where_onednn_has_no_kernel_for_it():
    # oneDNN limited to AVX2 on an AVX-512 CPU (how an AVX2 machine is emulated): TensorFlow hands
    # bfloat16 to oneDNN, which cannot make the convolution, so mixed_bfloat16 trains in float32 instead
    # of failing mid-run; on a CPU without AVX-512 TensorFlow runs it in Eigen (slowly)
    probe = ("from tfvae import config; from tfvae.runs import training; c = config.resolve({}, ['train.precision=mixed_bfloat16']); "
             "print('RESULT', training.bfloat16_convolutions(), training.resolve_precision(c)[0])")
    environ = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "1", "ONEDNN_MAX_CPU_ISA": "AVX2",
               "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=environ)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    if X86 and "avx512f" in training.cpu_flags():
        assert lines[0].split()[1:] == ["False", "float32"]
    elif X86:
        assert lines[0].split()[1:] == ["True", "mixed_bfloat16"]


def test_the_oneDNN_warning_names_why_they_are_off(monkeypatch):
    import tfvae

    if tf.config.list_physical_devices("GPU") or not X86:
        pytest.skip("the warning is for x86 CPU runs")
    monkeypatch.setattr(training, "onednn_enabled", lambda: False)
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    monkeypatch.setattr(tfvae, "TENSORFLOW_IMPORTED_FIRST", True)
    assert "(TensorFlow was imported before tfvae)" in training.onednn_warning()
    assert training.onednn_warning().endswith("import tfvae first or set TF_ENABLE_ONEDNN_OPTS=1")
    monkeypatch.setattr(tfvae, "TENSORFLOW_IMPORTED_FIRST", False)
    assert "(this TensorFlow build has none)" in training.onednn_warning()
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "false")
    assert "(TF_ENABLE_ONEDNN_OPTS=0 is set)" in training.onednn_warning()
    monkeypatch.setattr(training, "onednn_enabled", lambda: True)
    assert training.onednn_warning() is None


def test_importing_tfvae_turns_tensorflows_onednn_kernels_on_unless_told_otherwise():
    # TensorFlow itself turns them on only on CPUs with AVX512_VNNI / AVX512_BF16 / AVX_VNNI / AMX
    setting, enabled, warning = onednn_probe()
    if X86:
        assert (setting, enabled, warning) == ("1", "True", "None")
    else:  # ARM: TensorFlow's own default is kept
        assert setting == "None"
    # the user's choice is kept, and a CPU run without them is told what it costs
    setting, enabled, warning = onednn_probe(TF_ENABLE_ONEDNN_OPTS="0")
    assert (setting, enabled) == ("0", "False")
    if not tf.config.list_physical_devices("GPU") and X86:
        assert "oneDNN kernels are off (TF_ENABLE_ONEDNN_OPTS=0 is set)" in warning and "2x slower" in warning


def _tf_config(cluster: dict, index: int) -> str:
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})


def _as_worker(monkeypatch, index: int) -> None:
    monkeypatch.setenv("TF_CONFIG", _tf_config({"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, index))


def _listing(folder) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_every_worker_runs_the_same_create_and_only_the_chief_writes(monkeypatch, tmp_path):
    """The README starts the same command on every machine: a non-chief worker's ``Run.create``
    neither fails on the chief's run (made before or after it) nor writes, moves or locks anything;
    what the chief refuses, it refuses too where it can tell (else it would wait for the chief forever)."""
    from tfvae.utils import rundir
    from tfvae.runs import training
    from tfvae.runs.run import Run, RunDirError

    config = config_lib.resolve({"name": "mw"}, ["train.distribute=multi_worker"])
    folder = tmp_path / "run"
    _as_worker(monkeypatch, 1)
    follower = Run.create(folder, config)  # before the chief: nothing is made
    assert _listing(tmp_path) == {} and follower.config() == config
    _as_worker(monkeypatch, 0)
    Run.create(folder, config)  # the chief
    before = _listing(tmp_path)  # the run, and beside it the lock file
    assert {"run/config.json", ".run.tfvae-lock"} <= set(before)
    _as_worker(monkeypatch, 1)
    for kwargs in ({}, {"overwrite": True}, {"resume": True, "overrides": ["train.epochs=7"]}):
        follower = Run.create(folder, config, **kwargs)  # after the chief: its run is left as it is
        assert _listing(tmp_path) == before
    assert follower.config()["train"]["epochs"] == 7
    lock_file = rundir.lock_path(str(folder))
    with follower.lock("train", follower.config()):  # the chief holds the cluster's training lock
        assert lock_file not in rundir._held
    with follower.lock("evaluate", follower.config()):  # any other job locks on every process
        assert lock_file in rundir._held
    # a follower's training leaves the run the chief replaced to the chief
    aside = tmp_path / ".run.tfvae-replaced"
    rundir.mark(str(aside), "run")
    monkeypatch.setattr(training, "train", lambda *args, **kwargs: None)
    follower.train(verbose=0)
    assert aside.is_dir()
    # refused by the chief, refused here: a resume changing the model, a run that has trained,
    # a run of another config, --overwrite of a folder that is not a run
    with pytest.raises(RunDirError, match="resuming cannot change model.beta"):
        Run.create(folder, config, resume=True, overrides=["model.beta=3"])
    other = config_lib.resolve(config, ["model.beta=3"])
    with pytest.raises(RunDirError, match="already exists and is not empty"):
        Run.create(folder, other)
    (folder / "history.csv").write_text("epoch,loss\n0,1.0\n")
    with pytest.raises(RunDirError, match="already exists and is not empty"):
        Run.create(folder, config)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("a user's")
    with pytest.raises(RunDirError, match="not a tfvae run directory"):
        Run.create(foreign, config, overwrite=True)
    # a run started in one process, resumed on a cluster: the override says who writes
    monkeypatch.delenv("TF_CONFIG")
    Run.create(tmp_path / "solo", config_lib.resolve({"name": "solo"}, []))
    before = _listing(tmp_path)
    _as_worker(monkeypatch, 1)
    resumed = Run.create(tmp_path / "solo", None, resume=True, overrides=["train.distribute=multi_worker"])
    assert resumed.config()["train"]["distribute"] == "multi_worker" and _listing(tmp_path) == before
    # without TF_CONFIG, under Slurm (training.strategy's resolver there): rank 0 writes
    monkeypatch.delenv("TF_CONFIG")
    monkeypatch.setenv("SLURM_JOB_ID", "1")
    monkeypatch.setenv("SLURM_PROCID", "1")
    assert Run.create(tmp_path / "slurm", config).config() == config and not (tmp_path / "slurm").exists()
    monkeypatch.setenv("SLURM_PROCID", "0")
    Run.create(tmp_path / "slurm", config)
    assert (tmp_path / "slurm" / "config.json").is_file()


def test_slurm_without_gpus_is_a_one_line_config_error(monkeypatch):
    """Under Slurm without TF_CONFIG the strategy comes from TensorFlow's SlurmClusterResolver, which
    counts GPUs with nvidia-smi and fails on CPU nodes: the error says what to do instead."""
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setattr(training, "_STRATEGIES", {})

    def no_gpus(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", "nvidia-smi")

    monkeypatch.setattr(tf.distribute.cluster_resolver, "SlurmClusterResolver", no_gpus)
    config = config_lib.resolve({"name": "s"}, ["train.distribute=multi_worker"])
    with pytest.raises(config_lib.ConfigError, match="needs GPUs on every node.*give each task a TF_CONFIG"):
        training.strategy(config)
    assert training._STRATEGIES == {}


WORKER = textwrap.dedent("""
    import faulthandler, json, os, sys
    faulthandler.dump_traceback_later(540, exit=True)  # a hang ends with every thread's stack on stderr
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import tensorflow as tf
    from tfvae.model import vae as model_lib
    model_lib.keras.random.normal = lambda shape, seed=None: tf.zeros(shape)  # z = mu on every worker
    # stored order: a distributed dataset's shuffle seeds are not the single process's (measured)
    tf.data.Dataset.shuffle = lambda self, *args, **kwargs: self
    # plain SGD: unlike Adam it is not invariant to a wrongly scaled gradient (and does not amplify
    # the all-reduce's float rounding of near-zero gradients into whole steps)
    from tfvae import config as config_lib
    from tfvae.runs import training
    if sys.argv[3:] != ["resume"]:  # (a resume keeps Adam: its slots are built when the state is loaded)
        training.FusedAdam = lambda learning_rate: model_lib.keras.optimizers.SGD(learning_rate)
    from tfvae.runs.run import Run
    config = config_lib.resolve(json.loads(sys.argv[1]), [])
    # every worker the same, as the README's command (or its --resume)
    Run.create(sys.argv[2], config, resume=sys.argv[3:] == ["resume"]).train(verbose=0)
    print("DONE", training.is_chief(training.strategy(config)))
""")


def _free_ports(n):
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


PORT_TAKEN = "Could not start gRPC server"


def _run_two_workers(config: dict, run_dir, env: dict, resume: bool = False, attempts: int = 3,
                     timeout: float = 600) -> list[str]:
    """Run ``WORKER`` as a cluster of two on 127.0.0.1 and return their standard outputs.

    Worker 1 starts once the chief has created the run (the order a cluster's machines usually come
    up in). A worker that fails ends the others at once: under MultiWorkerMirroredStrategy the
    survivors would wait for it forever. A worker that could not bind its port (another process took
    it between ``_free_ports`` and the bind) is retried on new ports; any other failure fails the
    test with its own error."""
    for attempt in range(attempts):
        if not resume:
            shutil.rmtree(run_dir, ignore_errors=True)  # what a failed attempt's chief began
        cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
        logs = [run_dir.parent / f"{run_dir.name}_worker{i}_{stream}.txt"
                for i in range(2) for stream in ("out", "err")]
        workers = []
        deadline = time.monotonic() + timeout
        for i in range(2):
            while i and workers[0].poll() is None and not (run_dir / "config.json").exists() \
                    and time.monotonic() < deadline:
                time.sleep(0.2)
            with open(logs[2 * i], "w") as out, open(logs[2 * i + 1], "w") as err:
                workers.append(subprocess.Popen(
                    [sys.executable, "-c", WORKER, json.dumps(config), str(run_dir)] + ["resume"] * resume,
                    stdout=out, stderr=err,
                    env={**env, "TF_CONFIG": _tf_config(cluster, i)}))
        while any(w.poll() is None for w in workers) and not any(w.poll() for w in workers) \
                and time.monotonic() < deadline:
            time.sleep(0.5)
        hung = [i for i, w in enumerate(workers) if w.poll() is None]
        for i in hung:
            workers[i].kill()
            workers[i].wait()
        outputs, errors = [log.read_text() for log in logs[0::2]], [log.read_text() for log in logs[1::2]]
        failed = [i for i, w in enumerate(workers) if w.returncode]
        if not failed:
            return outputs
        if any(PORT_TAKEN in errors[i] for i in failed) and attempt + 1 < attempts:
            continue
        first = ([i for i in failed if i not in hung] or failed)[0]
        how = (f"was still running after {timeout:.0f} s" if first in hung else
               f"ended with {workers[first].returncode}, and the other(s) were stopped")
        raise AssertionError(f"worker {first} {how} (attempt {attempt + 1}): {errors[first][-3000:]}")
    raise AssertionError("unreachable")


@pytest.mark.slow
def test_two_workers_train_the_tiny_phantom_as_one_process_does(tiny_data_dir, tmp_path):
    """train.distribute=multi_worker: two worker processes on 127.0.0.1, the global batch split
    between them, reach the weights one process reaches with the same global batch; only the chief
    writes the run directory."""
    base = config_lib.resolve({"name": "mw"}, [
        "data.config=tiny", "data.image_size=32", f"data.data_dir={tiny_data_dir}", "model.latent_dim=4",
        "train.epochs=2", "train.batch_size=16", "train.learning_rate=0.001", "train.image_every=10"])
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    single = subprocess.run([sys.executable, "-c", WORKER, json.dumps(base), str(tmp_path / "one")],
                            capture_output=True, text=True, timeout=600, env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    multi = config_lib.resolve(base, ["train.distribute=multi_worker"])
    scratch = tmp_path / "scratch"  # the workers' temporary folders
    scratch.mkdir()
    env = {**env, "TMPDIR": str(scratch)}
    outputs = _run_two_workers(multi, tmp_path / "two", env)
    assert not list(scratch.glob("tfvae-worker-*"))  # the non-chief's copies, deleted when it ended
    assert sorted(line for out in outputs for line in out.splitlines() if line.startswith("DONE")) == \
        ["DONE False", "DONE True"]
    import keras

    one = keras.models.load_model(str(tmp_path / "one" / "model.keras")).get_weights()
    two = keras.models.load_model(str(tmp_path / "two" / "model.keras")).get_weights()
    keras.utils.set_random_seed(base["seed"])
    start = training.build_model(base).get_weights()  # the weights both runs started from
    for a, b, w0 in zip(one, two, start):
        moved = float(np.abs(a - w0).max())
        # equal up to float rounding, measured against how far training moved the weights
        assert float(np.abs(a - b).max()) <= 1e-3 * moved + 1e-7, (moved, float(np.abs(a - b).max()))
    assert max(float(np.abs(a - w0).max()) for a, w0 in zip(one, start)) > 1e-3  # training moved them
    with open(tmp_path / "two" / "history.csv") as f:
        assert [line.split(",")[0] for line in f.read().splitlines()[1:]] == ["0", "1"]  # the chief's, once
    # the README's --resume on every worker: one more epoch, continued from the second
    _run_two_workers(config_lib.resolve(multi, ["train.epochs=3"]), tmp_path / "two", env, resume=True)
    with open(tmp_path / "two" / "history.csv") as f:
        assert [line.split(",")[0] for line in f.read().splitlines()[1:]] == ["0", "1", "2"]
