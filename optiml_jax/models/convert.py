"""Our checkpoint format (config.json + orbax params + tokenizer files) and whole-directory HF <-> ours conversion.

Our checkpoint directory:

    CKPT_DIR/config.json      OPTConfig.to_dict()
    CKPT_DIR/params/          orbax StandardCheckpointer tree of the `params` collection
    CKPT_DIR/tokenizer/       optional: vocab.json + merges.txt and/or tokenizer.json (+ HF tokenizer configs)

`import_hf` / `export_hf` (``python -m optiml_jax.convert``) stream one parameter group at a time between a HF
directory (`hf_io`, names and layouts from `hf_mapping`) and ours, so peak host memory is about a layer plus the
token embedding. Writes go to a sibling `*.tmp-XXXX` directory renamed into place only when complete.

The HF-side names (`load_hf_checkpoint`, `save_hf_checkpoint`, `HFWeights`, `params_to_hf`, `parameter_map`,
`write_safetensors*`, ...) live in `hf_io` and `hf_mapping`; they are re-exported here for existing callers.
"""
from __future__ import annotations

import os
import pathlib
import shutil
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from optiml_jax.models.configs import OPTConfig
from optiml_jax.models.hf_io import (
    CONFIG_FILE,
    DEFAULT_MAX_SHARD_BYTES,
    AtomicDir,
    HFWeights,
    copy_tokenizer,
    iter_hf_params,
    load_hf_checkpoint,
    load_hf_config,
    read_json,
    save_hf_checkpoint,
    write_hf_dir,
    write_safetensors,
    write_safetensors_stream,
)
from optiml_jax.models.hf_mapping import (
    CheckpointError,
    dtype_name,
    flatten,
    get_path,
    np_dtype,
    param_groups,
    parameter_map,
    params_to_hf,
    set_path,
)

# Ours, then the HF-side names re-exported for the callers that import them from here.
__all__ = [
    "PARAMS_DIR", "TOKENIZER_DIR", "save_checkpoint", "load_config", "load_exported_params", "load_model",
    "save_checkpoint_streaming", "import_hf", "iter_checkpoint_hf", "export_hf",
    "CONFIG_FILE", "CheckpointError", "HFWeights", "load_hf_checkpoint", "save_hf_checkpoint", "params_to_hf",
    "parameter_map", "write_safetensors", "write_safetensors_stream",
]

PathLike = str | os.PathLike

PARAMS_DIR = "params"
TOKENIZER_DIR = "tokenizer"


# ---------------------------------------------------------------------------------------------------------------
# Our checkpoints
# ---------------------------------------------------------------------------------------------------------------
def save_checkpoint(ckpt_dir: PathLike, params: Mapping[str, Any], config: OPTConfig,
                    tokenizer_dir: PathLike | None = None, *, overwrite: bool = False) -> pathlib.Path:
    """Writes our checkpoint (config.json, orbax params/, tokenizer/ copied from `tokenizer_dir` if present).

    `params` is the unboxed `params` collection (numpy or jax arrays). Written atomically.
    """
    import orbax.checkpoint as ocp

    missing = [m.path for m in parameter_map(config)]
    flat = flatten(params)
    absent = ["/".join(p) for p in missing if p not in flat]
    if absent:
        raise CheckpointError(f"params: missing parameter(s) for this config: {absent[:8]}")
    with AtomicDir(ckpt_dir, overwrite) as tmp:
        (tmp / CONFIG_FILE).write_text(config.to_json())
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(tmp / PARAMS_DIR, dict(params))
        checkpointer.wait_until_finished()
        checkpointer.close()
        copy_tokenizer(pathlib.Path(tokenizer_dir) if tokenizer_dir else None, tmp / TOKENIZER_DIR)
    return pathlib.Path(ckpt_dir)


