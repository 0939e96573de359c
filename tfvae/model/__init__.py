"""The model layer: the paper's encoder and decoder (``networks``) and ``BetaVAE`` with its TFP
evidence lower bound (``vae``).
"""
