"""The mapping between Hugging Face OPT state-dict names/layouts and our Flax `OPTForCausalLM` params tree.

Pure: no file IO. `parameter_map` lists every parameter of a config with its HF name and the layout transforms
both ways; the path helpers walk our nested params dict; `params_to_hf` turns a params tree into HF-named,
torch-layout numpy arrays one at a time. The readers and writers of files are `hf_io` (HF directories) and
`convert` (our checkpoints).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from optiml_jax.errors import UserError
from optiml_jax.models.configs import OPTConfig

# The prefix of decoder tensors in a HF `OPTForCausalLM` state dict ("decoder." in an `OPTModel` one).
HF_PREFIX = "model.decoder."


class CheckpointError(UserError):
    """A checkpoint (ours or HF) is missing, malformed or does not match its config."""


def bfloat16() -> np.dtype:
    """numpy's bfloat16 dtype (numpy has none of its own: ml_dtypes', as jax uses)."""
    import ml_dtypes  # a jax dependency; imported lazily to keep this module light

    return np.dtype(ml_dtypes.bfloat16)


def np_dtype(name: str) -> np.dtype:
    """The numpy dtype of one of our dtype names ("float32", "bfloat16", ...)."""
    return bfloat16() if name == "bfloat16" else np.dtype(name)


def dtype_name(dtype: np.dtype) -> str:
    """Our name of a numpy dtype (the inverse of `np_dtype`)."""
    return "bfloat16" if dtype == bfloat16() else np.dtype(dtype).name


@dataclasses.dataclass(frozen=True)
class ParamMapping:
    """One HF tensor <-> one of our parameters, with the layout transforms both ways."""

    hf_key: str                       # without the "model.decoder." prefix
    path: tuple[str, ...]             # path in our params tree
    hf_shape: tuple[int, ...]
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]


def _identity(x: np.ndarray) -> np.ndarray:
    return x


def _transpose(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.T)


def parameter_map(config: OPTConfig) -> list[ParamMapping]:
    """Every parameter of `OPTForCausalLM(config)` with its HF name (no prefix) and layout transforms.

    torch Linear weights are [out, in]; ours are [in, out], with attention projections split into
    (heads, head_dim) so that the heads axis can be sharded.
    """
    d, f, w, v = config.hidden_size, config.ffn_dim, config.word_embed_proj_dim, config.vocab_size
    h, hd = config.num_attention_heads, config.head_dim

    def qkv_kernel_to_ours(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x.T).reshape(d, h, hd)

    def qkv_kernel_to_hf(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x.reshape(d, d).T)

    def out_kernel_to_ours(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x.T).reshape(h, hd, d)

    def out_kernel_to_hf(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x.reshape(d, d).T)

    def heads_bias_to_ours(x: np.ndarray) -> np.ndarray:
        return x.reshape(h, hd)

    def heads_bias_to_hf(x: np.ndarray) -> np.ndarray:
        return x.reshape(d)

    out: list[ParamMapping] = [
        ParamMapping("embed_tokens.weight", ("embed_tokens", "embedding"), (v, w), _identity, _identity),
        ParamMapping("embed_positions.weight", ("embed_positions", "embedding"),
                     (config.max_position_embeddings + 2, d), _identity, _identity),
    ]
    if config.has_projections:
        out.append(ParamMapping("project_in.weight", ("project_in", "kernel"), (d, w), _transpose, _transpose))
        out.append(ParamMapping("project_out.weight", ("project_out", "kernel"), (w, d), _transpose, _transpose))

    def layer_norm(hf_name: str, path: tuple[str, ...]) -> list[ParamMapping]:
        if not config.layer_norm_elementwise_affine:
            return []
        return [ParamMapping(f"{hf_name}.weight", path + ("scale",), (d,), _identity, _identity),
                ParamMapping(f"{hf_name}.bias", path + ("bias",), (d,), _identity, _identity)]

    for i in range(config.num_hidden_layers):
        hf, ours = f"layers.{i}.", (f"layers_{i}",)
        for proj in ("q_proj", "k_proj", "v_proj"):
            out.append(ParamMapping(f"{hf}self_attn.{proj}.weight", ours + ("self_attn", proj, "kernel"), (d, d),
                                    qkv_kernel_to_ours, qkv_kernel_to_hf))
            if config.enable_bias:
                out.append(ParamMapping(f"{hf}self_attn.{proj}.bias", ours + ("self_attn", proj, "bias"), (d,),
                                        heads_bias_to_ours, heads_bias_to_hf))
        out.append(ParamMapping(f"{hf}self_attn.out_proj.weight", ours + ("self_attn", "out_proj", "kernel"),
                                (d, d), out_kernel_to_ours, out_kernel_to_hf))
        if config.enable_bias:
            out.append(ParamMapping(f"{hf}self_attn.out_proj.bias", ours + ("self_attn", "out_proj", "bias"),
                                    (d,), _identity, _identity))
        out += layer_norm(f"{hf}self_attn_layer_norm", ours + ("self_attn_layer_norm",))
        out.append(ParamMapping(f"{hf}fc1.weight", ours + ("fc1", "kernel"), (f, d), _transpose, _transpose))
        out.append(ParamMapping(f"{hf}fc2.weight", ours + ("fc2", "kernel"), (d, f), _transpose, _transpose))
        if config.enable_bias:
            out.append(ParamMapping(f"{hf}fc1.bias", ours + ("fc1", "bias"), (f,), _identity, _identity))
            out.append(ParamMapping(f"{hf}fc2.bias", ours + ("fc2", "bias"), (d,), _identity, _identity))
        out += layer_norm(f"{hf}final_layer_norm", ours + ("final_layer_norm",))
    if config.has_final_layer_norm:
        out += layer_norm("final_layer_norm", ("final_layer_norm",))
    return out


def param_groups(config: OPTConfig) -> dict[str, list[ParamMapping]]:
    """`parameter_map` split by top-level parameter (embed_tokens, layers_0, ...): the unit of streaming."""
    groups: dict[str, list[ParamMapping]] = {}
    for m in parameter_map(config):
        groups.setdefault(m.path[0], []).append(m)
    return groups


def set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    """Stores ``value`` at ``path`` of a nested dict, creating the intermediate dicts."""
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def get_path(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """The leaf at ``path`` of a nested mapping; `CheckpointError` naming the first missing key."""
    node: Any = tree
    for i, key in enumerate(path):
        if not isinstance(node, Mapping) or key not in node:
            raise CheckpointError(f"params: missing parameter {'/'.join(path[:i + 1])}")
        node = node[key]
    return node


def flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """{path tuple: leaf} of a nested mapping."""
    flat: dict[tuple[str, ...], Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            flat.update(flatten(v, prefix + (k,)))
        else:
            flat[prefix + (k,)] = v
    return flat


def params_to_hf(params: Mapping[str, Any], config: OPTConfig) -> Iterator[tuple[str, np.ndarray]]:
    """Yields ("model.decoder.<name>", torch-layout numpy array) for every parameter, one at a time."""
    expected = {m.path for m in parameter_map(config)}
    extra = sorted("/".join(p) for p in set(flatten(params)) - expected)
    if extra:
        raise CheckpointError(f"params: unexpected parameter(s) for this config: {extra[:8]}")
    for m in parameter_map(config):
        value = np.asarray(get_path(params, m.path))
        arr = m.to_hf(value)
        if tuple(arr.shape) != m.hf_shape:
            raise CheckpointError(f"params: {'/'.join(m.path)} has shape {value.shape}, which does not give "
                                  f"{m.hf_key} shape {m.hf_shape}")
        yield HF_PREFIX + m.hf_key, arr
