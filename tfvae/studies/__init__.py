"""Studies over several runs, each writing stamped evidence for ``docs/``: the paper's tables
(``reproduce``, ``paper``), the cross-domain study (``cross_domain``), the threshold study
(``threshold_study``), what the VAE adds by lesion size (``lesion_size_study``), raw heads
(``raw_study``), the second restoration (``second_restoration_study``), which beta each search
objective picks (``search_study``), speed (``benchmark``,
``benchmark_peer``) and TensorBoard screenshots (``screenshots``); ``evidence`` stamps what each
writes (commit, command, configs, the data's fingerprint).
"""
