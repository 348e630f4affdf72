"""Hardware and model catalog.

Every number comes from `shared/reference/physics.md` (sections 1 and 2), which names its
published source: vendor datasheets for peak FLOP/s, bandwidth, memory and TDP; splitwise-sim
for idle power; fits to Vidur's operator profiles for the efficiencies, per-layer overhead and
all-reduce cost.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GPUSpec", "ModelSpec", "GPUS", "MODELS", "DTYPE_BYTES", "gpu", "model"]

#: Bytes per element of weights or KV cache.
DTYPE_BYTES: dict[str, float] = {"bf16": 2.0, "fp8": 1.0}


@dataclass(frozen=True)
class GPUSpec:
    """One accelerator type: datasheet peaks plus the achieved-efficiency fit."""

    name: str
    peak_bf16_flops: float  # FLOP/s, dense
    peak_fp8_flops: float  # FLOP/s, dense (= BF16 where the GPU has no FP8 tensor cores)
    mem_bw_bytes_per_s: float
    memory_bytes: float
    tdp_w: float
    idle_w: float
    eta_bw: float  # achieved / peak memory bandwidth
    eta_f: float  # achieved / peak GEMM FLOP/s
    tau_layer_s: float  # fixed per-layer kernel-launch overhead per iteration
    allreduce_latency_s: float  # a_ar: latency of a small all-reduce
    allreduce_bw_bytes_per_s: float  # B_ar: all-reduce bus bandwidth at TP4


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer, enough of its shape for the roofline model."""

    name: str
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    n_params: float
    max_context_tokens: int  # prompt + output tokens the model accepts (its model card)

    def kv_bytes_per_token(self, kv_dtype: str = "bf16") -> float:
        """K and V for every layer: 2 * L * kv_heads * head_dim * bytes."""
        return 2.0 * self.n_layers * self.n_kv_heads * self.head_dim * DTYPE_BYTES[kv_dtype]

    def weight_bytes(self, weight_dtype: str = "bf16") -> float:
        return self.n_params * DTYPE_BYTES[weight_dtype]


GPUS: dict[str, GPUSpec] = {
    "H100": GPUSpec(
        name="H100",
        peak_bf16_flops=989e12,
        peak_fp8_flops=1979e12,
        mem_bw_bytes_per_s=3.35e12,
        memory_bytes=80e9,
        tdp_w=700.0,
        idle_w=75.0,
        eta_bw=0.83,
        eta_f=0.65,
        tau_layer_s=28e-6,
        allreduce_latency_s=38e-6,
        allreduce_bw_bytes_per_s=200e9,
    ),
    "A100": GPUSpec(
        name="A100",
        peak_bf16_flops=312e12,
        peak_fp8_flops=312e12,  # no FP8 tensor cores: FP8 weights only save memory traffic
        mem_bw_bytes_per_s=2.039e12,
        memory_bytes=80e9,
        tdp_w=400.0,
        idle_w=63.0,
        eta_bw=0.78,
        eta_f=0.68,
        tau_layer_s=38e-6,
        allreduce_latency_s=61e-6,
        allreduce_bw_bytes_per_s=105e9,
    ),
    "L4": GPUSpec(
        name="L4",
        peak_bf16_flops=121e12,
        peak_fp8_flops=242e12,
        mem_bw_bytes_per_s=0.300e12,
        memory_bytes=24e9,
        tdp_w=72.0,
        idle_w=20.0,  # assumed (physics.md)
        eta_bw=0.75,  # assumed
        eta_f=0.60,  # assumed
        tau_layer_s=35e-6,
        # L4 boxes all-reduce over PCIe: no published profile; PCIe Gen4 x16 order of magnitude.
        allreduce_latency_s=100e-6,
        allreduce_bw_bytes_per_s=20e9,
    ),
}

#: Context lengths from the model cards: Llama 3 (meta-llama/Meta-Llama-3-8B and -70B on Hugging
#: Face, "Context length 8k"; config.json max_position_embeddings 8192) and Llama 2
#: (meta-llama/Llama-2-70b-hf, "Content Length 4k"; max_position_embeddings 4096). Llama 3.1 8B
#: (meta-llama/Llama-3.1-8B, "Context length 128k"; config.json max_position_embeddings 131072)
#: has Llama-3-8B's architecture (32 layers, hidden 4096, 32 query / 8 KV heads of 128, 8.03B
#: parameters): the same costs per token, a 16x longer window (long-context scenarios: coding
#: agents, RAG, long conversations).
MODELS: dict[str, ModelSpec] = {
    "llama-3-8b": ModelSpec("llama-3-8b", 32, 4096, 32, 8, 128, 8.03e9, 8192),
    "llama-3.1-8b": ModelSpec("llama-3.1-8b", 32, 4096, 32, 8, 128, 8.03e9, 131072),
    "llama-3-70b": ModelSpec("llama-3-70b", 80, 8192, 64, 8, 128, 70.6e9, 8192),
    "llama-2-70b": ModelSpec("llama-2-70b", 80, 8192, 64, 8, 128, 69e9, 4096),
}


def gpu(name: str) -> GPUSpec:
    """Look up a GPU by name; a clear error lists the known ones."""
    try:
        return GPUS[name]
    except KeyError:
        raise KeyError(f"unknown GPU {name!r}; known: {sorted(GPUS)}") from None


def model(name: str) -> ModelSpec:
    """Look up a model by name; a clear error lists the known ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {sorted(MODELS)}") from None
