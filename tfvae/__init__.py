"""tfvae: unsupervised anomaly localization in brain MRI with VAEs and beta-VAEs.

    import tfvae
    run = tfvae.Run.create("runs/demo", tfvae.config.load("configs/quickstart.json"))
    run.train(); run.evaluate(); run.localize("scan_t2.nii.gz")

Sub-packages, one per layer, from the bottom up; a module imports only from its own layer and
those below it (checked by ``tests/test_layers.py``), and the run at the top drives them:

- ``utils``       -- files written whole or not at all, the console, timing, the checkout's git
                     state, the run directory's layout, marker and lock (``rundir``).
- ``config``      -- JSON run configurations: defaults, validation, ``--set`` overrides; the
                     predictors' names.
- ``metrics``     -- streaming AUROC / AUPRC / Dice / measured FPR (numpy only).
- ``data``        -- safe NIfTI reading and writing (``nifti``), one volume to 2D slices and back
                     (``preprocessing``), TFDS datasets as ``tf.data`` pipelines (``pipelines``),
                     augmentation, the user's scan files (``scans``), raw heads to template space
                     (``head_preprocessing``). The phantom and the dataset builders are in
                     ``tfvae_datasets`` (``datasets/``).
- ``model``       -- the paper's encoder and decoder (``networks``), ``BetaVAE`` and its TFP ELBO
                     (``vae``).
- ``maps``        -- the predictors, the projection, the recommended map, 3D post-processing, maps of
                     whole volumes (``scoring``), the ensemble.
- ``thresholds``  -- calibration on healthy slices, each scan's own threshold, a site's own healthy
                     scans.
- ``evaluation``  -- the test split scored and measured (``evaluate``), new scans localized
                     (``localization``), tables, figures and overlays (``reporting``).
- ``runs``        -- ``Run`` (``runs.run``): the face on a run directory that calls every job;
                     training and its callbacks, Keras Tuner searches, the SavedModel export.
- ``studies``     -- work over several runs that writes the evidence behind ``docs/``: the paper's
                     tables, the cross-domain, threshold, lesion-size, second-restoration and
                     raw-head studies, benchmarks; the stamp of their evidence (``evidence``).
- ``commands``    -- the command line (``tfvae <command>``, ``scripts/<command>.py``).

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
from tfvae.runs.run import Run  # noqa: F401

__version__ = "0.1.0"
