"""The predictors' names, importable without TensorFlow (configs and command lines check against
them before TensorFlow loads); what each one computes is in ``tfvae.maps.predictors``."""

GRADIENT_MAPS = ("rec_error", "elbo_grad", "kl_grad", "rec_grad", "combi")
ALL_PREDICTORS = ("recommended",) + GRADIENT_MAPS + ("proj_rec_error", "ensemble", "intensity", "intensity_filtered")
# every predictor but the ensemble, which is fitted on labelled test volumes: what a new scan can get,
# what an ensemble can be fitted on, what a search can score
LOCALIZABLE = tuple(p for p in ALL_PREDICTORS if p != "ensemble")