def load_config(ckpt_dir: PathLike) -> OPTConfig:
    """The `OPTConfig` of one of our checkpoints."""
    path = pathlib.Path(ckpt_dir) / CONFIG_FILE
    if not pathlib.Path(ckpt_dir).is_dir():
        raise CheckpointError(f"{ckpt_dir}: checkpoint directory not found")
    data = read_json(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    try:
        return OPTConfig.from_dict(data)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: {e}") from None


def _checked_metadata(ckpt_dir: PathLike, config: OPTConfig) -> tuple[pathlib.Path, dict, dict]:
    """(params path, expected flat shapes from `config`, stored flat metadata), checking names and shapes."""
    import flax.linen as nn
    import orbax.checkpoint as ocp

    from optiml_jax.models.opt import OPTForCausalLM

    path = pathlib.Path(ckpt_dir).absolute() / PARAMS_DIR
    if not path.is_dir():
        raise CheckpointError(f"{path}: params directory not found (not one of our checkpoints, or incomplete)")
    expected = flatten(nn.meta.unbox(OPTForCausalLM(config).abstract_params()))
    checkpointer = ocp.StandardCheckpointer()
    try:
        stored = flatten(checkpointer.metadata(path).item_metadata.tree)
    except Exception as e:  # orbax raises assorted types for unreadable metadata
        raise CheckpointError(f"{path}: cannot read checkpoint metadata: {e}") from None
    finally:
        checkpointer.close()
    for key, spec in expected.items():
        if key not in stored:
            raise CheckpointError(f"{path}: parameter {'/'.join(key)} missing (config.json expects shape "
                                  f"{spec.shape})")
        if tuple(stored[key].shape) != tuple(spec.shape):
            raise CheckpointError(f"{path}: parameter {'/'.join(key)} has shape {tuple(stored[key].shape)}, "
                                  f"config.json expects {spec.shape}")
    extra = sorted("/".join(k) for k in set(stored) - set(expected))
    if extra:
        raise CheckpointError(f"{path}: unexpected parameter(s) not described by config.json: {extra[:8]}")
    return path, expected, stored


def load_exported_params(ckpt_dir: PathLike, config: OPTConfig, shardings: Any = None,
                dtype: str | None = None) -> dict[str, Any]:
    """Restores the params tree, checking every name and shape against `config`.

    `shardings`: optional pytree of `jax.sharding.Sharding` matching the params: orbax reads each process's
    shards straight into them (no full copy anywhere); without it, arrays land on the default device.
    `dtype`: restore in this dtype (orbax casts while reading, e.g. a float32 checkpoint served in bfloat16);
    None keeps the stored dtype.
    """
    import jax
    import orbax.checkpoint as ocp

    path, expected, stored = _checked_metadata(ckpt_dir, config)
    checkpointer = ocp.StandardCheckpointer()
    flat_shardings = flatten(shardings) if shardings is not None else {}
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target: dict[str, Any] = {}
    for key, spec in expected.items():
        set_path(target, key, jax.ShapeDtypeStruct(spec.shape, np_dtype(dtype) if dtype else stored[key].dtype,
                                                    sharding=flat_shardings.get(key, default)))
    try:
        restored = checkpointer.restore(path, target)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot restore parameters: {e}") from None
    finally:
        checkpointer.close()
    return restored


def load_model(ckpt_dir: PathLike, dtype: str | None = None, *, shardings: Any = None,
               param_dtype: str | None = None) -> tuple[Any, dict[str, Any]]:
    """`(OPTForCausalLM, params)` from one of our checkpoints; `dtype` overrides the compute dtype,
    `param_dtype` the dtype the parameters are restored in (see `load_exported_params` for `shardings`).

    Use as `model.apply({"params": params}, input_ids)`.
    """
    from optiml_jax.models.opt import OPTForCausalLM

    config = load_config(ckpt_dir)
    for field, value in (("dtype", dtype), ("param_dtype", param_dtype)):
        if value is not None:
            try:
                config = config.replace(**{field: value})
            except ValueError as e:
                raise CheckpointError(f"load_model({field}={value!r}): {e}") from None
    return OPTForCausalLM(config), load_exported_params(ckpt_dir, config, shardings, dtype=param_dtype)


# ---------------------------------------------------------------------------------------------------------------
# Whole-directory conversions (used by `python -m optiml_jax.convert`)
# ---------------------------------------------------------------------------------------------------------------
def save_checkpoint_streaming(ckpt_dir: PathLike, groups: Iterable[tuple[str, Mapping[str, Any]]],
                              config: OPTConfig, tokenizer_dir: PathLike | None = None, *,
                              overwrite: bool = False) -> pathlib.Path:
    """`save_checkpoint` for params produced one top-level group at a time ((name, subtree) pairs): each group is
    written with orbax's partial save and dropped, so memory holds one group, not the model. Written atomically;
    the result is the same orbax params tree `load_exported_params` reads."""
    from orbax.checkpoint.experimental.v1 import partial

    expected = {m.path for m in parameter_map(config)}
    seen: set[tuple[str, ...]] = set()
    with AtomicDir(ckpt_dir, overwrite) as tmp:
        (tmp / CONFIG_FILE).write_text(config.to_json())
        staging = tmp / "params.partial"
        for name, tree in groups:
            seen.update((name,) + k for k in flatten(tree))
            partial.save(staging, {name: dict(tree)})
        absent = sorted("/".join(p) for p in expected - seen)
        if absent:
            raise CheckpointError(f"params: missing parameter(s) for this config: {absent[:8]}")
        partial.finalize(staging)
        # orbax's v1 layout keeps the tree in the "state" checkpointable: that directory is a standard orbax
        # PyTree checkpoint, the one `load_exported_params` restores.
        os.replace(staging / "state", tmp / PARAMS_DIR)
        shutil.rmtree(staging)
        copy_tokenizer(pathlib.Path(tokenizer_dir) if tokenizer_dir else None, tmp / TOKENIZER_DIR)
    return pathlib.Path(ckpt_dir)


def import_hf(hf_dir: PathLike, ckpt_dir: PathLike, *, param_dtype: str = "float32",
              overwrite: bool = False) -> OPTConfig:
    """HF OPT dir -> our checkpoint (params, config, tokenizer files), streamed one layer at a time (peak host
    memory: a layer plus the token embedding). Returns the config."""
    hf_dir = pathlib.Path(hf_dir)
    if not hf_dir.is_dir():
        raise CheckpointError(f"{hf_dir}: HF checkpoint directory not found")
    config = load_hf_config(hf_dir, param_dtype=param_dtype)
    save_checkpoint_streaming(ckpt_dir, iter_hf_params(hf_dir, config), config, tokenizer_dir=hf_dir,
                              overwrite=overwrite)
    return config


def iter_checkpoint_hf(ckpt_dir: PathLike, config: OPTConfig, dtype: np.dtype, *, shardings: Any = None
                       ) -> Iterator[np.ndarray]:
    """Our checkpoint's tensors in HF layout and `parameter_map` order, restored one top-level group at a time
    (orbax partial restore, cast to ``dtype`` while reading) into ``shardings`` (a params-shaped pytree of
    shardings, e.g. a mesh's; default: the first device) and gathered to the host one tensor at a time."""
    import jax
    import orbax.checkpoint as ocp

    from optiml_jax.partitioning import to_host

    path, expected, _ = _checked_metadata(ckpt_dir, config)
    flat_shardings = flatten(shardings) if shardings is not None else {}
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        for name, mappings in param_groups(config).items():
            target: dict[str, Any] = {}
            for m in mappings:
                set_path(target, m.path, jax.ShapeDtypeStruct(expected[m.path].shape, dtype,
                                                               sharding=flat_shardings.get(m.path, default)))
            try:
                restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
                    item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                    partial_restore=True))
            except Exception as e:
                raise CheckpointError(f"{path}: cannot restore {name}: {e}") from None
            for m in mappings:
                yield m.to_hf(to_host(get_path(restored, m.path)))
            del restored
    finally:
        checkpointer.close()


