"""Accelerators a plan can be costed on (`plan.accelerator`): peak dense bf16 tensor-core FLOP/s, from the vendor's
data sheets. Data sheets print the 2:4-sparsity figure first; the dense figure is half of it, and dense is what
training and evaluation run. Device-hours = FLOPs ÷ (peak × plan.mfu) (harness/plan.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Accelerator:
    name: str  # how reports name it
    peak_flops: float  # dense bf16 tensor-core FLOP/s
    memory_gb: int  # device memory (what a training peak must fit in)
    source: str  # where the peak comes from


ACCELERATORS: dict[str, Accelerator] = {
    # NVIDIA H100 Tensor Core GPU data sheet (nvidia.com/en-us/data-center/h100): SXM, "BF16 Tensor Core 1,979
    # teraFLOPS" with sparsity, so 989 TFLOP/s dense (989.4 in the Hopper architecture whitepaper).
    "h100": Accelerator("NVIDIA H100 SXM 80GB", 989e12, 80,
                        "NVIDIA H100 data sheet: BF16 Tensor Core 1,979 TFLOP/s with sparsity, 989 dense (SXM)"),
    # Same data sheet, H100 PCIe: 1,513 TFLOP/s with sparsity.
    "h100_pcie": Accelerator("NVIDIA H100 PCIe 80GB", 756e12, 80,
                             "NVIDIA H100 data sheet: BF16 Tensor Core 1,513 TFLOP/s with sparsity, 756 dense (PCIe)"),
    # NVIDIA H200 Tensor Core GPU data sheet (nvidia.com/en-us/data-center/h200): SXM, "BF16 Tensor Core 1,979
    # TFLOPS" with sparsity — the H100's compute with 141 GB of HBM3e at 4.8 TB/s.
    "h200": Accelerator("NVIDIA H200 SXM 141GB", 989e12, 141,
                        "NVIDIA H200 data sheet: BF16 Tensor Core 1,979 TFLOP/s with sparsity, 989 dense (SXM)"),
    # NVIDIA A100 Tensor Core GPU data sheet: "BFLOAT16 Tensor Core 312 TFLOPS | 624 TFLOPS*" (* with sparsity),
    # the same for the 40 GB and 80 GB, SXM and PCIe parts.
    "a100": Accelerator("NVIDIA A100 80GB", 312e12, 80,
                        "NVIDIA A100 data sheet: BFLOAT16 Tensor Core 312 TFLOP/s dense (624 with sparsity)"),
}
