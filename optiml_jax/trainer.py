"""Train state, optimizer and the jitted, partitioned train/eval steps (T5X style, no pmap).

The recipe follows the paper (§3.3): AdamW with fp32 state, (b1, b2) = (0.9, 0.95), linear warm-up then linear
decay to 0, gradient clipping at 1.0, dropout from the model config, and a label-only loss over packed sequences:
``sum(CE * decoder_loss_weights) / sum(decoder_loss_weights)`` over the whole (global) batch: the model's own
loss (`optiml_jax.models.lm.CausalLM.loss`, the tied LM head in chunks of tokens, no [tokens, vocab] logits,
shared with scoring). Gradient
accumulation splits that batch into microbatches inside the jitted step and divides by the total weight once, so
it computes exactly the big-batch gradient.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import struct
from jax.sharding import Mesh, NamedSharding

from optiml_jax import partitioning
from optiml_jax.errors import UserError
from optiml_jax.models.lm import CausalLM

logger = logging.getLogger(__name__)

# Keys of a batch that go to the device; `decoder_task_ids` stays on the host (metrics, NaN reports).
MODEL_FEATURES: tuple[str, ...] = (
    "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights", "decoder_segment_ids",
    "decoder_positions",
)
HOST_FEATURES: tuple[str, ...] = ("decoder_task_ids",)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warm-up and linear decay to 0 (the paper's fine-tuning recipe)."""

    learning_rate: float = 5e-5
    warmup_steps: int = 60
    total_steps: int = 4000       # the decay reaches 0 here (normally TRAIN_STEPS)
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1     # OPT's value; decoupled (AdamW), applied to every parameter
    grad_clip: float = 1.0        # global-norm clipping; <= 0 disables

    def validate(self) -> None:
        """Raises UserError naming the field at fault."""
        if not self.learning_rate > 0:
            raise UserError(f"OptimizerConfig.learning_rate must be > 0, got {self.learning_rate}")
        if self.warmup_steps < 0 or self.total_steps <= 0:
            raise UserError(f"OptimizerConfig: warmup_steps ({self.warmup_steps}) must be >= 0 and "
                             f"total_steps ({self.total_steps}) > 0")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
            raise UserError(f"OptimizerConfig.b1/b2 must be in [0, 1), got {self.b1}, {self.b2}")


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """Everything the jitted steps depend on besides the model."""

    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    num_microbatches: int = 1     # gradient accumulation inside the step
    z_loss: float = 0.0           # PaLM-style log(Z)^2 penalty; the paper does not use one
    # Logits rows (tokens of the (micro)batch) of the tied LM head held at once by the loss; 0 = all of them
    # (see optiml_jax.losses).
    ce_chunk_tokens: int = 2048
    seed: int = 0

    def validate(self, global_batch_size: int, data_parallel: int) -> None:
        """Checks that microbatches tile the batch evenly over the data-parallel devices."""
        self.optimizer.validate()
        if self.ce_chunk_tokens < 0:
            raise UserError(f"TrainerConfig.ce_chunk_tokens must be >= 0 (0 = no chunking), got {self.ce_chunk_tokens}")
        m = self.num_microbatches
        if m < 1:
            raise UserError(f"TrainerConfig.num_microbatches must be >= 1, got {m}")
        if global_batch_size % m or (global_batch_size // m) % data_parallel:
            raise UserError(
                f"TrainerConfig.num_microbatches={m}: batch size {global_batch_size} must split into {m} "
                f"microbatches each divisible by the data-parallel size {data_parallel}")


class TrainState(struct.PyTreeNode):
    """Everything a checkpoint must hold to continue training bit-for-bit (besides the input position)."""

    step: jax.Array        # int32 scalar: optimizer updates done
    params: Any            # fp32 master weights
    opt_state: Any         # fp32 AdamW moments
    rng: jax.Array         # uint32[2] base key; step keys are derived with fold_in(rng, step)


def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    """Linear 0 -> peak over ``warmup_steps``, then linear peak -> 0 at ``total_steps``."""
    warmup = max(cfg.warmup_steps, 0)
    decay = max(cfg.total_steps - warmup, 1)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.learning_rate, warmup) if warmup else optax.constant_schedule(
            cfg.learning_rate),
         optax.linear_schedule(cfg.learning_rate, 0.0, decay)],
        boundaries=[warmup])


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """Clip by global norm, then AdamW with fp32 moments (optax keeps moments in the fp32 params' dtype)."""
    parts = []
    if cfg.grad_clip and cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts.append(optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mu_dtype=jnp.float32))
    return optax.chain(*parts)


