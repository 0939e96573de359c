"""The maps layer: anomaly maps from a trained model. The paper's predictors (``predictors``), the
projection onto the normal manifold (``projection``), the recommended map (``recommended``), 3D
filters and components (``postprocessing``), maps of whole volumes (``scoring``: the stream every job
scores with) and the logistic-regression ensemble (``ensemble``).
"""
