"""The thresholds layer: thresholds calibrated on healthy slices and the run's store of them
(``calibration``), each scan's own threshold from its score distribution (``scan_threshold``), and a
site's own healthy scans as the reference (``healthy_scans``).
"""
