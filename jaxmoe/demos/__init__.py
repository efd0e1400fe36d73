"""Small real-data demos that need no download: the state-space models trained and scored in
one process (:mod:`jaxmoe.demos.ssm`). Their datasets (scikit-learn digits read pixel by pixel,
statsmodels macrodata forecasting windows) and pipelines live in :mod:`jaxmoe.data`
(:mod:`~jaxmoe.data.datasets`, :mod:`~jaxmoe.data.arrays`, :mod:`~jaxmoe.data.pipelines`).
"""
