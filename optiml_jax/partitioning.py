"""Device mesh, T5X-style logical axis rules and sharding helpers (single- and multi-host).

The model names every parameter and activation dimension with a *logical* axis (``batch``, ``embed``, ``mlp``,
``heads``, ``kv``, ``vocab``, ``length``, ``abspos``); a rule table maps logical names onto the three mesh axes:

* ``data``  -- pure data parallelism (parameters replicated),
* ``fsdp``  -- data parallelism whose replicas also shard parameters and optimizer state along ``embed``
  (ZeRO-3 / Fully Sharded Data Parallel, as OPT-IML was trained),
* ``model`` -- Megatron-style tensor parallelism over ``mlp``/``heads``/``vocab``.

Everything here is plain Python: gin bindings are applied at the CLI edge (``optiml_jax/train.py``).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from optiml_jax.errors import UserError

logger = logging.getLogger(__name__)

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "model")
# Mesh axes the batch dimension is split over: every (data, fsdp) coordinate sees different examples.
BATCH_MESH_AXES: tuple[str, ...] = ("data", "fsdp")

LogicalRules = tuple[tuple[str, Any], ...]

# Order matters: flax assigns rules first-come-first-served and never reuses a mesh axis inside one array, so
# activations [batch, length, embed] get batch -> (data, fsdp) and leave embed unsharded, while parameters
# (which have no batch dimension) get embed -> fsdp.
DEFAULT_LOGICAL_AXIS_RULES: LogicalRules = (
    ("batch", BATCH_MESH_AXES),
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("embed", "fsdp"),
    ("kv", None),
    ("length", None),
    ("abspos", None),
)


@dataclasses.dataclass(frozen=True)
class PartitionConfig:
    """How to lay the computation out over devices.

    Attributes:
      mesh_shape: size of each mesh axis, keyed by ``data``/``fsdp``/``model``; at most one size may be -1
        (filled with the remaining devices). Axes left out have size 1.
      logical_axis_rules: ``(logical_name, mesh_axis | tuple[mesh_axis, ...] | None)`` pairs, highest priority
        first.
    """

    mesh_shape: Mapping[str, int] = dataclasses.field(default_factory=lambda: {"data": -1, "fsdp": 1, "model": 1})
    logical_axis_rules: LogicalRules = DEFAULT_LOGICAL_AXIS_RULES


def resolve_mesh_shape(mesh_shape: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Returns the (data, fsdp, model) sizes for ``num_devices`` devices, filling a single -1 entry.

    Raises ValueError naming the offending axis when the shape is malformed or does not tile the devices.
    """
    unknown = sorted(set(mesh_shape) - set(MESH_AXES))
    if unknown:
        raise UserError(f"mesh_shape: unknown mesh axes {unknown}; valid axes are {list(MESH_AXES)}")
    sizes = [int(mesh_shape.get(axis, 1)) for axis in MESH_AXES]
    for axis, size in zip(MESH_AXES, sizes):
        if size == 0 or size < -1:
            raise UserError(f"mesh_shape[{axis!r}] = {size}: sizes must be positive, or -1 to fill")
    fill = [i for i, s in enumerate(sizes) if s == -1]
    if len(fill) > 1:
        raise UserError(f"mesh_shape {dict(mesh_shape)}: only one axis may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if fill:
        if num_devices % known:
            raise UserError(
                f"mesh_shape {dict(mesh_shape)}: the fixed axes ({known} devices) do not divide the "
                f"{num_devices} available devices")
        sizes[fill[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise UserError(
            f"mesh_shape {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but {num_devices} are "
            "available; set one axis to -1 to fill")
    return tuple(sizes)


def create_mesh(mesh_shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a (data, fsdp, model) mesh with Auto axis types (what linen logical sharding needs).

    On TPU/GPU the device order comes from `mesh_utils` (so ``model`` lands on the fastest interconnect); on CPU
    devices are taken in process order, so each process owns a contiguous block of the ``data`` axis.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(mesh_shape, len(devices))
    arranged = None
    if devices[0].platform in ("tpu", "gpu", "cuda", "rocm") and jax.process_count() == 1:
        from jax.experimental import mesh_utils

        try:
            arranged = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        except (ValueError, NotImplementedError, AssertionError) as e:  # unusual topologies: plain order
            logger.warning("mesh_utils could not arrange devices (%s); using plain device order", e)
    if arranged is None:
        arranged = np.asarray(devices, dtype=object).reshape(shape)
    # Mesh(...) gives AxisType.Auto axes; jax.make_mesh's Explicit default breaks linen logical constraints.
    return Mesh(arranged, MESH_AXES)


def validate_rules(rules: Sequence[Sequence[Any]]) -> LogicalRules:
    """Checks the rule table's shape and mesh-axis names; returns it as a tuple of pairs."""
    out = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, (tuple, list)) or len(rule) != 2 or not isinstance(rule[0], str):
            raise UserError(f"logical_axis_rules[{i}] = {rule!r}: expected a (logical_name, mesh_axes) pair")
        name, target = rule
        targets = target if isinstance(target, (tuple, list)) else (target,)
        for t in targets:
            if t is not None and t not in MESH_AXES:
                raise UserError(
                    f"logical_axis_rules[{i}] ({name!r}): unknown mesh axis {t!r}; valid: {list(MESH_AXES)}")
        out.append((name, tuple(target) if isinstance(target, list) else target))
    return tuple(out)


def logical_shardings(logical_specs: Any, mesh: Mesh, rules: LogicalRules) -> Any:
    """Maps a pytree of logical PartitionSpecs (from `nn.get_partition_spec`) to NamedShardings on ``mesh``."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, list(rules))


def abstract_params_and_shardings(init_fn, mesh: Mesh, rules: LogicalRules, *args) -> tuple[Any, Any]:
    """Shapes (unboxed ShapeDtypeStructs) and NamedShardings of everything ``init_fn(*args)`` returns.

    ``init_fn`` may return linen ``Partitioned`` boxes anywhere in its output (parameters, or a train state built
    from them); dimensions without logical names are replicated. Nothing is allocated.
    """
    boxed = jax.eval_shape(init_fn, *args)
    specs = nn.get_partition_spec(boxed)
    shardings = logical_shardings(specs, mesh, rules)
    abstract = nn.meta.unbox(boxed)
    return abstract, shardings


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """Attaches shardings to a pytree of ShapeDtypeStructs (the target orbax restores onto)."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def replicated(mesh: Mesh) -> NamedSharding:
    """A sharding that keeps a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Sharding of a [batch, ...] array: batch split over (data, fsdp), the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_MESH_AXES, *([None] * (ndim - 1))))


def data_parallel_size(mesh: Mesh) -> int:
    """How many different slices the global batch is split into."""
    return math.prod(mesh.shape[a] for a in BATCH_MESH_AXES)


@dataclasses.dataclass(frozen=True)
class HostShard:
    """Which part of the global batch this process feeds."""

    shard_index: int      # index of this host's slice (hosts holding replicas of a slice share the index)
    num_shards: int       # number of distinct slices
    local_batch_size: int  # rows this process must load


def host_shard(mesh: Mesh, global_batch_size: int) -> HostShard:
    """Computes this process's slice of the global batch from the batch sharding's device placement.

    Each process must feed exactly the rows that its addressable devices hold; with ``model`` spanning several
    processes two processes hold the same rows and then load the same shard.
    """
    dp = data_parallel_size(mesh)
    if global_batch_size % dp:
        raise UserError(
            f"batch size {global_batch_size} is not divisible by the data-parallel size {dp} "
            f"(mesh data x fsdp = {mesh.shape['data']} x {mesh.shape['fsdp']})")
    sharding = batch_sharding(mesh, 1)
    rows = set()
    for index in sharding.addressable_devices_indices_map((global_batch_size,)).values():
        sl = index[0]
        rows.update(range(*sl.indices(global_batch_size)))
    start, stop = min(rows), max(rows) + 1
    if len(rows) != stop - start:
        raise UserError("this process's devices do not hold a contiguous block of the batch; "
                         "reorder the mesh so that `data` is outermost")
    local = stop - start
    if global_batch_size % local:
        raise UserError(f"per-process batch {local} does not divide the global batch {global_batch_size}")
    return HostShard(shard_index=start // local, num_shards=global_batch_size // local, local_batch_size=local)


def global_batch_from_local(mesh: Mesh, local_batch: Mapping[str, np.ndarray], global_batch_size: int) -> dict:
    """Assembles global, batch-sharded jax Arrays from this process's rows (`make_array_from_process_local_data`)."""
    out = {}
    for key, value in local_batch.items():
        value = np.asarray(value)
        sharding = batch_sharding(mesh, value.ndim)
        out[key] = jax.make_array_from_process_local_data(
            sharding, value, (global_batch_size,) + value.shape[1:])
    return out


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """Multi-process set-up; every field falls back to the standard JAX env vars, then to auto-detection.

    ``coordinator_address`` ("host:port"), ``num_processes``, ``process_id``: as in `jax.distributed.initialize`.
    ``cpu_collectives``: cross-process collectives backend on CPU ("gloo" or "mpi").
    ``auto`` (or ``OPTIML_DISTRIBUTED=auto``): call `jax.distributed.initialize()` with no arguments so JAX
    detects the cluster (Cloud TPU, SLURM, Open MPI).
    """

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    cpu_collectives: str = "gloo"
    initialization_timeout: int = 300
    auto: bool = False


_DISTRIBUTED_INITIALIZED = False


def maybe_initialize_distributed(config: DistributedConfig | None = None) -> bool:
    """Calls `jax.distributed.initialize` when a multi-process run is configured; returns whether it did.

    Configured means: a coordinator address (argument or ``JAX_COORDINATOR_ADDRESS``) and num_processes > 1
    (argument or ``JAX_NUM_PROCESSES``). Must run before anything touches a JAX backend.
    """
    global _DISTRIBUTED_INITIALIZED
    if _DISTRIBUTED_INITIALIZED:
        return True
    config = config or DistributedConfig()
    if config.auto or os.environ.get("OPTIML_DISTRIBUTED", "").lower() == "auto":
        # Cloud TPU VMs, SLURM and Open MPI describe the cluster themselves: let JAX detect it.
        jax.distributed.initialize(initialization_timeout=config.initialization_timeout)
        _DISTRIBUTED_INITIALIZED = True
        logger.info("jax.distributed initialised by auto-detection: process %d of %d", jax.process_index(),
                    jax.process_count())
        return True
    address = config.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    num = config.num_processes
    if num is None and os.environ.get("JAX_NUM_PROCESSES"):
        num = int(os.environ["JAX_NUM_PROCESSES"])
    pid = config.process_id
    if pid is None and os.environ.get("JAX_PROCESS_ID"):
        pid = int(os.environ["JAX_PROCESS_ID"])
    if not address or not num or num <= 1:
        return False
    if pid is None or not 0 <= pid < num:
        raise UserError(f"process_id={pid!r} must be set and in [0, {num}) for a {num}-process run "
                         "(DistributedConfig.process_id or JAX_PROCESS_ID)")
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if not platforms or "cpu" in platforms.split(","):
        # CPU devices need an explicit cross-process collectives backend; harmless when GPUs/TPUs are used.
        jax.config.update("jax_cpu_collectives_implementation", config.cpu_collectives)
    jax.distributed.initialize(address, num_processes=num, process_id=pid,
                               initialization_timeout=config.initialization_timeout)
    _DISTRIBUTED_INITIALIZED = True
    logger.info("jax.distributed initialised: process %d of %d (coordinator %s)", pid, num, address)
    return True


def put_global(mesh: Mesh, value: np.ndarray, spec: PartitionSpec) -> jax.Array:
    """A global array on ``mesh`` from a host array that every process holds in full (the same values).

    Each process fills only the shards of its addressable devices (`jax.make_array_from_callback`), so this works
    unchanged on one or many hosts; evaluation and inference, where every process prepares the same batch, use it.
    """
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, NamedSharding(mesh, spec), lambda index: value[index])


def to_host(x: jax.Array | np.ndarray) -> np.ndarray:
    """The full value of a (possibly multi-host, sharded) array as numpy, on every process.

    Arrays spread over several processes are gathered with `jax.experimental.multihost_utils.process_allgather`
    (a collective: every process must call this with the same array).
    """
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def is_output_process() -> bool:
    """Whether this process writes files (process 0: every process computes, one writes)."""
    return jax.process_index() == 0
