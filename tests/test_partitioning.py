"""Mesh construction, logical axis rules, parameter/batch shardings and per-host input (8 fake CPU devices)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import AxisType, PartitionSpec as P

from optiml_jax import partitioning
from optiml_jax.models.configs import get_config
from optiml_jax.models.opt import OPTForCausalLM


def test_resolve_mesh_shape_fills_and_validates():
    assert partitioning.resolve_mesh_shape({"data": -1}, 8) == (8, 1, 1)
    assert partitioning.resolve_mesh_shape({"data": 2, "fsdp": -1, "model": 2}, 8) == (2, 2, 2)
    assert partitioning.resolve_mesh_shape({"fsdp": 8, "model": 8}, 64) == (1, 8, 8)
    with pytest.raises(ValueError, match="only one axis may be -1"):
        partitioning.resolve_mesh_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(ValueError, match="needs 4 devices but 8"):
        partitioning.resolve_mesh_shape({"data": 2, "model": 2}, 8)
    with pytest.raises(ValueError, match="do not divide"):
        partitioning.resolve_mesh_shape({"data": -1, "model": 3}, 8)
    with pytest.raises(ValueError, match="unknown mesh axes \\['tensor'\\]"):
        partitioning.resolve_mesh_shape({"tensor": 2}, 8)
    with pytest.raises(ValueError, match="mesh_shape\\['model'\\] = 0"):
        partitioning.resolve_mesh_shape({"model": 0}, 8)


def test_create_mesh_uses_auto_axes_in_process_order():
    mesh = partitioning.create_mesh({"data": 2, "fsdp": 2, "model": 2})
    assert mesh.axis_names == ("data", "fsdp", "model")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "model": 2}
    assert all(t == AxisType.Auto for t in mesh.axis_types)
    assert [d.id for d in mesh.devices.reshape(-1)] == [d.id for d in jax.devices()]


def test_validate_rules_names_the_bad_rule():
    assert partitioning.validate_rules([["batch", ["data", "fsdp"]], ("kv", None)]) == (
        ("batch", ("data", "fsdp")), ("kv", None))
    with pytest.raises(ValueError, match=r"logical_axis_rules\[1\] \('mlp'\): unknown mesh axis 'tensor'"):
        partitioning.validate_rules([("batch", "data"), ("mlp", "tensor")])
    with pytest.raises(ValueError, match=r"logical_axis_rules\[0\]"):
        partitioning.validate_rules([("batch",)])


def test_parameter_shardings_follow_the_rules():
    cfg = get_config("tiny").replace(vocab_size=512)
    model = OPTForCausalLM(cfg)
    mesh = partitioning.create_mesh({"data": 2, "fsdp": 2, "model": 2})
    init = lambda rng: model.init({"params": rng}, jnp.ones((1, 8), jnp.int32))["params"]  # noqa: E731
    abstract, shardings = partitioning.abstract_params_and_shardings(
        init, mesh, partitioning.DEFAULT_LOGICAL_AXIS_RULES, jax.random.PRNGKey(0))
    specs = jax.tree.map(lambda s: s.spec, shardings)
    # vocab -> model, embed -> fsdp; abspos and kv unsharded; mlp and heads -> model.
    assert specs["embed_tokens"]["embedding"] == P("model", "fsdp")
    assert specs["embed_positions"]["embedding"] == P(None, "fsdp")
    layer = specs["layers_0"]
    assert layer["fc1"]["kernel"] == P("fsdp", "model")
    assert layer["fc2"]["kernel"] == P("model", "fsdp")
    assert layer["self_attn"]["q_proj"]["kernel"] == P("fsdp", "model", None)
    assert layer["self_attn"]["out_proj"]["kernel"] == P("model", None, "fsdp")
    assert layer["self_attn_layer_norm"]["scale"] == P("fsdp")
    # Shapes come unboxed and match the model's.
    assert abstract["embed_tokens"]["embedding"].shape == (512, cfg.hidden_size)
    # Every leaf got a NamedSharding on our mesh.
    assert all(s.mesh.shape == mesh.shape for s in jax.tree.leaves(shardings))


def test_activation_rules_keep_batch_on_data_axes():
    rules = partitioning.DEFAULT_LOGICAL_AXIS_RULES
    # batch claims (data, fsdp) first, so embed may not reuse fsdp inside the same activation.
    assert nn.logical_to_mesh_axes(("batch", "length", "embed"), rules) == P(("data", "fsdp"), None, None)
    assert nn.logical_to_mesh_axes(("batch", "length", "heads", "kv"), rules) == P(("data", "fsdp"), None,
                                                                                   "model", None)
    assert nn.logical_to_mesh_axes(("batch", "length", "vocab"), rules) == P(("data", "fsdp"), None, "model")


def test_host_shard_and_global_batch_single_process():
    mesh = partitioning.create_mesh({"data": 2, "fsdp": 2, "model": 2})
    shard = partitioning.host_shard(mesh, 8)
    assert shard == partitioning.HostShard(shard_index=0, num_shards=1, local_batch_size=8)
    with pytest.raises(ValueError, match="not divisible by the data-parallel size 4"):
        partitioning.host_shard(mesh, 6)
    local = {"x": np.arange(8 * 3, dtype=np.int32).reshape(8, 3), "w": np.ones((8, 3), np.float32)}
    glob = partitioning.global_batch_from_local(mesh, local, 8)
    assert glob["x"].shape == (8, 3)
    assert glob["x"].sharding.spec == P(("data", "fsdp"), None)
    np.testing.assert_array_equal(np.asarray(glob["x"]), local["x"])
    # Each (data, fsdp) coordinate holds 2 distinct rows; the model axis holds replicas.
    rows = {tuple(np.asarray(s.data)[:, 0]) for s in glob["x"].addressable_shards}
    assert len(rows) == 4 and all(len(r) == 2 for r in rows)


def test_maybe_initialize_distributed_is_a_noop_without_configuration(monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    assert partitioning.maybe_initialize_distributed() is False
    assert partitioning.maybe_initialize_distributed(partitioning.DistributedConfig(
        coordinator_address="127.0.0.1:1", num_processes=1)) is False
    with pytest.raises(ValueError, match="process_id=None must be set"):
        partitioning.maybe_initialize_distributed(partitioning.DistributedConfig(
            coordinator_address="127.0.0.1:1", num_processes=2))


def test_auto_distributed_lets_jax_detect_the_cluster(monkeypatch):
    """OPTIML_DISTRIBUTED=auto calls jax.distributed.initialize() without coordinator arguments."""
    import jax

    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
    monkeypatch.setattr(partitioning, "_DISTRIBUTED_INITIALIZED", False)
    monkeypatch.setenv("OPTIML_DISTRIBUTED", "auto")
    assert partitioning.maybe_initialize_distributed() is True
    assert calls == [((), {"initialization_timeout": 300})]
