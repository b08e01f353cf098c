"""In which dtype the model's compute-dtype matmuls return their result, per backend.

Every backend accumulates a bf16 matmul in f32; what differs is which *result* dtype it runs natively:

- XLA's CPU backend cannot run a dot whose result is bf16: it upcasts both operands and runs an f32 matmul at
  half the bf16 rate. Asking for the f32 result (then casting to the compute dtype) keeps the operands bf16
  (bench/README.md: the forward fc matmuls 50-55 -> 30-38 ms at 125m-2l).
- On GPUs and TPUs a bf16-result dot is native, and an f32 result would cost more than the extra bytes: JAX
  transposes an f32-result dot with the f32 cotangent, so every gradient matmul would have one f32 and one bf16
  operand, which XLA upcasts to an f32 (TF32 at best) matmul -- half of the tensor cores' bf16 rate for two
  thirds of the step's FLOPs. There the result stays in the compute dtype (flax's default), so the cotangents,
  and with them the gradient matmuls, are bf16.

Scores and logits that feed a softmax are not covered here: they are f32 on every backend.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax


def dot_result_dtype(compute_dtype: Any) -> Any:
    """The result dtype for a matmul of ``compute_dtype`` operands: f32 on the CPU backend, else the compute
    dtype (see the module docstring). Decided at trace time from ``jax.default_backend()``."""
    return jnp.float32 if jax.default_backend() == "cpu" else compute_dtype


def compute_dot(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any, precision: Any = None,
                preferred_element_type: Any = None) -> jax.Array:
    """flax's ``dot_general`` hook: `lax.dot_general` with the result in `dot_result_dtype` of the operands
    (the caller casts it to the compute dtype); ``preferred_element_type`` is overridden."""
    del preferred_element_type
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                           preferred_element_type=dot_result_dtype(jnp.result_type(lhs, rhs)))
