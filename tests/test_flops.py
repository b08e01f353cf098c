"""MFU's peak: chip spec table lookup, user-given peaks, same-run matmul fallback labelled as such."""
import types

import pytest

from optiml_jax import flops
from optiml_jax.models.configs import get_config


def dev(platform, kind):
    return types.SimpleNamespace(platform=platform, device_kind=kind)


@pytest.mark.parametrize("kind, name, tflops", [
    ("NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM", 989.4),
    ("NVIDIA H100 PCIe", "NVIDIA H100 PCIe", 756.0),
    ("NVIDIA H200", "NVIDIA H200 SXM", 989.4),
    ("NVIDIA A100-SXM4-40GB", "NVIDIA A100 (40/80 GB)", 312.0),
    ("NVIDIA A100 80GB PCIe", "NVIDIA A100 (40/80 GB)", 312.0),
    ("NVIDIA L4", "NVIDIA L4", 121.0),
    ("TPU v4", "TPU v4", 275.0),
    ("TPU v5 lite", "TPU v5e", 197.0),
    ("TPU v5p", "TPU v5p", 459.0),
    ("TPU v6 lite", "TPU v6e", 918.0),
])
def test_known_chips(kind, name, tflops):
    chip = flops.chip_for(kind)
    assert chip is not None and chip.name == name and chip.bf16_flops == pytest.approx(tflops * 1e12)
    peak = flops.resolve_peak([dev("gpu", kind)] * 8, dtype="bfloat16", measure=lambda: 1 / 0)
    assert peak.flops_per_s == pytest.approx(8 * tflops * 1e12) and peak.basis == f"spec:{name} bf16 dense x8"
    assert peak.is_hardware_peak


def test_unknown_chips_cpu_and_given_peaks():
    assert flops.chip_for("NVIDIA L40S") is None and flops.chip_for("cpu") is None
    cpu = flops.resolve_peak([dev("cpu", "cpu")], dtype="float32", measure=lambda: 2e11)
    assert cpu.flops_per_s == 2e11 and cpu.basis == "measured-matmul:float32" and not cpu.is_hardware_peak
    unknown = flops.resolve_peak([dev("gpu", "NVIDIA L40S")], dtype="bfloat16", measure=lambda: 3e14)
    assert unknown.basis == "measured-matmul:bfloat16"
    given = flops.resolve_peak([dev("gpu", "NVIDIA H100 80GB HBM3")] * 2, dtype="bfloat16", per_device=1e15,
                               measure=lambda: 1 / 0)
    assert given.flops_per_s == 2e15 and given.basis.startswith("given:")


def test_mfu_and_causal_flop_count():
    cfg = get_config("opt-1.3b")
    full, causal = cfg.flops_per_token(2048), cfg.flops_per_token(2048, causal_attention=True)
    assert full - causal == pytest.approx(6.0 * cfg.num_hidden_layers * cfg.hidden_size * 2048)
    peak = flops.Peak(989.4e12, "spec:NVIDIA H100 SXM bf16 dense x1")
    assert flops.mfu(full, 1e5, peak) == pytest.approx(full * 1e5 / 989.4e12)
    with pytest.raises(ValueError, match="positive"):
        flops.mfu(full, 1e5, 0.0)
