"""OPT model: configs, parameter counts, numerical parity with HF OPTForCausalLM, masking, KV cache, sharding."""
from __future__ import annotations

import pathlib
import re

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optiml_jax.models import configs
from optiml_jax.models.configs import OPTConfig, get_config, model_config
from optiml_jax.models.hf_io import load_hf_checkpoint
from optiml_jax.models.opt import OPTForCausalLM, positions_from_mask, segment_mask, tied_embedding

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
import hf_reference  # noqa: E402  (tests/ helper; needs transformers)

REPO = pathlib.Path(__file__).resolve().parent.parent
ATOL = 1e-4

# HF `OPTForCausalLM(config).num_parameters()` for the released shapes (computed once on the meta device).
PUBLISHED_COUNTS = {
    "opt-125m": 125_239_296, "opt-350m": 331_196_416, "opt-1.3b": 1_315_758_080, "opt-2.7b": 2_651_596_800,
    "opt-6.7b": 6_658_473_984, "opt-13b": 12_853_473_280, "opt-30b": 29_974_540_288,
    "opt-66b": 65_719_701_504, "opt-175b": 174_604_468_224,
}


# ---------------------------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def token_ids(request, tmp_path_factory) -> np.ndarray:
    """[3, 24] real GPT-2 ids of SuperNI inputs (random ids when the data or tokenizer is unavailable)."""
    try:
        data_dir = request.getfixturevalue("real_data_dir")
        texts = hf_reference.real_texts(data_dir, n=8)
        ids = [x for x in hf_reference.gpt2_tokenize(texts, tmp_path_factory.mktemp("tok"), 24) if len(x) == 24]
        if len(ids) >= 3:
            return np.asarray(ids[:3], np.int32)
    except (pytest.skip.Exception, RuntimeError):
        pass
    return np.random.default_rng(0).integers(3, 50000, size=(3, 24), dtype=np.int32)


@pytest.fixture(scope="module", params=sorted(hf_reference.VARIANTS))
def pair(request, tmp_path_factory):
    """(hf_model, our_model, our_params) for one tiny variant, converted through a saved HF directory."""
    hf_dir = hf_reference.make_tiny_hf_opt(tmp_path_factory.mktemp("hf"), request.param, seed=1,
                                           with_tokenizer=False)
    hf_model = hf_reference.load_hf_model(hf_dir)
    config, params = load_hf_checkpoint(hf_dir)
    return hf_model, OPTForCausalLM(config), jax.tree.map(jnp.asarray, params)


