"""tfvae: unsupervised anomaly localization in brain MRI with VAEs and beta-VAEs.

Modules, by role:

- ``config``        -- JSON run configurations: defaults, validation, ``--set`` overrides.
- ``preprocessing`` -- one volume -> 2D slices path shared by every dataset (and its inverse).
- ``phantom``       -- synthetic T2 brains with synthetic tumours (the embedded default data).
- ``data``          -- TFDS datasets -> ``tf.data`` pipelines for training and evaluation.
- ``networks``      -- the paper's fully-convolutional encoder and decoder.
- ``model``         -- ``BetaVAE``: the Keras model and its TFP evidence lower bound.
- ``callbacks``     -- TensorBoard images, hparams, NaN stop.
- ``training``      -- run directories, checkpoints, resume: what ``scripts/train.py`` runs.
- ``predictors``    -- pixel maps: reconstruction error and loss gradients (one tape).
- ``projection``    -- the energy-based projection onto the normal manifold (compiled loop).
- ``ensemble``      -- logistic regression over predictors, fitted on held-out volumes.
- ``metrics``       -- streaming pixel AUROC / AUPRC / Dice.
- ``evaluation``    -- scoring a test split volume by volume; calibration; NIfTI maps.
- ``postprocessing`` -- 3D erosion, median filter, small-component removal, positive residuals.
- ``localization``  -- maps, calibrated masks and reports for new scans (``localize.py``).
- ``reporting``     -- tables (text, markdown, CSV, JSON), figures and overlays.
- ``augment``       -- on-the-fly training augmentation (noise, rotation, scale, flip, intensity).
- ``nifti``         -- safe NIfTI reading with one-line errors naming the file.
- ``tuning``        -- Keras Tuner searches over beta and latent size (``tune.py``).
- ``paper``         -- the paper's published numbers, for comparison tables.

Importing ``tfvae`` itself is cheap; TensorFlow is imported by the modules that need it.
"""

__version__ = "0.1.0"
