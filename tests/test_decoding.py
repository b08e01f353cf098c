"""Decoding (optiml_jax/decoding.py) against Hugging Face `generate` on a converted tiny random OPT."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from optiml_jax import decoding, partitioning
from optiml_jax.models.hf_io import load_hf_checkpoint
from optiml_jax.models.opt import OPTForCausalLM

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from hf_reference import gpt2_tokenize, make_tiny_hf_model, real_texts  # noqa: E402

EOS, PAD, BOS = 2, 1, 2
NEW = 10


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("decoding")
    hf = make_tiny_hf_model("preln", seed=3)
    hf.save_pretrained(tmp / "hf", safe_serialization=True)
    config, params = load_hf_checkpoint(tmp / "hf")
    return hf, OPTForCausalLM(config), params


@pytest.fixture(scope="module")
def prompts(real_data_dir, tmp_path_factory):
    texts = real_texts(real_data_dir, n=3)
    ids = gpt2_tokenize(texts, tmp_path_factory.mktemp("tok"), max_tokens=40)
    # Different lengths so that the batch really is left-padded.
    return [[BOS] + ids[0][:9], [BOS] + ids[1][:21], [BOS] + ids[2][:4]]


def hf_generate(hf, prompts, eos_id=EOS, **kwargs):
    tok, seg, _ = decoding.left_pad(prompts, pad_id=PAD)
    with torch.no_grad():
        out = hf.generate(
            input_ids=torch.tensor(tok, dtype=torch.long), attention_mask=torch.tensor(seg, dtype=torch.long),
            max_new_tokens=NEW, do_sample=False, eos_token_id=eos_id, pad_token_id=PAD, **kwargs,
        )
    gen = out[:, tok.shape[1]:].numpy()
    return np.pad(gen, ((0, 0), (0, NEW - gen.shape[1])), constant_values=PAD)


def ours(model, params, prompts, cfg=decoding.DecodeConfig(max_new_tokens=NEW), eos_id=EOS, **kw):
    tok, seg, pos = decoding.left_pad(prompts, pad_id=PAD, length=kw.pop("length", None))
    return decoding.generate(model, params, tok, seg, pos, cfg, eos_id=eos_id, pad_id=PAD, **kw)


def hf_sequence_logprob(hf, prompt, generated):
    ids = torch.tensor([list(prompt) + list(generated)])
    with torch.no_grad():
        lp = torch.log_softmax(hf(ids).logits[0].double(), -1)
    return float(sum(lp[len(prompt) - 1 + j, t] for j, t in enumerate(generated)))


def test_left_pad_layout():
    tok, seg, pos = decoding.left_pad([[2, 7, 8], [2]], pad_id=PAD, length=4)
    np.testing.assert_array_equal(tok, [[1, 2, 7, 8], [1, 1, 1, 2]])
    np.testing.assert_array_equal(seg, [[0, 1, 1, 1], [0, 0, 0, 1]])
    np.testing.assert_array_equal(pos, [[0, 0, 1, 2], [0, 0, 0, 0]])
    with pytest.raises(ValueError, match="empty"):
        decoding.left_pad([[2], []], pad_id=PAD)
    with pytest.raises(ValueError, match="more than the length"):
        decoding.left_pad([[2, 3, 4]], pad_id=PAD, length=2)


def test_greedy_equals_hf_generate_left_padded_batch(models, prompts):
    hf, model, params = models
    expected = hf_generate(hf, prompts)
    out = ours(model, params, prompts)
    np.testing.assert_array_equal(out.tokens, expected)
    # Every row alone (no padding, other bucket length) gives the same continuation.
    for i, p in enumerate(prompts):
        np.testing.assert_array_equal(ours(model, params, [p]).tokens[0], expected[i])
    # Scores are the summed log-likelihoods of the generated tokens under the reference model.
    for i, p in enumerate(prompts):
        assert out.scores[i] == pytest.approx(hf_sequence_logprob(hf, p, expected[i]), abs=2e-3)


def test_greedy_stops_at_eos_like_hf(models, prompts):
    hf, model, params = models
    free = ours(model, params, prompts).tokens
    stop = int(free[0, 3])  # make row 0's 4th generated token the "EOS"
    expected = hf_generate(hf, prompts, eos_id=stop)
    out = ours(model, params, prompts, eos_id=stop)
    np.testing.assert_array_equal(out.tokens, expected)
    first = list(free[0]).index(stop)
    assert out.lengths[0] == first and out.tokens[0, first] == stop
    assert (out.tokens[0, first + 1:] == PAD).all()
    assert decoding.strip_generated(out.tokens[0], eos_id=stop, pad_id=PAD) == list(free[0, :first])


def test_per_row_limits_cut_the_unlimited_continuation(models, prompts):
    # A row with limit k gets exactly the first k tokens it generates without a limit; the other rows of the
    # batch are unchanged (a finished row feeds padding nobody attends to), whatever the limits of the others.
    _, model, params = models
    free = ours(model, params, prompts)
    for limits in ([3, NEW, 1], [1, 1, 1], [NEW, NEW, NEW]):
        out = ours(model, params, prompts, limits=limits)
        for i, k in enumerate(limits):
            np.testing.assert_array_equal(out.tokens[i, :k], free.tokens[i, :k])
            assert (out.tokens[i, k:] == PAD).all()
            assert out.lengths[i] == min(free.lengths[i], k)
            if k == NEW:
                assert out.scores[i] == free.scores[i]
    # Sampling: the same rule (the rng is consumed in lockstep whatever the limits).
    cfg = decoding.DecodeConfig("sample", NEW, temperature=0.9, seed=3)
    free_s = ours(model, params, prompts, cfg)
    cut = ours(model, params, prompts, cfg, limits=[2, 5, NEW])
    for i, k in enumerate([2, 5, NEW]):
        np.testing.assert_array_equal(cut.tokens[i, :k], free_s.tokens[i, :k])
    with pytest.raises(ValueError, match="limits must be one value in 1..10"):
        ours(model, params, prompts, limits=[0, 1, 1])
    with pytest.raises(ValueError, match="limits must be one value"):
        ours(model, params, prompts, limits=[1, 1])
    with pytest.raises(ValueError, match="beam search"):
        ours(model, params, prompts, decoding.DecodeConfig("beam", NEW, num_beams=2), limits=[1, 1, 1])


def test_sampling_top_k_1_is_greedy_and_seeded(models, prompts):
    _, model, params = models
    greedy = ours(model, params, prompts).tokens
    top1 = ours(model, params, prompts, decoding.DecodeConfig("sample", NEW, temperature=0.7, top_k=1, seed=5))
    np.testing.assert_array_equal(top1.tokens, greedy)
    hot = decoding.DecodeConfig("sample", NEW, temperature=2.0, seed=1)
    a, b = ours(model, params, prompts, hot).tokens, ours(model, params, prompts, hot).tokens
    np.testing.assert_array_equal(a, b)  # same seed, same sample
    c = ours(model, params, prompts, decoding.DecodeConfig("sample", NEW, temperature=2.0, seed=2)).tokens
    assert (a != c).any() and (a != greedy).any()


def test_filter_logits_top_k_and_top_p():
    logits = jnp.log(jnp.array([[0.5, 0.05, 0.3, 0.15], [0.1, 0.2, 0.3, 0.4]]))
    kept = np.asarray(decoding.filter_logits(logits, top_k=2)) > -1e8
    np.testing.assert_array_equal(kept, [[1, 0, 1, 0], [0, 0, 1, 1]])
    kept = np.asarray(decoding.filter_logits(logits, top_p=0.75)) > -1e8
    # Row 0: 0.5 then 0.3 reach 0.8 >= 0.75; row 1: 0.4 + 0.3 = 0.7 < 0.75 so 0.2 joins.
    np.testing.assert_array_equal(kept, [[1, 0, 1, 0], [0, 1, 1, 1]])
    kept = np.asarray(decoding.filter_logits(logits, top_p=0.01)) > -1e8
    np.testing.assert_array_equal(kept.sum(-1), [1, 1])


def test_beam_search(models, prompts):
    hf, model, params = models
    greedy = ours(model, params, prompts)
    one = ours(model, params, prompts, decoding.DecodeConfig("beam", NEW, num_beams=1))
    np.testing.assert_array_equal(one.tokens[:, 0], greedy.tokens)
    np.testing.assert_allclose(one.scores[:, 0], greedy.scores, atol=1e-4)

    beams = ours(model, params, prompts, decoding.DecodeConfig("beam", NEW, num_beams=3))
    assert beams.tokens.shape == (3, 3, NEW)
    assert (np.diff(beams.scores, axis=1) <= 1e-6).all(), beams.scores
    # The best beam is at least as likely as the greedy path (no EOS here, so both have NEW tokens) ...
    assert (beams.scores[:, 0] >= greedy.scores - 1e-4).all()
    for i, p in enumerate(prompts):
        seqs = {tuple(s) for s in beams.tokens[i]}
        assert len(seqs) == 3  # distinct hypotheses
        for k in range(3):  # ... and each score is the sequence's log-likelihood under the reference model
            gen = decoding.strip_generated(beams.tokens[i, k], eos_id=EOS, pad_id=PAD)
            assert beams.scores[i, k] == pytest.approx(hf_sequence_logprob(hf, p, gen), abs=2e-3)


def test_sharded_decoding_equals_unsharded(models, prompts):
    _, model, params = models
    mesh = partitioning.create_mesh({"data": 2, "fsdp": 2, "model": 2})
    rules = partitioning.DEFAULT_LOGICAL_AXIS_RULES
    _, shardings = partitioning.abstract_params_and_shardings(model.abstract_params, mesh, rules)
    sharded = jax.tree.map(jax.device_put, params, shardings)
    assert any(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated
               for x in jax.tree.leaves(sharded))
    batch = prompts + [prompts[0]]  # 4 rows: divisible by the data x fsdp = 4 batch shards
    for cfg in (decoding.DecodeConfig(max_new_tokens=NEW), decoding.DecodeConfig("beam", NEW, num_beams=2)):
        ref = ours(model, params, batch, cfg)
        got = ours(model, sharded, batch, cfg, mesh=mesh, rules=rules)
        np.testing.assert_array_equal(got.tokens, ref.tokens)
        np.testing.assert_allclose(got.scores, ref.scores, atol=1e-4)


def test_errors(models):
    _, model, params = models
    with pytest.raises(ValueError, match="max_new_tokens"):
        decoding.DecodeConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="method"):
        decoding.DecodeConfig(method="nucleus")
    with pytest.raises(ValueError, match="top_p"):
        decoding.DecodeConfig(method="sample", top_p=0.0)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        ours(model, params, [[2, 3, 4]], decoding.DecodeConfig(max_new_tokens=model.config.max_position_embeddings))