def hf_logits(model, ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
    with torch.no_grad():
        kwargs = {} if attention_mask is None else {"attention_mask": torch.tensor(attention_mask)}
        return model(torch.tensor(ids, dtype=torch.long), **kwargs).logits.float().numpy()


def left_pad(rows: list[np.ndarray], pad_id: int = 1) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return ids, mask


# ---------------------------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PUBLISHED_COUNTS))
def test_num_params_matches_hf_for_released_shapes(name):
    config = get_config(name)
    with torch.device("meta"):  # shapes only: building opt-175b this way takes a fraction of a second
        hf = transformers.OPTForCausalLM(transformers.OPTConfig(**config.to_hf_dict()))
    assert config.num_params() == hf.num_parameters() == PUBLISHED_COUNTS[name]


def test_published_scale():
    assert get_config("opt-125m").num_params() / 1e6 == pytest.approx(125.2, abs=0.05)
    assert get_config("opt-175b").num_params() / 1e9 == pytest.approx(174.6, abs=0.05)
    assert get_config("opt-13b").ffn_dim == 20480
    c350 = get_config("opt-350m")
    assert (c350.hidden_size, c350.word_embed_proj_dim, c350.do_layer_norm_before) == (1024, 512, False)
    assert get_config("tiny-cpu").vocab_size == configs.GPT2_PADDED_VOCAB == 50264


@pytest.mark.parametrize("variant", sorted(hf_reference.VARIANTS))
def test_num_params_formula_matches_hf_and_flax_on_small_shapes(variant):
    hf = hf_reference.make_tiny_hf_model(variant)
    config = OPTConfig.from_hf_dict(hf.config.to_dict())
    flax_count = sum(x.size for x in jax.tree.leaves(OPTForCausalLM(config).abstract_params()))
    assert config.num_params() == hf.num_parameters() == flax_count


def test_flops_per_token():
    c = get_config("opt-125m")
    n_matmul = 125_239_296 - 2050 * 768  # position embeddings are a lookup, not a matmul
    assert c.flops_per_token(2048) == 6 * n_matmul + 12 * 12 * 768 * 2048
    assert c.flops_per_token(1024) < c.flops_per_token(2048)
    with pytest.raises(ValueError, match="seq_len"):
        c.flops_per_token(0)


def test_config_dict_round_trips_and_validation():
    c = get_config("tiny-postln").replace(dtype="bfloat16", remat=True)
    assert OPTConfig.from_dict(c.to_dict()) == c
    back = OPTConfig.from_hf_dict(c.to_hf_dict(), dtype="bfloat16", remat=True, name="tiny-postln")
    assert back == c
    assert OPTConfig.from_hf_dict({"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1, "ffn_dim": 16,
                                   "num_attention_heads": 2}).word_embed_proj_dim == 8
    with pytest.raises(ValueError, match="hidden_size .* divisible by num_attention_heads"):
        OPTConfig(hidden_size=10, num_attention_heads=4)
    with pytest.raises(ValueError, match="OPTConfig.dtype"):
        OPTConfig(dtype="float8")
    with pytest.raises(ValueError, match="unknown OPTConfig field"):
        c.replace(hidden=3)
    with pytest.raises(ValueError, match="OPTConfig.attention_kernel must be one of"):
        c.replace(attention_kernel="flash")
    with pytest.raises(ValueError, match="unknown model config 'opt-9b'"):
        get_config("opt-9b")
    with pytest.raises(ValueError, match="model_type"):
        OPTConfig.from_hf_dict({"model_type": "gpt2"})
    with pytest.raises(ValueError, match=r"missing field\(s\) \['ffn_dim'"):
        OPTConfig.from_hf_dict({"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1})


@pytest.mark.parametrize("gin_file", sorted((REPO / "gin" / "models").glob("*.gin")), ids=lambda p: p.stem)
def test_gin_model_files(gin_file):
    gin.clear_config()
    # `include 'models/...'` resolves against gin/ as the entry points set it up; without this the test passed
    # only after another test had left gin/ on gin's process-global search path.
    gin.add_config_file_search_path(str(REPO / "gin"))
    try:
        gin.parse_config_file(str(gin_file))
        config = model_config()
        # A file names its config, or includes the file that does and overrides fields (tiny_cpu_embedded).
        included = re.findall(r"^include 'models/(\w+)\.gin'", gin_file.read_text(), flags=re.M)
        assert config.name.replace("-", "_").replace(".", "_") in {gin_file.stem, *included}
        assert not included or config != get_config(config.name)
        gin.parse_config("model_config.dtype = 'bfloat16'")
        assert model_config().dtype == "bfloat16"
        gin.parse_config("model_config.hidden = 3")
        with pytest.raises(ValueError, match="unknown OPTConfig field"):
            model_config()
    finally:
        gin.clear_config()
    assert {p.stem for p in (REPO / "gin" / "models").glob("*.gin")} >= {
        "opt_125m", "opt_350m", "opt_1_3b", "opt_2_7b", "opt_6_7b", "opt_13b", "opt_30b", "opt_66b", "opt_175b",
        "tiny", "tiny_cpu"}


# ---------------------------------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------------------------------
def test_segment_mask_and_positions():
    seg = jnp.array([[1, 1, 2, 2, 2, 0], [0, 0, 1, 1, 1, 1]])
    idx = jnp.arange(6)
    mask = segment_mask(seg, seg, idx, idx)[:, 0]
    assert mask.shape == (2, 6, 6)
    # Packed row: token 2 starts segment 2 and must not see segment 1; padding sees only itself.
    assert mask[0, 2].tolist() == [False, False, True, False, False, False]
    assert mask[0, 4].tolist() == [False, False, True, True, True, False]
    assert mask[0, 5].tolist() == [False] * 5 + [True]
    # Left-padded row: the first real token sees only itself.
    assert mask[1, 2].tolist() == [False, False, True, False, False, False]
    assert positions_from_mask(mask[:, None]).tolist() == [[0, 1, 0, 1, 2, 0], [0, 0, 0, 1, 2, 3]]


# ---------------------------------------------------------------------------------------------------------------
# Parity with HF
# ---------------------------------------------------------------------------------------------------------------
def test_logits_match_hf(pair, token_ids):
    hf_model, model, params = pair
    ours = np.asarray(model.apply({"params": params}, jnp.asarray(token_ids)))
    ref = hf_logits(hf_model, token_ids)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert np.abs(ref).max() > 0.5  # the random model produces non-trivial logits
    np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)


def test_left_padding_matches_hf(pair, token_ids):
    hf_model, model, params = pair
    ids, mask = left_pad([token_ids[0, :24], token_ids[1, :15], token_ids[2, :7]])
    ref = hf_logits(hf_model, ids, mask)
    ours = np.asarray(model.apply({"params": params}, jnp.asarray(ids), segment_ids=jnp.asarray(mask)))
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], ref[real], atol=ATOL, rtol=0)


