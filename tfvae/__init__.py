"""tfvae: unsupervised anomaly localization in brain MRI with VAEs and beta-VAEs.

    import tfvae
    run = tfvae.Run.create("runs/demo", tfvae.config.load("configs/quickstart.json"))
    run.train(); run.evaluate(); run.localize("scan_t2.nii.gz")

Modules, in the order data flows through them:

- ``config``         -- JSON run configurations: defaults, validation, ``--set`` overrides.
- ``rundir``         -- the run directory as one layer: its layout, the marker, folder swaps, the
                        lock (one job at a time); imports no job.
- ``run``            -- ``Run``: the face on a run directory that calls every job (train, evaluate,
                        calibrate, localize, export); what the scripts call.
- ``files``          -- files written whole or not at all (a temporary name, then a rename).
- data: ``nifti`` (safe NIfTI reading and writing), ``preprocessing`` (one volume -> 2D slices path
  shared by every dataset, and its inverse), ``data`` (TFDS datasets -> ``tf.data`` pipelines),
  ``augment`` (on-the-fly training augmentation). The phantom (synthetic T2 brains with tumours,
  the embedded default data) is made by ``tfvae_datasets.brain_phantom.phantom``
  (``datasets/brain_phantom/phantom.py``), next to its TFDS builder.
- model: ``networks`` (the paper's encoder and decoder), ``model`` (``BetaVAE`` and its TFP ELBO),
  ``callbacks`` (TensorBoard images, NaN stop), ``training`` (``model.fit`` into a run directory).
- maps: ``predictor_names`` (their names, without TensorFlow), ``predictors`` (reconstruction error and loss gradients, made as the reference code makes
  them), ``projection`` (the energy-based projection), ``recommended`` (the recommended map and its
  label-free settings), ``postprocessing`` (3D filters, components), ``scoring`` (maps of whole
  volumes: the stream every job scores with), ``ensemble`` (logistic regression over maps).
- measuring: ``calibration`` (thresholds on healthy validation slices, ``thresholds.json``),
  ``scan_threshold`` (each scan's own threshold from its score distribution, label-free, and its
  estimated false-positive rate), ``healthy_scans`` (calibrating on a site's own healthy scans),
  ``metrics`` (streaming AUROC / AUPRC / Dice / measured FPR), ``evaluation`` (the test split
  through its consumers: metrics, NIfTI maps, figures).
- reports: ``reporting`` (tables, figures, overlays), ``localization`` (new scans),
  ``reproduce`` (the paper's tables over seeds), ``paper`` (its published numbers),
  ``cross_domain`` (models of one site tested on the phantom's shifted sites).
- search: ``tuning`` (Keras Tuner over beta and latent size).

Importing ``tfvae`` itself is cheap; TensorFlow is imported by the modules that need it.

TensorFlow's oneDNN kernels: on Linux x86, TensorFlow turns them on by itself only on CPUs with
AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX (``IsMklEnabled`` / ``DefaultOneDnnPolicy`` in
``tensorflow/core/util``); on an AVX2-only CPU it runs its Eigen kernels, which run this network at
about half the speed (measured with ``scripts/benchmark.py --peer``, AVX2 kernels: training
0.73-0.76x, maps 0.50-0.55x a plain PyTorch implementation with Eigen, 1.55-1.65x and 1.50-1.54x
with oneDNN; ``docs/performance.md``). Importing ``tfvae`` therefore sets
``TF_ENABLE_ONEDNN_OPTS=1`` on x86 CPUs unless it is already set (``0`` keeps Eigen; on ARM,
where TensorFlow's oneDNN build is experimental, nothing is set). TensorFlow reads it once, when it
loads: in a notebook, import ``tfvae`` before ``tensorflow`` (training warns otherwise).
"""

import os as _os
import platform as _platform
import sys as _sys

# whether TensorFlow was loaded before tfvae (then the setting below comes too late: training says so)
TENSORFLOW_IMPORTED_FIRST = "tensorflow" in _sys.modules

X86 = _platform.machine().lower() in ("x86_64", "amd64")  # where the setting below applies

if X86:  # before any TensorFlow import: see above
    _os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from tfvae import config  # noqa: F401  (cheap: no TensorFlow)
from tfvae.run import Run  # noqa: F401

__version__ = "0.1.0"
