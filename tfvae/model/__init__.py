"""The model layer: the paper's encoder and decoder (``networks``), ``BetaVAE`` with its TFP
evidence lower bound (``vae``) and the optimizer it trains with (``optimizer``: ``FusedAdam``).
"""