def test_packed_segments_equal_each_example_alone(pair, token_ids):
    _, model, params = pair
    a, b = token_ids[0, :10], token_ids[1, :9]
    packed = np.concatenate([a, b, np.ones(5, np.int32)])[None]
    segments = np.array([[1] * 10 + [2] * 9 + [0] * 5])
    out = np.asarray(model.apply({"params": params}, jnp.asarray(packed), segment_ids=jnp.asarray(segments)))
    alone_a = np.asarray(model.apply({"params": params}, jnp.asarray(a[None])))
    alone_b = np.asarray(model.apply({"params": params}, jnp.asarray(b[None])))
    np.testing.assert_allclose(out[0, :10], alone_a[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(out[0, 10:19], alone_b[0], atol=1e-5, rtol=0)
    # Explicit positions give the same result as the derived ones.
    positions = np.array([list(range(10)) + list(range(9)) + [0] * 5])
    explicit = model.apply({"params": params}, jnp.asarray(packed), segment_ids=jnp.asarray(segments),
                           positions=jnp.asarray(positions))
    np.testing.assert_allclose(np.asarray(explicit)[0, :19], out[0, :19], atol=1e-6, rtol=0)
    # Without segment ids the second example would see the first: the mask really matters.
    unmasked = np.asarray(model.apply({"params": params}, jnp.asarray(packed)))
    assert np.abs(unmasked[0, 10:19] - alone_b[0]).max() > 1e-2


def test_kv_cache_steps_equal_full_forward(pair, token_ids):
    _, model, params = pair
    ids, mask = left_pad([token_ids[0, :12], token_ids[1, :8]])
    full = np.asarray(model.apply({"params": params}, jnp.asarray(ids), segment_ids=jnp.asarray(mask)))
    cache = model.init_cache(2, ids.shape[1])
    prefill = 5
    step = jax.jit(lambda c, x, s: model.apply({"params": params, "cache": c}, x, segment_ids=s, decode=True,
                                               mutable=["cache"]))
    logits, mut = step(cache, jnp.asarray(ids[:, :prefill]), jnp.asarray(mask[:, :prefill]))
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(logits)[real[:, :prefill]], full[:, :prefill][real[:, :prefill]],
                               atol=1e-5, rtol=0)
    for t in range(prefill, ids.shape[1]):
        logits, mut = step(mut["cache"], jnp.asarray(ids[:, t:t + 1]), jnp.asarray(mask[:, t:t + 1]))
        np.testing.assert_allclose(np.asarray(logits)[:, 0], full[:, t], atol=1e-5, rtol=0)
    # One more token than the cache holds: NaN instead of a silent overwrite.
    logits, _ = step(mut["cache"], jnp.asarray(ids[:, :1]), jnp.asarray(mask[:, :1]))
    assert np.isnan(np.asarray(logits)).all()


def greedy(model, params, ids: np.ndarray, mask: np.ndarray, new_tokens: int) -> np.ndarray:
    """Minimal greedy decoding with the KV cache (left-padded prompts)."""
    batch, width = ids.shape
    cache = model.init_cache(batch, width + new_tokens)
    step = jax.jit(lambda c, x, s: model.apply({"params": params, "cache": c}, x, segment_ids=s, decode=True,
                                               mutable=["cache"]))
    logits, mut = step(cache, jnp.asarray(ids), jnp.asarray(mask))
    out = []
    for _ in range(new_tokens):
        token = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)[:, None]
        out.append(np.asarray(token))
        logits, mut = step(mut["cache"], token, jnp.ones_like(token))
    return np.concatenate(out, axis=1)


