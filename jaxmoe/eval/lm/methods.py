"""Inference-time methods as options of the evaluation: what each changes and how.

===========================  ===================================================================
``contrastive="scmoe"``      SCMoE self-contrast: strong top-k routing against one expert at
                             ``weak_rank`` (``beta``, ``alpha``; :mod:`jaxmoe.decode.contrastive`)
``disable_experts``,         MoTE masks: ``"L:E,..."`` pairs switched off / forced on
``force_experts``            (:mod:`jaxmoe.decode.steering`)
``expert_profile`` +         MoTE masks from a profile (``jaxmoe experts profile --out``): switch
``disable_top``              off the ``disable_top`` experts most specific to ``profile_set``
``remix``                    C3PO: re-mix the critical layers' routing of each question's last
                             token from its neighbours in a reference file (``remix_method``
                             kr | mode | ngd; :mod:`jaxmoe.decode.remix`)
``top_p_threshold``          dynamic top-p routing at inference: the threshold of a ``topp``
                             model, or top-p routing instead of top-k for a ``topk`` model
``experts_per_token``        experts per token at inference (top-k); for ``topp`` the per-token cap
===========================  ===================================================================

:func:`setup_config` turns a :class:`Method` into the model config and masks of a
:class:`~jaxmoe.eval.lm.scoring.Setup`; the C3PO reference set is built by the runner
(it needs the model's own answers).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

from jaxmoe.errors import UserError
from jaxmoe.models.lm import LMConfig
from jaxmoe.moe.routers import get_router
from jaxmoe.moe.routers.topp import TopPOptions

REMIX_METHODS = {"kr": "kernel", "kernel": "kernel", "mode": "mode", "ngd": "ngd"}


@dataclasses.dataclass(frozen=True)
class Method:
    """The inference-time options of one evaluation (all off: the model as trained)."""

    contrastive: Optional[str] = None  # "scmoe"
    beta: float = 0.5
    alpha: float = 0.1
    weak_rank: int = 2
    disable_experts: Optional[str] = None
    force_experts: Optional[str] = None
    expert_profile: Optional[str] = None
    disable_top: int = 0
    profile_set: str = "a"
    remix: Optional[str] = None  # reference file
    remix_method: str = "ngd"
    remix_embedding: str = "hidden"  # "hidden" (pooled final hidden states) | "tokens"
    remix_neighbours: int = 3
    remix_steps: int = 10
    remix_critical_layers: Optional[tuple[int, ...]] = None
    remix_core_experts: Optional[int] = None
    remix_all_references: bool = False  # False: only reference examples the model solves
    embeddings: Optional[str] = None  # .npy: reference rows, then the inputs' rows (or .npz)
    top_p_threshold: Optional[float] = None
    experts_per_token: Optional[int] = None

    def is_base(self) -> bool:
        return self.label() == "base"

    def label(self) -> str:
        """A short name: ``base``, ``scmoe(b=0.5,a=0.1,r=2)``, ``disable(1:3,2:0)``, ..."""
        parts = []
        if self.experts_per_token is not None:
            parts.append(f"k={self.experts_per_token}")
        if self.top_p_threshold is not None:
            parts.append(f"top_p={self.top_p_threshold:g}")
        if self.contrastive:
            parts.append(f"{self.contrastive}(b={self.beta:g},a={self.alpha:g},r={self.weak_rank})")
        if self.expert_profile and self.disable_top:
            parts.append(f"mote(top{self.disable_top}:{self.profile_set})")
        if self.disable_experts:
            parts.append(f"disable({self.disable_experts})")
        if self.force_experts:
            parts.append(f"force({self.force_experts})")
        if self.remix:
            parts.append(f"c3po({REMIX_METHODS.get(self.remix_method, self.remix_method)})")
        return "+".join(parts) or "base"

    def describe(self) -> dict:
        """The options that are set (JSON)."""
        base = Method()
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(base, f.name)}

    def validate(self) -> None:
        if self.contrastive not in (None, "scmoe"):
            raise UserError(f"--contrastive {self.contrastive!r} is not a method; choose scmoe.")
        if self.remix and self.remix_method not in REMIX_METHODS:
            raise UserError(f"--remix-method {self.remix_method!r} is not valid; choose kr, mode or ngd.")
        if self.remix and (self.contrastive or self.disable_experts or self.force_experts or self.expert_profile):
            raise UserError("--remix combines with --top-p-threshold and --experts-per-token, not with "
                            "--contrastive or expert masks; run them separately.")
        if self.disable_top and not self.expert_profile:
            raise UserError("--disable-top needs --expert-profile (a ranking written by `jaxmoe experts profile`).")
        if self.expert_profile and self.disable_top < 1:
            raise UserError("--expert-profile needs --disable-top N (N >= 1 experts to switch off).")
        if self.profile_set not in ("a", "b"):
            raise UserError(f"--profile-set {self.profile_set!r} must be a or b.")
        if self.embeddings and not self.remix:
            raise UserError("--embeddings are the neighbourhoods of --remix; give --remix REFERENCE.jsonl too.")
        if self.top_p_threshold is not None and not 0.0 < self.top_p_threshold <= 1.0:
            raise UserError(f"--top-p-threshold={self.top_p_threshold} must be in (0, 1].")
        if self.experts_per_token is not None and self.experts_per_token < 1:
            raise UserError(f"--experts-per-token={self.experts_per_token} must be at least 1.")


def setup_config(cfg: LMConfig, method: Method) -> LMConfig:
    """The model config the evaluation runs: the dropless dispatch, the router's decoding
    behaviour (THOR's inference draw), then the method's experts per token / top-p."""
    moe = cfg.moe
    router = get_router(moe.router)
    moe = dataclasses.replace(router.decode_config(moe), dispatch="dropless")
    if method.top_p_threshold is not None:
        if moe.router == "topp":
            moe = dataclasses.replace(moe, router_options=dataclasses.replace(moe.router_options,
                                                                              top_p=method.top_p_threshold))
        elif moe.router == "topk" and moe.score_func == "softmax" and moe.num_groups == 1 and \
                not moe.selection_bias and not moe.num_compressed_experts:
            moe = dataclasses.replace(moe, router="topp", router_options=TopPOptions(top_p=method.top_p_threshold))
        else:
            why = " with sigmoid scores, group limits, a selection bias or compressed experts" \
                if moe.router == "topk" else ""
            raise UserError(f"--top-p-threshold needs a topp model or a plain softmax top-k model; this model uses "
                            f"router {moe.router!r}{why}.")
    if method.experts_per_token is not None:
        k = method.experts_per_token
        if moe.router == "thor":
            raise UserError("--experts-per-token does not apply to THOR (one random expert per layer).")
        if not k <= moe.num_experts:
            raise UserError(f"--experts-per-token={k} is more than the model's {moe.num_experts} experts.")
        if moe.router == "topp":
            moe = dataclasses.replace(moe, router_options=dataclasses.replace(moe.router_options,
                                                                              max_experts_per_token=k))
        else:
            if moe.num_compressed_experts >= k:
                raise UserError(f"--experts-per-token={k} leaves no computed expert next to the model's "
                                f"{moe.num_compressed_experts} compressed ones.")
            if moe.num_groups > 1 and moe.topk_groups * (moe.num_experts // moe.num_groups) < k:
                raise UserError(f"--experts-per-token={k} is more than the model's top groups hold.")
            moe = dataclasses.replace(moe, experts_per_token=k)
    return dataclasses.replace(cfg, moe=moe)


def expert_masks(cfg: LMConfig, method: Method):
    """``(expert_mask, force_mask)`` of the method (None where nothing is set)."""
    from jaxmoe.decode import steering

    disable = method.disable_experts or ""
    if method.expert_profile:
        p = Path(method.expert_profile)
        if not p.is_file():
            raise FileNotFoundError(f"expert profile '{p}' does not exist.")
        try:
            profile = json.loads(p.read_text())
            ranked = steering.top_experts(profile, method.disable_top, method.profile_set)
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{p} is not an expert profile (write one with `jaxmoe experts profile --out`).") from None
        disable = ",".join(x for x in (disable, ranked) if x)
    if not disable and not method.force_experts:
        return None, None
    try:
        return steering.router_masks(cfg, disable or None, method.force_experts)
    except ValueError as e:
        raise UserError(str(e)) from None
