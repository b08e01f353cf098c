"""The peak FLOP/s that MFU is measured against: accelerator spec sheets, or a same-run matmul on CPU.

MFU = model FLOPs per token x tokens/s / peak FLOP/s.

*Model FLOPs* are `OPTConfig.flops_per_token(seq_len)` (PaLM, Chowdhery et al. 2022, appendix B):
``6 * N_matmul + 12 * n_layers * hidden * seq_len`` per trained token, where N_matmul counts every parameter
that takes part in a matmul (the tied embedding once, as the output projection; not the position table) and
the attention term counts QK^T and attention x V over the **full** length, non-causally (the convention of
PaLM and of most published MFU figures; ``causal_attention=True`` halves the term, as a causal kernel's
actual work, for comparison). Rematerialisation is not counted (that would be hardware FLOPs, HFU).

*Peak*: on GPU/TPU the chip's **dense bf16** tensor-core figure from its vendor's spec sheet (`CHIPS`, without
sparsity), whatever the compute dtype, times the number of devices. A CPU has no such figure: there the
"peak" is a matmul timed in the same run in the step's dtype (`trainer.measure_peak_flops`), and MFU is
labelled ``measured-matmul`` everywhere it is shown (metrics.jsonl ``mfu_basis``, bench tables, README),
because it says how close the step comes to this machine's own matmul, not to a hardware limit.

A leaf module: it imports nothing of ours.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator: its name, dense bf16 FLOP/s per device, and the `device_kind` strings it matches."""

    name: str
    bf16_flops: float
    device_kinds: tuple[str, ...]  # lower-case `jax.Device.device_kind` values or prefixes

    def matches(self, device_kind: str) -> bool:
        """Whether a `jax.Device.device_kind` names this chip (exact or prefix match, case-insensitive)."""
        kind = device_kind.strip().lower()
        return any(kind == k or kind.startswith(k + " ") or kind.startswith(k + "-") for k in self.device_kinds)


# Dense (no sparsity) bf16 peaks per device from the vendors' data sheets. Order matters only where one
# name prefixes another ("tpu v5 lite" before "tpu v5").
CHIPS: tuple[Chip, ...] = (
    Chip("NVIDIA H100 SXM", 989.4e12, ("nvidia h100 80gb hbm3", "nvidia h100 sxm", "nvidia h100")),
    Chip("NVIDIA H100 PCIe", 756.0e12, ("nvidia h100 pcie",)),
    Chip("NVIDIA H100 NVL", 835.0e12, ("nvidia h100 nvl",)),
    Chip("NVIDIA H200 SXM", 989.4e12, ("nvidia h200",)),
    Chip("NVIDIA A100 (40/80 GB)", 312.0e12, ("nvidia a100",)),
    Chip("NVIDIA L4", 121.0e12, ("nvidia l4",)),
    Chip("TPU v4", 275.0e12, ("tpu v4",)),
    Chip("TPU v5e", 197.0e12, ("tpu v5 lite", "tpu v5e")),
    Chip("TPU v5p", 459.0e12, ("tpu v5p", "tpu v5")),
    Chip("TPU v6e", 918.0e12, ("tpu v6 lite", "tpu v6e")),
)


def chip_for(device_kind: str) -> Chip | None:
    """The `CHIPS` entry of a `jax.Device.device_kind`, None for CPUs and unknown accelerators.

    PCIe/NVL H100s are tried before the generic "nvidia h100" prefix (SXM).
    """
    specific = [c for c in CHIPS if c.name in ("NVIDIA H100 PCIe", "NVIDIA H100 NVL")]
    for chip in specific + [c for c in CHIPS if c not in specific]:
        if chip.matches(device_kind):
            return chip
    return None


@dataclasses.dataclass(frozen=True)
class Peak:
    """The FLOP/s MFU divides by (all devices together) and a label saying where it comes from."""

    flops_per_s: float
    basis: str  # "spec:<chip> bf16 dense x<n>", "given:<x> FLOP/s per device x<n>" or "measured-matmul:<dtype>"

    @property
    def is_hardware_peak(self) -> bool:
        """True for a spec-sheet (or given) peak, False for a same-run matmul measurement."""
        return not self.basis.startswith("measured-matmul")


def resolve_peak(devices: Sequence[Any], *, dtype: str, measure: Callable[[], float],
                 per_device: float | None = None, num_devices: int | None = None) -> Peak:
    """The peak for MFU on ``devices`` (``jax.devices()``; ``num_devices`` defaults to their count).

    ``per_device`` (a user's figure) wins; else a known accelerator's spec; else ``measure()`` (total FLOP/s of
    a same-run matmul in ``dtype``), labelled as such.
    """
    n = num_devices if num_devices is not None else len(devices)
    if per_device:
        return Peak(per_device * n, f"given:{per_device:.4g} FLOP/s per device x{n}")
    platform = getattr(devices[0], "platform", "cpu") if devices else "cpu"
    chip = chip_for(getattr(devices[0], "device_kind", "")) if platform != "cpu" else None
    if chip is not None:
        return Peak(chip.bf16_flops * n, f"spec:{chip.name} bf16 dense x{n}")
    return Peak(float(measure()), f"measured-matmul:{dtype}")


def mfu(flops_per_token: float, tokens_per_s: float, peak: Peak | float) -> float:
    """Model FLOPs utilisation: ``flops_per_token * tokens_per_s / peak``."""
    peak_flops = peak.flops_per_s if isinstance(peak, Peak) else float(peak)
    if peak_flops <= 0:
        raise ValueError(f"peak FLOP/s must be positive, got {peak_flops}")
    return flops_per_token * tokens_per_s / peak_flops
