"""The evaluation layer: a test split scored and measured (``evaluate``), new scans localized
(``localization``), and their tables, figures, overlays and TensorBoard cards (``reporting``). The
metrics themselves are in ``tfvae.metrics``.
"""
