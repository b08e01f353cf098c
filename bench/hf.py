"""The Hugging Face PyTorch reference: `OPTForCausalLM` holding exactly our parameters."""
from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("USE_TF", "0")  # transformers 4.x would import TensorFlow otherwise


def hf_model_from_params(config: Any, params: Any, *, attn_implementation: str = "sdpa", train: bool = False):
    """A transformers `OPTForCausalLM` (f32) with our `params` copied in via `hf_mapping.params_to_hf`.

    `attn_implementation` "sdpa" (PyTorch's fused scaled_dot_product_attention, HF's default) is the strongest
    CPU baseline; "eager" is HF's reference einsum path.
    """
    import numpy as np
    import torch
    from transformers import OPTConfig as HFOPTConfig
    from transformers import OPTForCausalLM as HFOPTForCausalLM

    from optiml_jax.models.hf_mapping import params_to_hf

    hf_cfg = HFOPTConfig.from_dict(config.to_hf_dict())
    hf_cfg._attn_implementation = attn_implementation
    with torch.device("meta"):
        model = HFOPTForCausalLM(hf_cfg)
    state = {name: torch.from_numpy(np.array(arr, dtype=np.float32, order="C", copy=True))
             for name, arr in params_to_hf(params, config)}
    model = model.to_empty(device="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if m != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"HF state dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    if not model.lm_head.weight is model.model.decoder.embed_tokens.weight:  # noqa: E714
        raise RuntimeError("HF lm_head is not tied to embed_tokens after tie_weights()")
    model.train(train)
    return model
