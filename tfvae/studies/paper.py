"""The published numbers of Zhou, Deng & Wu (2020), in one place.

Pixel-wise AUROC on BraTS2018 T2 (64x64 slices, models trained on healthy HCP T2 slices),
transcribed from the paper's Table 1 (VAE, beta = 1, latent size l) and Table 2 (beta-VAE,
l = 64), and the logistic-regression ensemble of Sec. 3 (beta = 10, fitted on 10% of the test
data). Keys are tfvae predictor names (``tfvae.maps.predictors.ALL_PREDICTORS``).
"""

from __future__ import annotations

# Table 1: latent size -> predictor -> AUROC (beta = 1)
TABLE1_LATENT = {
    32: {"rec_error": 0.860, "elbo_grad": 0.900, "kl_grad": 0.853, "rec_grad": 0.901, "combi": 0.831},
    64: {"rec_error": 0.856, "elbo_grad": 0.900, "kl_grad": 0.809, "rec_grad": 0.900, "combi": 0.800},
    256: {"rec_error": 0.838, "elbo_grad": 0.871, "kl_grad": 0.853, "rec_grad": 0.871, "combi": 0.803},
}
TABLE1_PREDICTORS = ("rec_error", "elbo_grad", "kl_grad", "rec_grad", "combi")

# Table 2: beta -> predictor -> AUROC (latent size 64)
TABLE2_BETA = {
    0.1: {"rec_error": 0.857, "elbo_grad": 0.899, "kl_grad": 0.805, "rec_grad": 0.899, "combi": 0.810,
          "proj_rec_error": 0.861},
    0.5: {"rec_error": 0.856, "elbo_grad": 0.903, "kl_grad": 0.809, "rec_grad": 0.903, "combi": 0.808,
          "proj_rec_error": 0.865},
    1.0: {"rec_error": 0.856, "elbo_grad": 0.900, "kl_grad": 0.809, "rec_grad": 0.900, "combi": 0.800,
          "proj_rec_error": 0.861},
    2.0: {"rec_error": 0.856, "elbo_grad": 0.900, "kl_grad": 0.803, "rec_grad": 0.900, "combi": 0.778,
          "proj_rec_error": 0.862},
    10.0: {"rec_error": 0.859, "elbo_grad": 0.905, "kl_grad": 0.810, "rec_grad": 0.905, "combi": 0.749,
           "proj_rec_error": 0.864},
}
TABLE2_PREDICTORS = TABLE1_PREDICTORS + ("proj_rec_error",)

# Sec. 3, "Complementariness": logistic regression on (rec_error, kl_grad, rec_grad), beta = 10
ENSEMBLE = {"beta": 10.0, "latent_dim": 64, "auroc": 0.903}

LATENT_SIZES = tuple(TABLE1_LATENT)  # (32, 64, 256), at beta 1
BETAS = tuple(TABLE2_BETA)  # (0.1, 0.5, 1.0, 2.0, 10.0), at latent 64
TABLE1_BETA = 1.0
TABLE2_LATENT = 64

# the dataset the published numbers were measured on (data.test_name of the paper configs)
TEST_DATASET = "brats"


def settings() -> list[tuple[int, float]]:
    """The distinct (latent_dim, beta) runs both tables need, Table 1 first: 7 runs (the
    (64, 1.0) run is shared by the two tables)."""
    out = [(l, TABLE1_BETA) for l in LATENT_SIZES] + [(TABLE2_LATENT, b) for b in BETAS]
    return list(dict.fromkeys(out))


def published(table: int, setting: float, predictor: str) -> float | None:
    """The paper's AUROC for a row (latent size for table 1, beta for table 2), or None."""
    rows = TABLE1_LATENT if table == 1 else TABLE2_BETA
    return rows.get(setting, {}).get(predictor)
