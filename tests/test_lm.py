"""The model class (optiml_jax/models/lm.py): training loss, scoring and prediction agree with each other."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from optiml_jax import decoding
from optiml_jax.models.configs import OPTConfig
from optiml_jax.models.lm import CausalLM
from optiml_jax.models.opt import OPTForCausalLM

PAD, EOS = 1, 2


@pytest.fixture(scope="module")
def net_and_params():
    config = OPTConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
                       max_position_embeddings=64, dropout=0.0)
    net = OPTForCausalLM(config)
    params = net.init(jax.random.PRNGKey(0), jnp.ones((1, 8), jnp.int32), deterministic=True)["params"]
    return net, params


def _rows(seed=0):
    rng = np.random.default_rng(seed)
    lengths = [12, 7, 16]
    return [[EOS] + rng.integers(3, 96, size=n - 1).tolist() for n in lengths]


@pytest.mark.parametrize("chunk", [0, 8])
def test_loss_equals_negative_score(net_and_params, chunk):
    """The trainer's loss of a row is minus the log-likelihood `score` gives its tokens: one computation of the
    LM head, chunked or not, behind both."""
    net, params = net_and_params
    lm = CausalLM(net, ce_chunk_tokens=chunk)
    rows = _rows()
    tok, seg, pos = decoding.left_pad(rows, pad_id=PAD)
    mask = (seg > 0).astype(np.float32)
    scores = jax.jit(lm.score)(params, tok, seg, pos, mask)
    # The same rows as trainer features, right-padded: targets are the next tokens, weighted where real.
    length = tok.shape[1]
    feats = {k: np.zeros((len(rows), length), np.int32) for k in
             ("decoder_input_tokens", "decoder_target_tokens", "decoder_segment_ids", "decoder_positions")}
    weights = np.zeros((len(rows), length), np.float32)
    for r, ids in enumerate(rows):
        n = len(ids)
        feats["decoder_input_tokens"][r, : n - 1] = ids[:-1]
        feats["decoder_target_tokens"][r, : n - 1] = ids[1:]
        feats["decoder_segment_ids"][r, : n - 1] = 1
        feats["decoder_positions"][r, : n - 1] = np.arange(n - 1)
        weights[r, : n - 1] = 1.0
    feats["decoder_loss_weights"] = weights
    loss_sum, w_sum = jax.jit(lm.loss)(params, feats)
    assert float(w_sum) == sum(len(r) - 1 for r in rows)
    # Column j of `score` scores token j + 1; the loss has no target for a row's BOS, so keep the columns of
    # the tokens after it (a padded row's mask also flags the column scoring its BOS after padding).
    real = np.zeros_like(mask[:, 1:])
    for r, ids in enumerate(rows):
        real[r, length - len(ids):] = 1.0
    np.testing.assert_allclose(-float(np.sum(np.asarray(scores) * real)), float(loss_sum), rtol=1e-5)


def test_score_continuations_equals_full_score(net_and_params):
    net, params = net_and_params
    lm = CausalLM(net)
    prompts = [r[:6] for r in _rows(1)]
    conts = [[5, 9, 11], [7], [13, 4]]
    tok, seg, pos = decoding.left_pad(prompts, pad_id=PAD)
    c_tok = np.full((3, 3), PAD, np.int32)
    c_mask = np.zeros((3, 3), np.float32)
    for r, c in enumerate(conts):
        c_tok[r, : len(c)], c_mask[r, : len(c)] = c, 1.0
    cached = np.asarray(jax.jit(lm.score_continuations)(params, tok, seg, pos, np.arange(3, dtype=np.int32),
                                                      c_tok, c_mask))
    for r, c in enumerate(conts):
        t, s, p = decoding.left_pad([prompts[r] + c], pad_id=PAD)
        full = np.asarray(lm.score(params, t, s, p, np.ones_like(t, np.float32)))[0, -len(c):]
        np.testing.assert_allclose(cached[r, : len(c)], full, atol=1e-5)
        assert np.all(cached[r, len(c):] == 0)


def test_predict_is_what_generate_returns(net_and_params):
    net, params = net_and_params
    lm = CausalLM(net)
    cfg = decoding.DecodeConfig(max_new_tokens=5)
    tok, seg, pos = decoding.left_pad([r[:5] for r in _rows(2)], pad_id=PAD)
    out, lengths, _ = jax.jit(lambda *a: lm.predict(*a, cfg=cfg, eos_id=EOS, pad_id=PAD))(
        params, tok, seg, pos, jax.random.PRNGKey(0), np.full((3,), 5, np.int32))
    ref = decoding.generate(net, params, tok, seg, pos, cfg, eos_id=EOS, pad_id=PAD)
    np.testing.assert_array_equal(np.asarray(out), ref.tokens)
    np.testing.assert_array_equal(np.asarray(lengths), ref.lengths)