def test_greedy_decoding_matches_hf_generate(pair, token_ids):
    hf_model, model, params = pair
    ids, mask = left_pad([token_ids[0, :9], token_ids[1, :4], token_ids[2, :6]])
    new = 8
    ours = greedy(model, params, ids, mask, new)
    with torch.no_grad():
        hf = hf_model.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                               max_new_tokens=new, do_sample=False, pad_token_id=1)
    hf = hf[:, ids.shape[1]:].numpy()
    eos = hf_model.config.eos_token_id
    for row_ours, row_hf in zip(ours, hf):
        # HF stops a row at EOS and pads it; compare up to and including the first EOS.
        stop = next((i + 1 for i, t in enumerate(row_hf) if t == eos), new)
        assert row_ours[:stop].tolist() == row_hf[:stop].tolist()


# ---------------------------------------------------------------------------------------------------------------
# Model features
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    config = get_config("tiny").replace(num_hidden_layers=2, vocab_size=512)
    model = OPTForCausalLM(config)
    return model, model.init_params(jax.random.PRNGKey(0))


def test_params_are_logically_partitioned(tiny):
    model, _ = tiny
    specs = nn_specs(model)
    assert specs["embed_tokens"]["embedding"] == jax.sharding.PartitionSpec("vocab", "embed")
    assert specs["embed_positions"]["embedding"] == jax.sharding.PartitionSpec("abspos", "embed")
    attn = specs["layers_1"]["self_attn"]
    assert attn["q_proj"]["kernel"] == jax.sharding.PartitionSpec("embed", "heads", "kv")
    assert attn["out_proj"]["kernel"] == jax.sharding.PartitionSpec("heads", "kv", "embed")
    assert specs["layers_0"]["fc1"]["kernel"] == jax.sharding.PartitionSpec("embed", "mlp")
    assert specs["layers_0"]["fc2"]["kernel"] == jax.sharding.PartitionSpec("mlp", "embed")


def nn_specs(model):
    import flax.linen as nn

    return nn.get_partition_spec(model.abstract_params())


def test_remat_gives_same_logits_and_grads(tiny):
    model, params = tiny
    remat = OPTForCausalLM(model.config.replace(remat=True))
    ids = jnp.arange(20, dtype=jnp.int32).reshape(2, 10)

    def loss(m, p):
        return jnp.mean(jax.nn.log_softmax(m.apply({"params": p}, ids))[..., 7])

    l1, g1 = jax.jit(jax.value_and_grad(lambda p: loss(model, p)))(params)
    l2, g2 = jax.jit(jax.value_and_grad(lambda p: loss(remat, p)))(params)
    assert float(l1) == pytest.approx(float(l2), abs=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_bf16_compute_with_f32_params(tiny):
    model, params = tiny
    ids = jnp.arange(20, dtype=jnp.int32).reshape(2, 10)
    bf16 = OPTForCausalLM(model.config.replace(dtype="bfloat16"))
    out = jax.jit(bf16.apply)({"params": params}, ids)
    ref = jax.jit(model.apply)({"params": params}, ids)
    assert out.dtype == jnp.float32
    assert float(jnp.abs(out - ref).max()) < 0.05
    stored = OPTForCausalLM(model.config.replace(param_dtype="bfloat16")).init_params(jax.random.PRNGKey(0))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(stored))


def _dot_generals(jaxpr) -> list:
    """Every dot_general equation of a (closed) jaxpr, nested jaxprs (jit, remat, custom_vjp) included."""
    out = []
    for eqn in jaxpr.jaxpr.eqns if hasattr(jaxpr, "jaxpr") else jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            out.append(eqn)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if hasattr(sub, "eqns") or hasattr(sub, "jaxpr"):
                    out.extend(_dot_generals(sub))
    return out


