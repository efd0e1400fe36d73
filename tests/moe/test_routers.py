"""Routers as plug-ins: the registry, each router through it, RouterInputs, options and old config keys."""

import ast
import dataclasses
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from jaxmoe.config import ConfigError, dump_config, load_config, to_dict
from jaxmoe.config_legacy import LegacyModelConfig, LegacyMoEConfig
from jaxmoe.moe.config import MoEConfig
from jaxmoe.moe.layer import init_moe, moe
from jaxmoe.moe.routers import (Router, RouterInputs, RouterOptions, Routing, get_router, register, route,
                                router_names)
from jaxmoe.moe.routers import centroid, readme, topk
from jaxmoe.moe.routers.moex import MoEXOptions
from jaxmoe.moe.routers.readme import ReadMeOptions
from jaxmoe.moe.routers.thor import ThorOptions
from jaxmoe.moe.routers.topp import TopPOptions
from jaxmoe.nn.init import unbox

ROOT = Path(__file__).resolve().parents[2]
T, D, N = 6, 8, 4
NAMES = ("topk", "topp", "thor", "readme", "moex", "centroid")


def _layer(name, seed=0, **moe_fields):
    cfg = MoEConfig(num_experts=N, experts_per_token=2, expert_ffn_dim=4, router=name, **moe_fields)
    params = unbox(init_moe(jax.random.PRNGKey(seed), D, cfg, std=0.5))
    x = jnp.asarray(np.random.default_rng(seed).standard_normal((2, T // 2, D)), jnp.float32)
    return cfg, params, x


def test_registry_names_every_router_and_refuses_unknown_names_in_one_sentence():
    assert set(NAMES) <= set(router_names())
    for name in NAMES:
        r = get_router(name)
        assert isinstance(r, Router) and r.name == name and issubclass(r.Options, RouterOptions)
        assert get_router(name) is r  # one object per name
    with pytest.raises(ConfigError) as e:
        get_router("top_p")
    msg = str(e.value)
    assert "\n" not in msg and "'top_p'" in msg and all(n in msg for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_each_router_through_the_registry(name):
    """Every router makes its params and routes a layer's tokens through the same entry point."""
    cfg, params, x = _layer(name)
    router = get_router(name)
    inputs = RouterInputs()
    if router.has_pregate:
        inputs = RouterInputs(pregate_logits=jnp.asarray(np.random.default_rng(1).standard_normal((T, N)), jnp.float32))
    routing = router.route_layer(params, x.reshape(T, D), cfg, inputs, (2, T // 2))
    assert isinstance(routing, Routing)
    k = routing.expert_ids.shape[1]
    assert routing.expert_ids.shape == routing.weights.shape == (T, k) and routing.probs.shape == (T, N)
    assert ((np.asarray(routing.expert_ids) >= 0) & (np.asarray(routing.expert_ids) < N)).all()
    assert k == {"thor": 1, "topp": N}.get(name, cfg.experts_per_token)
    assert (routing.valid is not None) == router.variable_experts
    # the layer runs the same router (and adds the router's own losses to aux_loss)
    y, aux = jax.jit(moe, static_argnames="cfg")(params, x, cfg, inputs=inputs)
    assert y.shape == x.shape and np.isfinite(np.asarray(y)).all()
    np.testing.assert_array_equal(np.asarray(aux["expert_ids"]), np.asarray(routing.expert_ids))
    assert set(router.loss_names) <= set(aux)
    # params: a learned kernel, none (random / pre-gated), or centroids
    want = {"kernel"} if router.learned_kernel else set()
    assert set(params["router"]) == ({"centroids"} if name == "centroid" else want)


def test_router_hooks_are_where_the_model_finds_them():
    assert [n for n in NAMES if get_router(n).objective is not None] == ["thor"]
    assert [n for n in NAMES if get_router(n).has_pregate] == ["readme"]
    assert [n for n in NAMES if get_router(n).ranked] == ["topk", "readme", "moex"]
    assert get_router("topp").loss_names == ("dynamic_loss",)
    moe_cfg = MoEConfig(num_experts=6, experts_per_token=2)
    assert get_router("topk").experts_used(moe_cfg) == (2, 2)
    # top-p: at most 2 x experts_per_token by default (the slots per token), all with cap 0
    topp_cfg = dataclasses.replace(moe_cfg, router="topp", router_options=TopPOptions())
    assert get_router("topp").experts_used(topp_cfg) == (2, 4)
    no_cap = dataclasses.replace(topp_cfg, router_options=TopPOptions(max_experts_per_token=0))
    assert get_router("topp").experts_used(no_cap) == (2, 6)
    assert get_router("thor").experts_used(dataclasses.replace(moe_cfg, router="thor")) == (1, 1)
    assert get_router("topk").decode_rng(jax.random.PRNGKey(0), 3, moe_cfg) is None
    assert get_router("topk").decode_config(moe_cfg) is moe_cfg


def test_centroid_router_is_moirais_gating():
    from jaxmoe.models import moirai_moe

    assert moirai_moe.centroid_routing is centroid.centroid_routing  # moirai routes through the centroid module
    cfg, params, x = _layer("centroid", router_options=centroid.CentroidOptions(nearest=True))
    xt = x.reshape(T, D)
    got = route(params["router"], xt, cfg)
    want = centroid.centroid_routing(xt, params["router"]["centroids"], 2, nearest=True)
    np.testing.assert_array_equal(np.asarray(got.expert_ids), np.asarray(want.expert_ids))
    d = np.linalg.norm(np.asarray(xt)[:, None] - np.asarray(params["router"]["centroids"])[None], axis=-1)
    np.testing.assert_array_equal(np.sort(np.asarray(got.expert_ids), -1), np.sort(np.argsort(d, -1)[:, :2], -1))


def test_a_misspelled_router_keyword_is_an_error():
    cfg, params, x = _layer("topk")
    xt = x.reshape(T, D)
    with pytest.raises(TypeError, match="expert_msk"):
        topk.route(params["router"], xt, cfg, expert_msk=jnp.ones(N, bool))
    with pytest.raises(TypeError, match="expert_msk"):
        route(params["router"], xt, cfg, expert_msk=jnp.ones(N, bool))
    with pytest.raises(TypeError, match="rank_select"):  # thor has no ranks
        get_router("thor").route({}, xt, dataclasses.replace(cfg, router="thor"), rank_select=1)
    # an input the router does not take is refused in one sentence naming the routers that take it
    tcfg, tparams, _ = _layer("topp")
    with pytest.raises(ValueError) as e:
        moe(tparams, x, tcfg, inputs=RouterInputs(rank_select=1))
    assert str(e.value) == "the topp router does not take rank_select; use router topk, readme, moex."
    with pytest.raises(ValueError, match="the topk router does not take pregate_logits; use router readme"):
        moe(params, x, cfg, inputs=RouterInputs(pregate_logits=jnp.zeros((T, N))))


def test_router_inputs_stack_slice_and_join():
    L, b, s = 4, 2, 3
    rng = np.random.default_rng(0)
    em = jnp.asarray(rng.random((L, N)) > 0.3)
    ov = jnp.asarray(rng.standard_normal((L, b, s, N)), jnp.float32)
    om = jnp.asarray(rng.random((L, b, s)) > 0.5)
    pl = jnp.asarray(rng.standard_normal((b, s, N)), jnp.float32)
    key = jax.random.PRNGKey(7)
    model = RouterInputs(expert_mask=em, rng=key, weight_override=ov, override_mask=om, pregate_logits=pl,
                         rank_select=1, return_probs=True)
    stacked = model.stack(L, b * s)
    assert stacked.weight_override.shape == (L, b * s, N) and stacked.override_mask.shape == (L, b * s)
    assert stacked.pregate_logits.shape == (b * s, N) and stacked.force_mask is None
    np.testing.assert_array_equal(np.asarray(stacked.rng), np.asarray(jax.random.split(key, L)))
    rows = stacked.take_layers([1, 3])
    np.testing.assert_array_equal(np.asarray(rows.expert_mask), np.asarray(em)[[1, 3]])
    np.testing.assert_array_equal(np.asarray(rows.weight_override), np.asarray(ov).reshape(L, b * s, N)[[1, 3]])
    np.testing.assert_array_equal(np.asarray(rows.rng[1]), np.asarray(jax.random.split(key, L)[3]))
    assert rows.pregate_logits is None and (rows.rank_select, rows.return_probs) == (1, True)  # statics stay
    # what a layer scan slices: every leaf has the layer axis; the shared fields come back with join
    assert all(leaf.shape[0] == 2 for leaf in jax.tree.leaves(rows))
    one = jax.tree.map(lambda a: a[0], rows).join(stacked)
    assert one.pregate_logits is stacked.pregate_logits and one.expert_mask.shape == (N,)
    assert set(one.given()) == {"expert_mask", "rng", "weight_override", "override_mask", "pregate_logits",
                                "rank_select"}
    # a pytree with static fields: jit keys its program on rank_select / return_probs
    f = jax.jit(lambda i: (i.rank_select, jax.tree.map(lambda a: a.sum(), i.expert_mask)))
    assert f(RouterInputs(expert_mask=em, rank_select=2))[0] == 2


def test_options_classes_validate_themselves():
    with pytest.raises(ConfigError, match="router_options.top_p=1.5"):
        MoEConfig(router="topp", router_options=TopPOptions(top_p=1.5)).validate(2)
    with pytest.raises(ConfigError, match="max_experts_per_token=9"):
        MoEConfig(router="topp", router_options=TopPOptions(max_experts_per_token=9)).validate(2)
    with pytest.raises(ConfigError, match="draw='bogus'"):
        MoEConfig(router="thor", router_options=ThorOptions(draw="bogus")).validate(2)
    with pytest.raises(ConfigError, match="heads=3"):
        MoEConfig(router="readme", router_options=ReadMeOptions(dim=64, heads=3)).validate(2)
    with pytest.raises(ConfigError, match="ranks its top-k experts \\(topk, readme, moex\\)"):
        MoEConfig(router="topp", experts_per_token=3, num_compressed_experts=1).validate(2)
    with pytest.raises(ConfigError, match="'nope' is not valid; choose one of topk, topp"):
        MoEConfig(router="nope").validate(2)


def test_options_follow_the_router():
    assert MoEConfig().router_options == RouterOptions()
    assert MoEConfig(router="topp").router_options == TopPOptions()
    thor = dataclasses.replace(MoEConfig(), router="thor")  # the defaults of topk carry nothing: thor's defaults
    assert thor.router_options == ThorOptions()
    hash(MoEConfig(router="moex", router_options=MoEXOptions(sparsity_coef=2.0)))  # a static jit argument
    with pytest.raises(ConfigError, match="not the ThorOptions"):
        dataclasses.replace(MoEConfig(router="topp", router_options=TopPOptions(top_p=0.5)), router="thor")


def test_new_keys_round_trip_and_errors_name_the_owner(tmp_path):
    cfg = load_config(ROOT / "configs/lm_tiny_thor.yaml", ["model.moe.router_options.draw=token"])
    assert cfg.model.moe.router_options == ThorOptions(draw="token")
    p = tmp_path / "again.yaml"
    p.write_text(dump_config(cfg))
    assert "router_options:\n      consistency_coef: 1.0\n      draw: token" in p.read_text()
    assert load_config(p) == cfg
    # overrides apply in any order: the router may come after its options
    a = load_config(ROOT / "configs/lm_tiny.yaml", ["model.moe.router_options.top_p=0.6", "model.moe.router=topp"])
    assert a.model.moe.router_options == TopPOptions(top_p=0.6)
    with pytest.raises(ConfigError, match="'model.moe.router_options.top_p' \\(it is an option of router topp\\)"):
        load_config(ROOT / "configs/lm_tiny.yaml", ["model.moe.router_options.top_p=0.6"])
    with pytest.raises(ConfigError, match="did you mean 'top_p'"):
        load_config(ROOT / "configs/lm_tiny_topp.yaml", ["model.moe.router_options.top_pp=0.6"])


# the moe sections of configs/lm_tiny_{topp,thor,readme,moex}.yaml before router_options
OLD_VARIANTS = {
    "lm_tiny_topp": "router: topp\ntop_p: 0.4\nmax_experts_per_token: 0\nbalance_loss: switch\n"
                    "dynamic_loss_coef: 0.0001\nz_loss_coef: 0.0\n",
    "lm_tiny_thor": "router: thor\nnum_experts: 4\nexperts_per_token: 1\nexpert_ffn_dim: 256\nnum_shared_experts: 0\n"
                    "shared_ffn_dim: 0\nbalance_loss: none\nz_loss_coef: 0.0\nthor_consistency_coef: 1.0\n"
                    "thor_draw: batch\nthor_inference: token\n",
    "lm_tiny_readme": "router: readme\nexperts_per_token: 1\nz_loss_coef: 0.0\nreadme_dim: 64\nreadme_layers: 2\n"
                      "readme_heads: 4\n",
    "lm_tiny_moex": "router: moex\nexpert_activation: relu\nmoex_sparsity_coef: 1.0\nnum_shared_experts: 0\n"
                    "shared_ffn_dim: 0\nz_loss_coef: 0.0\n",
}


@pytest.mark.parametrize("name", sorted(OLD_VARIANTS))
def test_old_flat_router_keys_load_to_the_same_config(tmp_path, name):
    moe_section = yaml.safe_load(OLD_VARIANTS[name])
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump({"base": "lm_tiny.yaml", "model": {"moe": moe_section},
                                 "train": {"output_dir": f"runs/{name}"}}))
    assert load_config(p) == load_config(ROOT / f"configs/{name}.yaml")


def test_old_run_dir_with_every_flat_key_loads():
    """A run directory written before router_options holds every old field; the router's keys
    become its options, the other routers' keys (which never had an effect) are dropped."""
    new = load_config(ROOT / "configs/lm_tiny_thor.yaml", ["model.moe.router_options.draw=sequence"])
    old = to_dict(new)
    moe_fields = {k: v for k, v in old["model"]["moe"].items() if k != "router_options"}
    old["model"] = {**to_dict(LegacyModelConfig()), **{k: v for k, v in old["model"].items() if k != "moe"}}
    old["model"]["moe"] = {**to_dict(LegacyMoEConfig()), **moe_fields, "thor_draw": "sequence", "top_p": 0.7}
    assert "router_options" not in old["model"]["moe"] and old["model"]["moe"]["readme_dim"] == 64
    from jaxmoe.config import from_dict

    assert from_dict(old) == new


def test_old_dotted_keys_are_translated():
    cfg = load_config(ROOT / "configs/lm_tiny_topp.yaml", ["model.moe.top_p=0.5", "model.moe.max_experts_per_token=3"])
    assert cfg.model.moe.router_options == TopPOptions(top_p=0.5, max_experts_per_token=3)
    cfg = load_config(ROOT / "configs/lm_tiny_readme.yaml", ["model.moe.readme_heads=2"])
    assert cfg.model.moe.router_options == ReadMeOptions(heads=2)
    cfg = load_config(ROOT / "configs/lm_tiny.yaml", ["model.moe.thor_draw=token", "model.moe.router=thor"])
    assert cfg.model.moe.router_options == ThorOptions(draw="token")
    # a flat key of another router never had an effect: it still has none
    plain = load_config(ROOT / "configs/lm_tiny.yaml")
    assert load_config(ROOT / "configs/lm_tiny.yaml", ["model.moe.top_p=0.5"]) == plain


def test_register_a_router_from_outside():
    class Lowest(topk.TopKRouter):  # routes to the experts with the *lowest* logits
        name = "lowest"

        @staticmethod
        def route(params, x, cfg, *, expert_mask=None):
            return topk.route(params, x, cfg, expert_mask=expert_mask, logits=-(x @ params["kernel"]))

    register("lowest", Lowest())
    try:
        cfg, params, x = _layer("lowest")
        cfg.validate(2)
        _, aux = moe(params, x, cfg)
        logits = np.asarray(x.reshape(T, D) @ params["router"]["kernel"])
        lowest = np.sort(np.argsort(logits, -1)[:, :2], -1)
        np.testing.assert_array_equal(np.sort(np.asarray(aux["expert_ids"]), -1), lowest)
        assert get_router("lowest").inputs == {"expert_mask"}
    finally:
        from jaxmoe.moe import routers

        routers._REGISTRY.pop("lowest")


def test_model_and_layer_name_no_router_and_the_import_cycle_is_gone():
    pattern = re.compile(r"\b(" + "|".join(NAMES) + r")\b", re.IGNORECASE)
    for path in ("jaxmoe/models/lm.py", "jaxmoe/moe/layer.py"):
        text = (ROOT / path).read_text()
        assert not pattern.search(text), (path, pattern.search(text))
        assert not re.search(r"router\s*(==|!=)|router (not )?in [(\[]", text), path

    def imports(path):
        tree = ast.parse((ROOT / path).read_text())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}

    assert "jaxmoe.models.lm" not in imports("jaxmoe/models/hybrid.py")
    assert not (ROOT / "jaxmoe/models/thor.py").exists()
    for path in (ROOT / "jaxmoe/moe").rglob("*.py"):  # moe knows no model
        assert not any(m.startswith("jaxmoe.models") for m in imports(path.relative_to(ROOT))), path
    assert readme.ReadMeRouter.has_pregate