def export_hf(ckpt_dir: PathLike, out_dir: PathLike, *, param_dtype: str | None = None, overwrite: bool = False,
              max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, shardings: Any = None) -> OPTConfig:
    """Our checkpoint -> HF OPT dir loadable by `OPTForCausalLM.from_pretrained`. Returns the config.

    Streams: one parameter group is restored (into ``shardings`` when given, see `iter_checkpoint_hf`) and one
    tensor is on the host at a time; sharded safetensors with the HF index above ``max_shard_bytes``. In a
    multi-process run every process restores and gathers, process 0 writes.
    """
    from optiml_jax.partitioning import is_output_process

    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    config = load_config(ckpt_dir)
    _, _, stored = _checked_metadata(ckpt_dir, config)
    dtype = np_dtype(param_dtype) if param_dtype else np.dtype(stored[("embed_tokens", "embedding")].dtype)
    arrays = iter_checkpoint_hf(ckpt_dir, config, dtype, shardings=shardings)
    tokenizer = pathlib.Path(ckpt_dir) / TOKENIZER_DIR
    if not is_output_process():
        for _ in arrays:  # the gathers are collectives: take part, write nothing
            pass
        return config.replace(param_dtype=dtype_name(dtype))
    with AtomicDir(out_dir, overwrite) as tmp:
        write_hf_dir(tmp, config, dtype, arrays, max_shard_bytes, tokenizer if tokenizer.is_dir() else None)
    return config.replace(param_dtype=dtype_name(dtype))