@pytest.mark.parametrize("attention_query_block", [0, 4])
def test_bf16_forward_matmuls_take_bf16_and_return_f32_on_cpu(tiny, attention_query_block):
    """Each matmul of a bf16 forward on CPU has bf16 operands and an f32 result (`models.matmul`): XLA's CPU
    backend runs a dot with a bf16 result as an f32 matmul of upcast operands, at half the bf16 rate."""
    model, params = tiny
    cfg = model.config.replace(dtype="bfloat16", attention_query_block=attention_query_block)
    ids = jnp.arange(20, dtype=jnp.int32).reshape(2, 10)
    assert jax.default_backend() == "cpu"
    dots = _dot_generals(jax.make_jaxpr(OPTForCausalLM(cfg).apply)({"params": params}, ids))
    # per layer: q, k, v, scores, probs @ values, out_proj, fc1, fc2; then the LM head
    blocks = -(-10 // attention_query_block) if attention_query_block else 1
    assert len(dots) == cfg.num_hidden_layers * (6 + 2 * blocks) + 1
    for eqn in dots:
        assert [v.aval.dtype for v in eqn.invars] == [jnp.bfloat16] * 2, eqn
        assert eqn.outvars[0].aval.dtype == jnp.float32, eqn


@pytest.mark.parametrize("attention_query_block", [0, 4])
def test_bf16_gradient_matmuls_stay_bf16_on_accelerators(tiny, monkeypatch, attention_query_block):
    """On GPU/TPU the layers' bf16 matmuls return bf16 (flax's default), so that every gradient matmul but the
    softmax-feeding ones (scores, LM head) has two bf16 operands: an f32 cotangent against a bf16 operand is
    upcast by XLA to an f32 matmul, at half the tensor cores' bf16 rate. The backend is what `jax.default_backend`
    says at trace time; only the traced program is inspected, so a CPU can check it."""
    model, params = tiny
    cfg = model.config.replace(dtype="bfloat16", attention_query_block=attention_query_block)
    ids = jnp.arange(20, dtype=jnp.int32).reshape(2, 10)
    m = OPTForCausalLM(cfg)

    def loss(p):
        return jnp.mean(m.apply({"params": p}, ids).astype(jnp.float32))

    def mixed_and_pure(backend):
        monkeypatch.setattr(jax, "default_backend", lambda: backend)
        dots = _dot_generals(jax.make_jaxpr(jax.grad(loss))(params))
        kinds = [tuple(v.aval.dtype for v in e.invars) for e in dots]
        return sum(len(set(k)) > 1 for k in kinds), sum(k == (jnp.bfloat16,) * 2 for k in kinds), dots

    blocks = -(-10 // attention_query_block) if attention_query_block else 1
    mixed, pure, dots = mixed_and_pure("gpu")
    # mixed only where an f32 result feeds a softmax: scores (2 per block: dq, dk) and the LM head (dh, dW)
    assert mixed == cfg.num_hidden_layers * 2 * blocks + 2, dots
    for name in ("gpu", "tpu"):
        monkeypatch.setattr(jax, "default_backend", lambda n=name: n)
        forward = _dot_generals(jax.make_jaxpr(m.apply)({"params": params}, ids))
        # per layer q, k, v, probs @ values, out_proj, fc1, fc2 return bf16; scores and the LM head f32
        assert sum(e.outvars[0].aval.dtype == jnp.bfloat16 for e in forward) == cfg.num_hidden_layers * (6 + blocks)
    cpu_mixed, cpu_pure, _ = mixed_and_pure("cpu")
    assert cpu_mixed > mixed and cpu_pure < pure  # on CPU the layers' f32 results make their gradients mixed


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_tied_embedding_gradient_equals_autodiff(dtype):
    """`tied_embedding` adds the looked-up rows' cotangents straight into the output projection's; the gradient
    must equal plain autodiff of take + cast (repeated ids accumulate, unused rows get only the head's part)."""
    table = jax.random.normal(jax.random.PRNGKey(0), (11, 4), jnp.float32)
    ids = jnp.asarray([[3, 3, 0], [10, 3, 5]], jnp.int32)
    rows_ct = jax.random.normal(jax.random.PRNGKey(1), ids.shape + (4,)).astype(dtype)
    table_ct = jax.random.normal(jax.random.PRNGKey(2), table.shape).astype(dtype)

    def plain(t):
        return jnp.take(t.astype(dtype), ids, axis=0), t.astype(dtype)

    got_out, got_vjp = jax.vjp(lambda t: tied_embedding(t, ids, dtype), table)
    want_out, want_vjp = jax.vjp(plain, table)
    for g, w in zip(got_out, want_out):
        assert g.dtype == w.dtype == dtype
        np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(w, np.float32))
    (got,), (want,) = got_vjp((rows_ct, table_ct)), want_vjp((rows_ct, table_ct))
    assert got.dtype == jnp.float32
    # the sums run in another order (into the head's gradient, not into zeros); bf16 autodiff also sums the
    # repeated rows in bf16 before the f32 add, ours in f32
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0,
                               atol=1e-6 if dtype == jnp.float32 else 0.05)


