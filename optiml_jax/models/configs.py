"""OPT model configurations: the published OPT sizes, tiny test models and the CPU default.

`OPTConfig` mirrors Hugging Face's `OPTConfig` field names so that a checkpoint's `config.json` maps onto it
one to one, plus a few fields of ours (compute/parameter dtype, rematerialisation, attention kernel).

This is a leaf module: it imports nothing else of ours. `model_config` is the gin entry point used by
`gin/models/*.gin`; everything else takes plain `OPTConfig` values.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

import gin

from optiml_jax.errors import UserError

DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
# Fields that define the parameters' shapes and the computation: a checkpoint that differs in any of them holds
# another model. dtype, dropout, remat and attention kernel may differ on purpose between runs of one model.
ARCHITECTURE_FIELDS: tuple[str, ...] = (
    "vocab_size", "hidden_size", "num_hidden_layers", "ffn_dim", "num_attention_heads", "max_position_embeddings",
    "word_embed_proj_dim", "do_layer_norm_before", "remove_final_layer_norm", "enable_bias",
    "layer_norm_elementwise_affine")
# See models/attention.py. The fused kernels have no attention dropout; decoding (KV cache) always runs "xla".
ATTENTION_KERNELS: tuple[str, ...] = (
    "xla",     # explicit einsum + f32 softmax; every feature (attention dropout, any segment layout)
    "pallas",  # Pallas/Triton flash attention with segment ids: compiled on GPU, interpreted on CPU (tests)
    "splash",  # Pallas TPU splash attention with SegmentIds: compiled on TPU, interpreted on CPU (tests)
    "cudnn",   # jax.nn.dot_product_attention(implementation="cudnn"), GPU, bf16/f16: one segment per row only
)
# Kernels that cannot express a packed row (several segments): never for training, whose batches are packed.
UNPACKED_ONLY_ATTENTION_KERNELS: tuple[str, ...] = ("cudnn",)
ACTIVATIONS: tuple[str, ...] = ("relu",)  # every released OPT uses ReLU
# Rematerialisation of each decoder layer in the backward pass (jax.checkpoint policies, t5x/maxtext's names).
REMAT_POLICIES: tuple[str, ...] = (
    "none",                              # keep every activation (fastest, most memory)
    "full",                              # keep only each layer's input; recompute the whole layer
    "dots_saveable",                     # keep all matmul outputs, recompute element-wise ops
    "dots_with_no_batch_dims_saveable",  # keep projection/MLP matmul outputs, recompute attention (t5x "minimal")
)

# GPT-2's 50,257 BPE tokens padded to a multiple of 8 (the project's default tokenizer, see tokenizer.py).
GPT2_PADDED_VOCAB = 50264
# Every released OPT checkpoint: fairseq's 50,265 entries (4 specials + GPT-2's 50,261) padded to 50,272.
OPT_VOCAB = 50272


@dataclasses.dataclass(frozen=True)
class OPTConfig:
    """Shape and behaviour of an OPT decoder (Zhang et al. 2022), HF field names.

    `word_embed_proj_dim` None means "same as hidden_size" (no project_in/project_out), as in HF.
    `remove_final_layer_norm` is HF's `_remove_final_layer_norm` (pre-LN checkpoints fine-tuned before
    transformers 4.20 lack the final layer norm).
    """

    vocab_size: int = OPT_VOCAB
    hidden_size: int = 768
    num_hidden_layers: int = 12
    ffn_dim: int = 3072
    num_attention_heads: int = 12
    max_position_embeddings: int = 2048
    word_embed_proj_dim: int | None = None
    do_layer_norm_before: bool = True
    remove_final_layer_norm: bool = False
    enable_bias: bool = True
    layer_norm_elementwise_affine: bool = True
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_function: str = "relu"
    init_std: float = 0.02
    pad_token_id: int = 1
    bos_token_id: int = 2
    eos_token_id: int = 2
    # Ours (not in HF's config):
    dtype: str = "float32"          # compute dtype of activations and matmuls; logits are always f32
    param_dtype: str = "float32"    # storage dtype of the parameters
    remat: str = "none"             # per-layer rematerialisation policy, one of REMAT_POLICIES
    attention_kernel: str = "xla"
    # "xla" kernel outside decoding: queries in blocks of this many positions that skip the causal upper
    # triangle (models/attention.py, causal_block_attention); 0 = the whole [L, L] score matrix at once.
    attention_query_block: int = 0
    name: str = ""                  # informational: the get_config() name it came from

    def __post_init__(self) -> None:
        if self.word_embed_proj_dim is None:
            object.__setattr__(self, "word_embed_proj_dim", self.hidden_size)
        positive = ("vocab_size", "hidden_size", "num_hidden_layers", "ffn_dim", "num_attention_heads",
                    "max_position_embeddings", "word_embed_proj_dim")
        for field in positive:
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"OPTConfig.{field} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"OPTConfig.hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})")
        for field in ("dropout", "attention_dropout"):
            value = getattr(self, field)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"OPTConfig.{field} must be in [0, 1), got {value!r}")
        for field in ("dtype", "param_dtype"):
            if getattr(self, field) not in DTYPES:
                raise ValueError(f"OPTConfig.{field} must be one of {DTYPES}, got {getattr(self, field)!r}")
        if self.attention_kernel not in ATTENTION_KERNELS:
            raise ValueError(
                f"OPTConfig.attention_kernel must be one of {ATTENTION_KERNELS}, got {self.attention_kernel!r}")
        block = self.attention_query_block
        if not isinstance(block, int) or isinstance(block, bool) or block < 0:
            raise ValueError(f"OPTConfig.attention_query_block must be a non-negative integer (0: no blocks), "
                             f"got {block!r}")
        if isinstance(self.remat, bool):  # configs and checkpoints written before remat policies had a bool
            object.__setattr__(self, "remat", "full" if self.remat else "none")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"OPTConfig.remat must be one of {REMAT_POLICIES}, got {self.remat!r}")
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(
                f"OPTConfig.activation_function must be one of {ACTIVATIONS}, got {self.activation_function!r}")

    # ----------------------------------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        """Size of one attention head."""
        return self.hidden_size // self.num_attention_heads

    @property
    def has_projections(self) -> bool:
        """Whether the model has project_in/project_out (word embeddings narrower than the residual stream)."""
        return self.word_embed_proj_dim != self.hidden_size

    @property
    def has_final_layer_norm(self) -> bool:
        """HF adds `decoder.final_layer_norm` only to pre-LN models (post-LN models end on a layer norm)."""
        return self.do_layer_norm_before and not self.remove_final_layer_norm

    def replace(self, **changes: Any) -> "OPTConfig":
        """A copy with some fields changed (validated); unknown field names raise a ValueError naming them."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown OPTConfig field(s) {unknown}; valid fields: "
                             f"{[f.name for f in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **changes)

    def architecture_diff(self, other: "OPTConfig", fields: tuple[str, ...] = ARCHITECTURE_FIELDS
                          ) -> list[tuple[str, Any, Any]]:
        """``(field, self's value, other's value)`` for every architecture field where the two configs differ."""
        return [(f, getattr(self, f), getattr(other, f)) for f in fields if getattr(self, f) != getattr(other, f)]

    # ----------------------------------------------------------------------------------------------------------
    def num_params(self) -> int:
        """Number of parameters, counting the tied output embedding once (= HF `num_parameters()`)."""
        d, f, w = self.hidden_size, self.ffn_dim, self.word_embed_proj_dim
        bias = 1 if self.enable_bias else 0
        norm = 2 * d if self.layer_norm_elementwise_affine else 0
        attention = 4 * d * d + 4 * d * bias
        mlp = d * f + f * bias + f * d + d * bias
        per_layer = attention + mlp + 2 * norm
        total = self.vocab_size * w + (self.max_position_embeddings + 2) * d
        total += self.num_hidden_layers * per_layer
        if self.has_projections:
            total += 2 * d * w  # project_in and project_out, no bias
        if self.has_final_layer_norm:
            total += norm
        return total

    def num_embedding_params(self) -> int:
        """Token plus learned position embedding parameters."""
        return self.vocab_size * self.word_embed_proj_dim + (self.max_position_embeddings + 2) * self.hidden_size

    def flops_per_token(self, seq_len: int, *, causal_attention: bool = False) -> float:
        """Training FLOPs per token (forward + backward) at sequence length `seq_len`, PaLM-style.

        `6 * N_matmul + 12 * num_layers * hidden_size * seq_len`, where N_matmul counts every parameter that
        takes part in a matmul: all parameters except the position embeddings (a lookup). The token embedding
        is counted once because the tied output projection multiplies by it. The attention term covers QK^T and
        attention-times-V over the full (unmasked) length, the usual convention for MFU; ``causal_attention``
        halves it (the work of a causal kernel). See `optiml_jax.flops` for the peak MFU divides by.
        """
        if seq_len <= 0:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        n_matmul = self.num_params() - (self.max_position_embeddings + 2) * self.hidden_size
        attention = 12.0 * self.num_hidden_layers * self.hidden_size * seq_len
        return 6.0 * n_matmul + (attention / 2 if causal_attention else attention)

    # ----------------------------------------------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, hf: Mapping[str, Any], **overrides: Any) -> "OPTConfig":
        """Builds a config from a HF OPT `config.json` dict; fields of ours come from `overrides`."""
        model_type = hf.get("model_type", "opt")
        if model_type != "opt":
            raise ValueError(f"config.json: model_type is {model_type!r}, expected 'opt'")
        required = ("vocab_size", "hidden_size", "num_hidden_layers", "ffn_dim", "num_attention_heads")
        missing = [k for k in required if k not in hf]
        if missing:
            raise ValueError(f"config.json: missing field(s) {missing}")
        defaults = cls()
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            hf_key = "_remove_final_layer_norm" if field.name == "remove_final_layer_norm" else field.name
            if field.name in ("dtype", "param_dtype", "remat", "attention_kernel", "attention_query_block", "name"):
                continue
            if hf_key in hf and hf[hf_key] is not None:
                values[field.name] = hf[hf_key]
            elif field.name == "word_embed_proj_dim":
                values[field.name] = None
            else:
                values[field.name] = getattr(defaults, field.name)
        values.update(overrides)
        return cls(**values)

    def to_hf_dict(self) -> dict[str, Any]:
        """The HF `config.json` content for `OPTForCausalLM` with this shape."""
        return {
            "architectures": ["OPTForCausalLM"],
            "model_type": "opt",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "ffn_dim": self.ffn_dim,
            "num_attention_heads": self.num_attention_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "word_embed_proj_dim": self.word_embed_proj_dim,
            "do_layer_norm_before": self.do_layer_norm_before,
            "_remove_final_layer_norm": self.remove_final_layer_norm,
            "enable_bias": self.enable_bias,
            "layer_norm_elementwise_affine": self.layer_norm_elementwise_affine,
            "dropout": self.dropout,
            "attention_dropout": self.attention_dropout,
            "activation_function": self.activation_function,
            "init_std": self.init_std,
            "layerdrop": 0.0,
            "pad_token_id": self.pad_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "use_cache": True,
            "torch_dtype": self.param_dtype,
        }

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-serialisable dict (our checkpoint's config.json)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "OPTConfig":
        """Inverse of `to_dict`; unknown keys raise a ValueError naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown OPTConfig field(s) {unknown}")
        return cls(**dict(d))

    def to_json(self) -> str:
        """`to_dict` as indented JSON."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# HF hyper-parameters of the released OPT models (facebook/opt-*/config.json).
_OPT_SHAPES: dict[str, dict[str, Any]] = {
    "opt-125m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, ffn_dim=3072),
    "opt-350m": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, ffn_dim=4096,
                     word_embed_proj_dim=512, do_layer_norm_before=False),
    "opt-1.3b": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, ffn_dim=8192),
    "opt-2.7b": dict(hidden_size=2560, num_hidden_layers=32, num_attention_heads=32, ffn_dim=10240),
    "opt-6.7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, ffn_dim=16384),
    "opt-13b": dict(hidden_size=5120, num_hidden_layers=40, num_attention_heads=40, ffn_dim=20480),
    "opt-30b": dict(hidden_size=7168, num_hidden_layers=48, num_attention_heads=56, ffn_dim=28672),
    "opt-66b": dict(hidden_size=9216, num_hidden_layers=64, num_attention_heads=72, ffn_dim=36864),
    "opt-175b": dict(hidden_size=12288, num_hidden_layers=96, num_attention_heads=96, ffn_dim=49152),
}
_SMALL_SHAPES: dict[str, dict[str, Any]] = {
    # Unit-test sized; OPT's vocabulary so that real OPT token ids fit.
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=256,
                 max_position_embeddings=512),
    # The opt-350m layout (post-LN, project_in/out) at test size.
    "tiny-postln": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=256,
                        max_position_embeddings=512, word_embed_proj_dim=32, do_layer_norm_before=False),
    # The CPU default: trains a few hundred steps in minutes on 2 cores, GPT-2 tokenizer vocabulary.
    "tiny-cpu": dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=6, ffn_dim=768,
                     max_position_embeddings=1024, vocab_size=GPT2_PADDED_VOCAB),
}
CONFIG_NAMES: tuple[str, ...] = tuple(_OPT_SHAPES) + tuple(_SMALL_SHAPES)


def get_config(name: str) -> OPTConfig:
    """The named configuration: "opt-125m" ... "opt-175b", "tiny", "tiny-postln" or "tiny-cpu"."""
    shape = _OPT_SHAPES.get(name, _SMALL_SHAPES.get(name))
    if shape is None:
        raise ValueError(f"unknown model config {name!r}; known: {list(CONFIG_NAMES)}")
    return OPTConfig(name=name, **shape)


@gin.configurable
def model_config(name: str = "tiny-cpu", **overrides: Any) -> OPTConfig:
    """Gin entry point: `get_config(name)` with field overrides (e.g. `model_config.dtype = "bfloat16"`)."""
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(OPTConfig)})
    if unknown:
        raise UserError(f"model_config.{unknown[0]}: unknown OPTConfig field {unknown[0]!r} (check the spelling of "
                        f"--gin.optiml_jax.models.configs.model_config.{unknown[0]}=...); valid fields: "
                        f"{', '.join(f.name for f in dataclasses.fields(OPTConfig))}")
    try:
        return get_config(name).replace(**overrides)
    except ValueError as e:
        raise UserError(f"model_config(name={name!r}): {e}") from None
