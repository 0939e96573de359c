"""Utilities every layer may use, importing no other layer of tfvae: files written whole or not at all
(``files``), a quiet console and progress lines (``console``), timing (``timing``), the checkout's
git state (``provenance``) and the run directory's layout, marker, folder swaps and lock
(``rundir``: what a run folder holds, not what runs in it).

The layers of ``tfvae``, from the bottom up; a module imports only from its own layer and the ones
below it (``tests/test_layers.py``):

``utils`` -> ``config``, ``metrics`` -> ``data`` -> ``model`` -> ``maps`` -> ``thresholds`` ->
``evaluation`` -> ``runs`` -> ``studies`` -> ``commands``
"""
