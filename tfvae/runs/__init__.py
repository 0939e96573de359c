"""The runs layer: ``Run`` (``run``), the face on a run directory that calls every job; training
(``training``, ``callbacks``), Keras Tuner searches (``tuning``) and the SavedModel export (``export``).
"""
