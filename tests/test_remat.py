"""Rematerialisation policies (OPTConfig.remat): same losses and gradients for every policy, less memory."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optiml_jax import losses, partitioning, trainer
from optiml_jax.errors import UserError
from optiml_jax.models.configs import REMAT_POLICIES, OPTConfig, get_config, model_config
from optiml_jax.models.opt import OPTForCausalLM

SEQ, BATCH = 32, 2


@pytest.fixture(scope="module")
def setup():
    cfg = get_config("tiny").replace(vocab_size=256, dropout=0.1, max_position_embeddings=64)
    rng = np.random.default_rng(0)
    ids = rng.integers(4, 256, size=(BATCH, SEQ + 1)).astype(np.int32)
    seg = np.ones((BATCH, SEQ), np.int32)
    seg[1, SEQ // 2:] = 2  # a packed row
    seg[0, -4:] = 0        # padding
    pos = np.concatenate([np.arange(SEQ)[None], np.concatenate([np.arange(SEQ // 2)] * 2)[None]]).astype(np.int32)
    pos[0, -4:] = 0
    batch = {"decoder_input_tokens": ids[:, :-1], "decoder_target_tokens": ids[:, 1:],
             "decoder_loss_weights": (seg > 0).astype(np.float32), "decoder_segment_ids": seg,
             "decoder_positions": pos}
    params = OPTForCausalLM(cfg).init_params(jax.random.PRNGKey(0))
    return cfg, batch, params


def grad_fn(cfg, batch, policy):
    model = OPTForCausalLM(cfg.replace(remat=policy))
    b = {k: jnp.asarray(v) for k, v in batch.items()}

    def f(p):  # dropout on: remat must replay the same masks in its recomputation
        h, w = model.apply({"params": p}, b["decoder_input_tokens"], segment_ids=b["decoder_segment_ids"],
                           positions=b["decoder_positions"], deterministic=False,
                           rngs={"dropout": jax.random.PRNGKey(1)}, return_hidden=True)
        s, n = losses.cross_entropy_sums(h, w, b["decoder_target_tokens"], b["decoder_loss_weights"],
                                         chunk_tokens=16)
        return s / n

    return jax.jit(jax.value_and_grad(f))


def test_every_policy_gives_identical_loss_and_gradients(setup):
    cfg, batch, params = setup
    ref_loss, ref_grads = grad_fn(cfg, batch, "none")(params)
    for policy in REMAT_POLICIES[1:]:
        loss, grads = grad_fn(cfg, batch, policy)(params)
        assert float(loss) == pytest.approx(float(ref_loss), abs=1e-6), policy
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, err_msg=policy)


def test_policies_recompute_what_they_name(setup):
    """The program JAX hands to XLA recomputes, per layer: nothing ("none"), all 7 matmuls the backward pass
    needs ("full"), only the 2 attention einsums with batch dimensions ("dots_with_no_batch_dims_saveable"),
    no matmul ("dots_saveable"). Counted in the lowered StableHLO: XLA's CPU backend drops the optimisation
    barriers and merges the recomputation back into the forward (its compiled memory is the same for every
    policy), so the memory effect shows only on GPU/TPU (bench/gpu.sh)."""
    cfg, batch, _ = setup
    abstract = jax.eval_shape(lambda: OPTForCausalLM(cfg).init_params(jax.random.PRNGKey(0)))
    text = {p: grad_fn(cfg, batch, p).lower(abstract).as_text() for p in REMAT_POLICIES}
    dots = {p: t.count("stablehlo.dot_general") for p, t in text.items()}
    n = cfg.num_hidden_layers
    assert dots["full"] - dots["none"] == 7 * n
    assert dots["dots_with_no_batch_dims_saveable"] - dots["none"] == 2 * n
    assert dots["dots_saveable"] == dots["none"]
    assert text["none"].count("optimization_barrier") == 0
    assert all(text[p].count("optimization_barrier") == n for p in REMAT_POLICIES[1:])


@pytest.mark.slow
def test_trainer_takes_the_policy_from_the_model_config(setup):
    cfg, batch, _ = setup
    mesh = partitioning.create_mesh({"data": 1}, jax.devices()[:1])
    tcfg = trainer.TrainerConfig(optimizer=trainer.OptimizerConfig(learning_rate=1e-3, warmup_steps=0,
                                                                   total_steps=10), seed=0)
    out = {}
    for policy in ("none", "full"):
        t = trainer.Trainer(OPTForCausalLM(cfg.replace(remat=policy)), tcfg, mesh,
                            partitioning.DEFAULT_LOGICAL_AXIS_RULES, global_batch_size=BATCH, seq_len=SEQ)
        _, m = t.train_step(t.init_state(), batch)
        out[policy] = (float(m["loss"]), float(m["grad_norm"]))
    np.testing.assert_allclose(out["full"], out["none"], rtol=1e-6)


def test_policy_names_are_validated_and_old_bools_mapped():
    assert OPTConfig(remat=True).remat == "full" and OPTConfig(remat=False).remat == "none"
    # A checkpoint's config.json from before the policies (remat: true) still loads.
    old = {**OPTConfig().to_dict(), "remat": True}
    assert OPTConfig.from_dict(old).remat == "full"
    for name in REMAT_POLICIES:
        assert OPTConfig(remat=name).remat == name
    with pytest.raises(ValueError, match="OPTConfig.remat must be one of"):
        OPTConfig(remat="minimal")
    with pytest.raises(UserError, match=r"remat must be one of .*'dots_saveable'"):
        model_config("tiny", remat="dots")
    assert dataclasses.replace(get_config("tiny"), remat="dots_saveable").remat == "dots_saveable"