def test_dropout_needs_rng_and_is_off_when_deterministic(tiny):
    model, params = tiny
    ids = jnp.arange(20, dtype=jnp.int32).reshape(2, 10)
    eval_out = jax.jit(model.apply)({"params": params}, ids)
    run = jax.jit(lambda key: model.apply({"params": params}, ids, deterministic=False, rngs={"dropout": key}))
    train = lambda seed: run(jax.random.PRNGKey(seed))  # noqa: E731
    assert float(jnp.abs(train(0) - eval_out).max()) > 1e-3
    assert float(jnp.abs(train(0) - train(1)).max()) > 1e-3
    np.testing.assert_array_equal(train(0), train(0))
    with pytest.raises(Exception, match="dropout"):
        model.apply({"params": params}, ids, deterministic=False)


def test_input_validation(tiny):
    model, params = tiny
    with pytest.raises(ValueError, match="input_ids must be int \\[batch, length\\]"):
        model.apply({"params": params}, jnp.zeros((4,), jnp.int32))
    with pytest.raises(ValueError, match="segment_ids must have the shape of input_ids"):
        model.apply({"params": params}, jnp.zeros((2, 4), jnp.int32), segment_ids=jnp.ones((2, 5), jnp.int32))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.init_cache(1, model.config.max_position_embeddings + 1)


def test_sharded_forward_equals_unsharded(tiny):
    import flax.linen as nn
    from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

    if jax.device_count() < 8:
        pytest.skip("needs 8 (fake) devices; tests/conftest.py sets XLA_FLAGS before jax is imported")
    model, params = tiny
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    rules = (("batch", "data"), ("vocab", "model"), ("heads", "model"), ("mlp", "model"), ("embed", None),
             ("kv", None), ("length", None), ("abspos", None))
    param_shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(model.abstract_params()), mesh, rules)
    param_shardings = nn.meta.unbox(param_shardings)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 512, size=(8, 16)), jnp.int32)
    segments = jnp.asarray(np.repeat([[1] * 10 + [2] * 6], 8, axis=0), jnp.int32)
    data = NamedSharding(mesh, PartitionSpec("data", None))

    def forward(p, x, s):
        with nn.logical_axis_rules(rules):
            return model.apply({"params": p}, x, segment_ids=s)

    sharded = jax.jit(forward, in_shardings=(param_shardings, data, data),
                      out_shardings=NamedSharding(mesh, PartitionSpec("data", None, "model")))
    placed = jax.device_put(params, param_shardings)
    # Under an active mesh the model's activation constraints (with_logical_constraint) take effect too.
    with jax.set_mesh(mesh):
        out = sharded(placed, jax.device_put(ids, data), jax.device_put(segments, data))
    assert placed["layers_0"]["fc1"]["kernel"].sharding.spec == PartitionSpec(None, "model")
    np.testing.assert_allclose(np.asarray(out), np.asarray(forward(params, ids, segments)), atol=1e-5, rtol=0)


def test_logits_to_keep_is_the_tail_of_the_full_logits(tiny):
    model, params = tiny
    ids = jnp.asarray(np.random.default_rng(1).integers(0, 512, size=(2, 12)), jnp.int32)
    full = model.apply({"params": params}, ids)
    tail = model.apply({"params": params}, ids, logits_to_keep=3)
    assert tail.shape == (2, 3, full.shape[-1])
    np.testing.assert_allclose(np.asarray(tail), np.asarray(full[:, -3:]), atol=1e-6, rtol=0)
