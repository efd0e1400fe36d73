"""Linear state-space layers: LSSL, diagonal (S4D/S5) SSMs, Mamba, SpaceTime companion SSMs.

Every layer is an ``init_*(key, embed_dim, ...) -> boxed params`` / ``layer(params, x
[batch, seq, embed], ...) -> [batch, seq, embed]`` pair plus a ``*_step`` decode function on
``[batch, embed]`` with an explicit state dict. The shared recurrence machinery lives in
:mod:`jaxmoe.ssm.scan`, HiPPO matrices and discretisation in :mod:`jaxmoe.ssm.hippo`.

Two layer functions share their module's name, so the package re-exports everything but
those two; ``jaxmoe.ssm.lssl`` and ``jaxmoe.ssm.mamba`` stay the modules::

    from jaxmoe.ssm.mamba import mamba, init_mamba, mamba_step, init_mamba_state
    from jaxmoe.ssm.lssl import lssl, init_lssl, lssl_step, init_lssl_state
    from jaxmoe.ssm import diagonal_ssm, init_diagonal_ssm   # no clash
"""

from jaxmoe.ssm.companion import (
    companion_closed_loop,
    companion_forecast,
    companion_kernel,
    companion_loss,
    companion_matrix,
    companion_ssm,
    companion_step,
    differencing_kernel,
    fir_companion,
    init_companion,
    init_companion_state,
    moving_average_residual_kernel,
    preprocess,
    preprocessing_kernels,
)
from jaxmoe.ssm.diagonal import (
    diagonal_ssm,
    diagonal_ssm_kernel,
    diagonal_ssm_step,
    discretize_diagonal_ssm,
    init_diagonal_ssm,
    init_diagonal_ssm_state,
)
from jaxmoe.ssm.hippo import (
    diagonal_init,
    discretize,
    discretize_bilinear,
    discretize_diagonal_bilinear,
    discretize_diagonal_zoh,
    discretize_zoh,
    hippo_matrices,
    hippo_legs,
    hippo_legt,
    legs_dplr,
    legs_normal_plus_low_rank,
)
from jaxmoe.ssm.lssl import discretize_lssl, init_lssl, init_lssl_state, lssl_kernel, lssl_ssm, lssl_step
from jaxmoe.ssm.mamba import MambaConfig, init_mamba, init_mamba_state, mamba_step, selective_scan
from jaxmoe.ssm.scan import (
    causal_conv_fft,
    check_layer_input,
    diagonal_combine,
    krylov,
    linear_recurrence,
    lti_ssm,
    matrix_combine,
)

__all__ = [
    # scan
    "diagonal_combine",
    "matrix_combine",
    "linear_recurrence",
    "krylov",
    "causal_conv_fft",
    "lti_ssm",
    "check_layer_input",
    # hippo
    "hippo_legs",
    "hippo_legt",
    "hippo_matrices",
    "legs_normal_plus_low_rank",
    "legs_dplr",
    "diagonal_init",
    "discretize",
    "discretize_bilinear",
    "discretize_zoh",
    "discretize_diagonal_zoh",
    "discretize_diagonal_bilinear",
    # lssl
    "init_lssl",
    "init_lssl_state",
    "discretize_lssl",
    "lssl_kernel",
    "lssl_ssm",
    "lssl_step",
    # diagonal
    "init_diagonal_ssm",
    "init_diagonal_ssm_state",
    "discretize_diagonal_ssm",
    "diagonal_ssm",
    "diagonal_ssm_step",
    "diagonal_ssm_kernel",
    # mamba
    "MambaConfig",
    "init_mamba",
    "init_mamba_state",
    "selective_scan",
    "mamba_step",
    # companion
    "init_companion",
    "init_companion_state",
    "companion_matrix",
    "companion_kernel",
    "companion_ssm",
    "companion_step",
    "companion_closed_loop",
    "companion_forecast",
    "companion_loss",
    "differencing_kernel",
    "moving_average_residual_kernel",
    "fir_companion",
    "preprocessing_kernels",
    "preprocess",
]