def examples_per_benchmark(batch: Mapping[str, np.ndarray], task_names: Sequence[str],
                           task_benchmark: Mapping[str, str]) -> dict[str, int]:
    """Counts the examples (packed segments) of a host batch per benchmark, from ``decoder_task_ids``."""
    task_ids = np.asarray(batch["decoder_task_ids"])
    seg = np.asarray(batch["decoder_segment_ids"])
    # A segment starts where the segment id changes to a non-zero value.
    prev = np.concatenate([np.zeros_like(seg[:, :1]), seg[:, :-1]], axis=1)
    starts = (seg != 0) & (seg != prev) & (task_ids >= 0)
    counts: dict[str, int] = {}
    ids, n = np.unique(task_ids[starts], return_counts=True)
    for tid, c in zip(ids.tolist(), n.tolist()):
        name = task_names[tid] if 0 <= tid < len(task_names) else f"task#{tid}"
        bench = task_benchmark.get(name, "unknown")
        counts[bench] = counts.get(bench, 0) + int(c)
    return counts


def batch_task_names(batch: Mapping[str, np.ndarray], task_names: Sequence[str]) -> list[str]:
    """The distinct task names present in a host batch (for non-finite loss reports)."""
    if "decoder_task_ids" not in batch:
        return []
    ids = np.unique(np.asarray(batch["decoder_task_ids"]))
    return [task_names[i] if 0 <= i < len(task_names) else f"task#{i}" for i in ids.tolist() if i >= 0]


class NonFiniteLossError(FloatingPointError):
    """Raised when a training step's loss is NaN or infinite."""

    def __init__(self, step: int, loss: float, tasks: Sequence[str]):
        self.step, self.loss, self.tasks = step, loss, list(tasks)
        shown = ", ".join(self.tasks[:20]) + (" ..." if len(self.tasks) > 20 else "")
        super().__init__(f"non-finite loss {loss} at step {step}; the batch held examples of: {shown or '?'}")


