"""Small real-data demos that need no download (state-space models: :mod:`jaxmoe.demos.ssm`).

:mod:`jaxmoe.demos.data` holds the in-memory datasets (scikit-learn digits read pixel by
pixel, statsmodels macrodata forecasting windows) and :class:`ArrayPipeline`, a resumable
in-memory batch pipeline used by the ``s_mamba``, ``spacetime`` and ``lssl_classifier``
model families.
"""