def measure_peak_flops(dtype: Any = jnp.bfloat16, devices: Sequence[jax.Device] | None = None,
                       size: int | None = None, repeats: int = 3) -> float:
    """Achievable matmul FLOP/s of all devices together, measured with one jitted matmul per local device.

    All local devices run at once, so fake CPU devices sharing cores are not counted several times over; the
    result is scaled by the process count (processes are assumed alike).
    """
    devices = list(devices if devices is not None else jax.local_devices())
    n = size or (1024 if devices[0].platform == "cpu" else 8192)
    mesh = Mesh(np.asarray(devices), ("d",))
    sharding = NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
    a = jax.device_put(jnp.ones((len(devices), n, n), dtype), sharding)
    b = jax.device_put(jnp.ones((len(devices), n, n), dtype), sharding)
    mm = jax.jit(lambda x, y: jnp.einsum("bij,bjk->bik", x, y, preferred_element_type=jnp.float32),
                 out_shardings=sharding)
    mm(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        mm(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 * len(devices) / best * jax.process_count()


class Trainer:
    """Jitted, sharded train and eval steps for a linen causal LM with logical partitioning.

    Args:
      model: linen module called as ``model(input_ids, segment_ids=, positions=, deterministic=,
        return_hidden=True)`` -> (final hidden states, tied output embedding), as `OPTForCausalLM`.
      config: the trainer recipe.
      mesh: the device mesh (see `partitioning.create_mesh`).
      rules: logical axis rules.
      global_batch_size, seq_len: shapes of the global batch the steps are compiled for.
    """

    def __init__(self, model: nn.Module, config: TrainerConfig, mesh: Mesh, rules: partitioning.LogicalRules,
                 *, global_batch_size: int, seq_len: int):
        self.model, self.config, self.mesh = model, config, mesh
        # The loss is the model's (shared with scoring), with this recipe's z-loss and LM-head chunking.
        self.lm = CausalLM(model, z_loss=config.z_loss, ce_chunk_tokens=config.ce_chunk_tokens)
        self.rules = partitioning.validate_rules(rules)
        self.global_batch_size, self.seq_len = global_batch_size, seq_len
        config.validate(global_batch_size, partitioning.data_parallel_size(mesh))
        self.tx = make_optimizer(config.optimizer)
        self.lr_schedule = learning_rate_schedule(config.optimizer)
        self.abstract_state, self.state_shardings = partitioning.abstract_params_and_shardings(
            self._boxed_init, mesh, self.rules, jax.random.PRNGKey(0))
        self.batch_shardings = {k: partitioning.batch_sharding(mesh, 2) for k in MODEL_FEATURES}
        self._train_step = jax.jit(
            self._train_step_impl, in_shardings=(self.state_shardings, self.batch_shardings),
            out_shardings=(self.state_shardings, partitioning.replicated(mesh)), donate_argnums=(0,))
        self._eval_step = jax.jit(
            self._eval_step_impl, in_shardings=(self.state_shardings.params, self.batch_shardings),
            out_shardings=partitioning.replicated(mesh))

    # ---- initialisation -------------------------------------------------------------------------------------
    def _dummy_inputs(self) -> jax.Array:
        return jnp.ones((1, min(self.seq_len, 8)), jnp.int32)

    def _boxed_params(self, rng: jax.Array) -> Any:
        return self.model.init({"params": rng}, self._dummy_inputs(), deterministic=True)["params"]

    def _boxed_init(self, rng: jax.Array) -> TrainState:
        params = self._boxed_params(rng)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params),
                          rng=jax.random.PRNGKey(self.config.seed))

    @property
    def abstract_params(self) -> Any:
        """ShapeDtypeStructs of the parameters, carrying their target shardings (an orbax restore target)."""
        return partitioning.with_shardings(self.abstract_state.params, self.state_shardings.params)

    def init_state(self, params: Any | None = None) -> TrainState:
        """A fresh train state, sharded: parameters from ``params`` (already sharded) or initialised from the seed."""
        seed = self.config.seed
        with self._context():
            if params is None:
                init = jax.jit(lambda r: nn.meta.unbox(self._boxed_init(r)), out_shardings=self.state_shardings)
                # Parameter init uses its own stream so the dropout stream (state.rng) is shared by every run.
                return init(jax.random.fold_in(jax.random.PRNGKey(seed), 1))

            def from_params(p):
                return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=self.tx.init(p),
                                  rng=jax.random.PRNGKey(seed))

            params = jax.tree.map(lambda x, a: x.astype(a.dtype), params, self.abstract_state.params)
            return jax.jit(from_params, in_shardings=(self.state_shardings.params,),
                           out_shardings=self.state_shardings)(params)

    def _context(self):
        # Activation constraints inside the model resolve logical names with these rules on this mesh.
        stack = contextlib.ExitStack()
        stack.enter_context(jax.set_mesh(self.mesh))
        stack.enter_context(nn.logical_axis_rules(list(self.rules)))
        return stack

    def _call_jitted(self, fn, *args):
        """Runs a jitted step under the mesh and logical-rules context, so the model's activation constraints apply."""
        with self._context():
            return fn(*args)

    # ---- steps ----------------------------------------------------------------------------------------------
    def _train_step_impl(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        step_rng = jax.random.fold_in(state.rng, state.step)
        m = self.config.num_microbatches

        def grad_sums(params, mb, rng):
            def f(p):
                loss_sum, w_sum = self.lm.loss(p, mb, dropout_rng=rng)
                return loss_sum, w_sum
            (loss_sum, w_sum), grads = jax.value_and_grad(f, has_aux=True)(params)
            return loss_sum, w_sum, grads

        if m == 1:
            loss_sum, w_sum, grads = grad_sums(state.params, batch, step_rng)
        else:
            # Microbatch i takes rows i, i+m, i+2m, ...: each device's contiguous block of rows contributes
            # equally to every microbatch, so no rows move between devices.
            def split(x):
                x = x.reshape((x.shape[0] // m, m) + x.shape[1:]).swapaxes(0, 1)
                return jax.lax.with_sharding_constraint(
                    x, NamedSharding(self.mesh, jax.sharding.PartitionSpec(
                        None, partitioning.BATCH_MESH_AXES, *([None] * (x.ndim - 2)))))
            micro = jax.tree.map(split, batch)

            def body(carry, xs):
                acc_loss, acc_w, acc_g = carry
                i, mb = xs
                l, w, g = grad_sums(state.params, mb, jax.random.fold_in(step_rng, i))
                return (acc_loss + l, acc_w + w, jax.tree.map(jnp.add, acc_g, g)), None

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            (loss_sum, w_sum, grads), _ = jax.lax.scan(
                body, (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), zeros), (jnp.arange(m), micro))
        denom = jnp.maximum(w_sum, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss_sum / denom, "grad_norm": grad_norm, "lr": self.lr_schedule(state.step),
            "target_tokens": w_sum,
        }
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    def _eval_step_impl(self, params, batch) -> dict:
        loss_sum, w_sum = self.lm.loss(params, batch)
        return {"loss_sum": loss_sum, "weight_sum": w_sum}

    # ---- host-facing API ------------------------------------------------------------------------------------
    def global_batch(self, local_batch: Mapping[str, np.ndarray]) -> dict:
        """Turns this process's numpy rows into global sharded arrays (model features only)."""
        local = {k: np.asarray(local_batch[k]) for k in MODEL_FEATURES}
        for k in ("decoder_input_tokens", "decoder_target_tokens", "decoder_segment_ids", "decoder_positions"):
            local[k] = local[k].astype(np.int32)
        local["decoder_loss_weights"] = local["decoder_loss_weights"].astype(np.float32)
        shape = local["decoder_input_tokens"].shape
        if shape[1] != self.seq_len:
            raise ValueError(f"batch has sequence length {shape[1]}, the trainer was built for {self.seq_len}")
        return partitioning.global_batch_from_local(self.mesh, local, self.global_batch_size)

    def train_step(self, state: TrainState, local_batch: Mapping[str, np.ndarray]) -> tuple[TrainState, dict]:
        """One optimizer update on the global batch; ``state`` is donated. Returns device metrics (not synced)."""
        return self.train_step_global(state, self.global_batch(local_batch))

    def train_step_global(self, state: TrainState, batch: Mapping[str, jax.Array]) -> tuple[TrainState, dict]:
        """`train_step` on a batch `global_batch` already put on the devices (ahead of time, `input_feed`)."""
        return self._call_jitted(self._train_step, state, batch)

    def compile_train_step(self, local_batch: Mapping[str, np.ndarray]) -> Any:
        """The train step compiled for this batch's shapes against the abstract state (nothing allocated);
        for XLA's cost and memory analyses (`compiled.memory_analysis()`)."""
        state = partitioning.with_shardings(self.abstract_state, self.state_shardings)
        with self._context():
            return self._train_step.lower(state, self.global_batch(local_batch)).compile()

    def eval_loss(self, params: Any, local_batches: Iterable[Mapping[str, np.ndarray]]) -> float:
        """Token-weighted mean loss over batches (deterministic: no dropout)."""
        total, weight = 0.0, 0.0
        for b in local_batches:
            out = self._call_jitted(self._eval_step, params, self.global_batch(b))
            total += float(out["loss_sum"])
            weight += float(out["weight_sum"])
        if weight == 0:
            raise ValueError("held-out batches carry no target tokens (all decoder_loss_weights are 0)")
        return total / weight


class StepTimer:
    """Tokens/s and MFU from wall time between consecutive synced steps."""

    def __init__(self, flops_per_token: float, peak_flops: float | None):
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self._last: float | None = None

    def start(self) -> None:
        """Marks the start of the timed interval (after compilation)."""
        self._last = time.perf_counter()

    def lap(self, tokens: int) -> dict[str, float]:
        """Throughput since the previous lap for ``tokens`` processed tokens."""
        now = time.perf_counter()
        dt = max(now - (self._last if self._last is not None else now), 1e-9)
        self._last = now
        tps = tokens / dt
        mfu = self.flops_per_token * tps / self.peak_flops if self.peak_flops else float("nan")
        return {"step_time_s": dt, "tokens_per_s": tps, "mfu": mfu}

