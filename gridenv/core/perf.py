"""Iteration-time and power model of one replica (physics.md sections 1 and 4).

One replica is a vLLM-style serving engine on ``tp`` GPUs. An iteration processes prefill tokens
of newly admitted requests and one token of every decoding request::

    T_mem  = [W/p + kappa * ctx_sum / p] / (eta_bw * BW)
    T_comp = [2 * P * N / p + sum_i 4 * L * n_h * d_h * q_i * (c_i + q_i / 2) / p] / (eta_f * F)
    T_comm = 2 * L * (a_ar + N * H * 2 / B_ar)            (only when p > 1)
    T_iter = max(T_mem, T_comp) + L * tau_layer + T_comm + c_iter

Between events the decode batch is constant and every context grows by one token per iteration,
so k decode iterations take an arithmetic series of time (``decode_segment``) and the number of
iterations that fit in a time span has a closed form (``decode_iters_within``): the engine jumps
from event to event and its cost grows with requests, not tokens.

Power: ``P_gpu = P_idle + (TDP - P_idle) * min(1, s * (0.9 u_c + 0.4 u_m))`` with ``u_c = T_comp/T_iter``
and ``u_m = T_mem/T_iter``. This module returns the *dynamic* energy above the idle floor; the
idle floor is accounted per site for all provisioned GPUs.
"""

from __future__ import annotations

import math

from gridenv.core.catalog import DTYPE_BYTES, GPUSpec, ModelSpec

__all__ = [
    "ReplicaPerf", "KV_MEMORY_FRACTION", "SOFTWARE_STACKS", "DEFAULT_SOFTWARE_STACK",
    "ENERGY_SCALE_DEFAULT", "ALLREDUCE_REF_TP", "software_stack",
]

#: Vidur's memory planner keeps a 10% margin: KV gets 0.9 * memory - weights.
KV_MEMORY_FRACTION = 0.9

#: A serving-software profile, as ``ReplicaPerf`` keyword arguments. CPU-side overheads:
#: ``c_iter_s`` per iteration (scheduler, input preparation, sampling launch) and ``c_per_seq_s``
#: per sequence in the batch (block tables, sampling, detokenization). Optional all-reduce terms
#: of the stack (defaults: the catalog's figures unchanged): ``allreduce_latency_scale`` and
#: ``allreduce_bw_scale`` multiply the GPU's a_ar and B_ar (Vidur's 2024 NCCL profiles), and
#: ``allreduce_ring_tp_scaling`` makes both grow with TP as a ring all-reduce does (the catalog's
#: figures are taken at TP4); ``allreduce_bw_tp_scaling`` makes only the bytes term grow so.
#: None of them changes the GEMM / memory roofline.
SOFTWARE_STACKS: dict[str, dict[str, float | bool]] = {
    # Modern vLLM (0.6-era, 2024): physics.md gives 0.1-2 ms per step; inference-sim (BLIS)
    # fits beta7 = 0.13 ms/step + 4.4 us/request. 1 ms per step also covers the sampling and
    # detokenization that BLIS attributes elsewhere.
    "vllm-2024": {"c_iter_s": 1e-3, "c_per_seq_s": 4.4e-6},
    # The 2023 stack behind splitwise-sim's measured table (splitwise_perf_model.csv, Llama-2-70B
    # on A100 / H100). Fit (least squares on log error, then rounded) over the 12 (hw, TP4/TP8,
    # batch 1/16/64) medians of prefill time and time between tokens, see
    # tests/core/test_calibration.py; every cell lands within +-30% (TP2 rows, not fitted, within
    # +-8% except batch 64, which does not fit in 2 x 80 GB). What the data demand:
    # * allreduce_bw_scale 0.3: per prompt token, batched prefill (16-64 x 512 tokens) costs
    #   334 / 230 us (A100 TP4 / TP8) and 107 / 90 us (H100): going from TP4 to TP8 removes only
    #   31% / 17% where GEMM time halves; with the catalog's GEMM efficiency, 150-170 us (A100)
    #   and 55-65 us (H100) per token do not shrink with TP. The model's only such per-token term
    #   is the all-reduce of 2 x L x hidden x 2 bytes = 2.6 MB per token; at 0.3x the catalog's
    #   B_ar (effective 32 / 60 GB/s at TP4) it covers half to two thirds of that on A100 and 80%
    #   on H100 (2023: NCCL via torch.distributed on the compute stream, no custom all-reduce, no
    #   overlap; the factor also absorbs any other unsharded per-token work of that stack).
    # * allreduce_ring_tp_scaling: at batch 1 the measured time between tokens is flat from TP4
    #   to TP8 (A100 44.6 -> 45.0 ms, H100 29.5 -> 30.4 ms) while the weight read halves (-10.8 /
    #   -6.2 ms): a per-iteration cost that grows with TP, as the 2(p-1) steps of a ring
    #   all-reduce do. Ring scaling gives per all-reduce a_ar * (p-1)/3 and bytes / B_ar *
    #   (2(p-1)/p)/1.5 relative to TP4 (Vidur's own A100 DGX all-reduce of 12-15M elements
    #   takes 1.28x longer at TP8 than at TP4; ring predicts 1.17x).
    # * allreduce_latency_scale 0.6: a_ar * 0.6 * 7/3 = 85 us (A100) / 53 us (H100) per
    #   all-reduce at TP8, 37 / 23 us at TP4; together with c_iter_s this reproduces the batch-1
    #   time between tokens at both TPs (the split between the two is set by the TP4 -> TP8 step).
    # * c_iter_s 10 ms: physics.md gives 5-15 ms per step for 2023 stacks (Python scheduler,
    #   eager-mode kernel launches).
    # * c_per_seq_s 0.35 ms: from batch 1 to 64 the time between tokens grows 0.31-0.45 ms per
    #   added sequence, of which KV reads and all-reduce bytes explain 0.06-0.11 ms; the rest is
    #   per-sequence Python work of that era (input metadata, block tables, sampling).
    # Not changed: GEMM efficiency (eta_f). H100 / A100 batched prefill per token at TP4 is
    # 3.1x, the ratio of peak FLOP/s (3.17x), so the data show no H100-specific kernel deficit,
    # and a global eta_f factor barely improves the fit (left free it goes to 0.8-1.0).
    # Left over (the model's structure, not a parameter): this stack's prefill costs 1.2-1.9x
    # more per token at 8k-32k tokens per batch than for one prompt of 1-2k tokens, which no
    # per-token constant reproduces; the fit puts batch-1 prefill 11-27% high and batched
    # prefill 6-29% low.
    # vLLM 0.6 (September 2024: multi-step scheduling, 10 decode steps per scheduling round),
    # fitted under load by ``python -m gridenv.fidelity.fit`` on the ``use: fit`` rows of
    # gridenv/fidelity/benchmarks.yaml (Llama-3-8B TP1/TP4 and Llama-3-70B TP4 on A100 and H100,
    # 10 and 320 ShareGPT requests sent at once; LambdaLabsML/vllm-benchmark). Held-out rows
    # (TP2, TP8, another operator's Poisson runs) check it; ``python -m gridenv.fidelity``
    # prints both. Refitted 2026-11-30 (evening) after three replay/model corrections: bursts
    # reach the engine in random order, the A100 machine's CPU is slower (its own fitted
    # cpu_scale 1.45 in benchmarks.yaml: these CPU terms are the H100 machine's), and the
    # all-reduce bytes term grows with TP. What the data demand:
    # * per-sequence cost per decode step, 22 us CPU (c_per_seq_s) + 11 us GPU split over the
    #   TP ranks (attn_per_seq_s): at 300 running sequences an 8B step on H100 takes ~20 ms at
    #   TP1 and ~12 ms at TP4 where weights and KV reads explain ~11 / ~4 ms; the part that
    #   shrinks with TP is GPU work per sequence, the rest CPU (block tables, sampling, output
    #   processing). It is what caps saturated throughput;
    # * c_iter_s 0.22 ms: multi-step scheduling pays the scheduler once per 10 steps, so the
    #   light-load step is nearly the roofline (8B on H100: 7.3 ms at batch 10). Left free, a
    #   separate per-round cost (paid whole by prefill iterations) fits to zero on these rows, so
    #   what a single-step engine pays per step is not determined by them;
    # * all-reduce latency x0.37 and bandwidth x0.58 of the catalog's NCCL figures: 70B TP4 /
    #   TP8 decode is 18.1 / 12.2 ms per step on H100 at batch 8, which the catalog's all-reduce
    #   overstates by 25% (vLLM's custom all-reduce, CUDA graphs). allreduce_bw_tp_scaling: the
    #   bytes term is 2(p-1)/p of the buffer at a fixed per-link bandwidth (x2/3 at TP2, x7/6 at
    #   TP8 against the TP4 fit), the latency does not grow with p (light-load decode goes from
    #   18.1 to 12.2 ms from TP4 to TP8 on H100: no room for a ring's 2(p-1) latency steps);
    # * c_admit_s 2.55 ms: a 320-request burst reaches the engine only after ~0.8 s (H100) of
    #   API-server work; the engine simulator does not model the API server (the replay does).
    "vllm-0.6": {
        "c_iter_s": 0.217e-3,
        "c_per_seq_s": 22.20e-6,
        "attn_per_seq_s": 11.44e-6,
        "allreduce_latency_scale": 0.367,
        "allreduce_bw_scale": 0.584,
        "allreduce_bw_tp_scaling": True,
        "c_admit_s": 2.55e-3,
    },
    # vLLM's V1 engine (0.8-0.11, 2025: single-step scheduling, the engine core in its own
    # process), fitted by ``python -m gridenv.fidelity.fit --stack vllm-v1-2025`` on its own fit
    # rows only: kubernetes-sigs/inference-perf's KubeCon NA 2025 runs (vLLM 0.11.0,
    # Llama-3.1-8B, one H100, 1 to ~110 req/s of ~205-token prompts and 64-token answers; their
    # GKE host is this stack's reference host). Checked on the held-out V1 rows (surajssd/llm-k8s:
    # vLLM 0.8.3, Llama-3.3-70B, TP8 on A100-40GB, another host). Fitted 2026-12-01. What the data
    # demand:
    # * c_request_s 18.6 ms: at 1 req/s a 205-token prompt's TTFT is 31 ms where the engine's
    #   prefill is ~8 ms: a latency every request pays outside the engine and in parallel (the
    #   client in another pod behind a Kubernetes service, HTTP, tokenization, streaming); it
    #   does not queue (TTFT stays 29-35 ms up to 60 req/s);
    # * c_iter_s 0.97 ms: single-step scheduling pays the scheduler every step (vllm-0.6's
    #   0.22 ms is paid once per 10 steps): the light-load step is 7.2 ms where weights alone
    #   read in ~6 ms;
    # * c_per_seq_s 14.9 us (CPU) with vllm-0.6's 11.4 us of GPU time per sequence: the step
    #   grows to 15-20 ms at 90-128 running sequences (with the prefills mixed in);
    # * c_admit_s 2.1 ms per request, serial (API server);
    # * all-reduce and attn_per_seq_s: vllm-0.6's (same kernels); TP1 rows cannot determine them.
    # Held out, the TP8 V1 rows' TPOT stays 6-16% low: their step costs more than this TP1
    # host's (8 worker processes per step, an older CPU), which no TP1 row can tell.
    "vllm-v1-2025": {
        "c_iter_s": 0.973e-3,
        "c_per_seq_s": 14.88e-6,
        "attn_per_seq_s": 11.44e-6,
        "allreduce_latency_scale": 0.367,
        "allreduce_bw_scale": 0.584,
        "allreduce_bw_tp_scaling": True,
        "c_admit_s": 2.068e-3,
        "c_request_s": 18.59e-3,
    },
    "splitwise-2023": {
        "c_iter_s": 10e-3,
        "c_per_seq_s": 0.35e-3,
        "allreduce_latency_scale": 0.6,
        "allreduce_bw_scale": 0.3,
        "allreduce_ring_tp_scaling": True,
    },
}

#: TP at which the catalog's all-reduce latency and bandwidth are given (physics.md: B_ar at TP4);
#: the reference of ``allreduce_ring_tp_scaling``.
ALLREDUCE_REF_TP = 4

#: The stack ``ReplicaPerf`` assumes when none is given.
DEFAULT_SOFTWARE_STACK = "vllm-0.6"

#: Dynamic-energy calibration factor (``ReplicaPerf.energy_scale``). physics.md section 4: the
#: raw model's GPU energy per token is about 2x below ML.ENERGY's measurement (Llama-3.1-8B on
#: H100, batch 64: 0.12 J/token, which includes prefill and framework time). With 2.0, Llama-3-8B
#: TP1 on H100 (vllm-2024 stack) decoding a batch of 64 at 1000 / 1500 / 2000 tokens of context
#: gives 0.110 / 0.123 / 0.137 J/token (dynamic + idle floor), against 0.061 / 0.069 / 0.077 raw
#: (tests/core/test_perf.py).
#: Splitwise's measured A100 average power (Llama-2-70B, TP2-8, batch 1-16, 2023 stack) implies
#: a factor of 1.6-2.6 on the same dynamic term. The factor scales the utilization term before
#: it is capped at 1, so a GPU never draws more than its TDP (a compute-bound prefill iteration
#: is booked at TDP).
ENERGY_SCALE_DEFAULT = 2.0


class ReplicaPerf:
    """Precomputed coefficients of the roofline model for one (GPU, model, TP, dtype)."""

    __slots__ = (
        "gpu", "model", "tp", "weight_dtype", "kv_dtype", "c_iter_s", "c_per_seq_s", "energy_scale",
        "mem_base_s", "mem_per_ctx_token_s", "comp_per_token_s", "comp_attn_s",
        "comm_base_s", "comm_per_token_s", "fixed_s", "dyn_power_w", "kv_bytes_per_token",
        "kv_capacity_tokens", "c_admit_s", "c_request_s",
    )

    def __init__(
        self,
        gpu: GPUSpec,
        model: ModelSpec,
        tp: int,
        weight_dtype: str = "bf16",
        kv_dtype: str = "bf16",
        c_iter_s: float = SOFTWARE_STACKS[DEFAULT_SOFTWARE_STACK]["c_iter_s"],
        c_per_seq_s: float = SOFTWARE_STACKS[DEFAULT_SOFTWARE_STACK]["c_per_seq_s"],
        energy_scale: float = ENERGY_SCALE_DEFAULT,
        allreduce_latency_scale: float = 1.0,
        allreduce_bw_scale: float = 1.0,
        allreduce_ring_tp_scaling: bool = False,
        allreduce_bw_tp_scaling: bool = False,
        c_admit_s: float = 0.0,
        attn_per_seq_s: float = 0.0,
        c_request_s: float = 0.0,
    ) -> None:
        if tp < 1:
            raise ValueError(f"tp must be >= 1, got {tp}")
        if allreduce_latency_scale <= 0.0 or allreduce_bw_scale <= 0.0:
            raise ValueError("all-reduce scales must be positive")
        if min(c_admit_s, c_iter_s, c_per_seq_s, attn_per_seq_s, c_request_s) < 0.0:
            raise ValueError("overheads (c_iter_s, c_per_seq_s, c_admit_s, attn_per_seq_s, c_request_s) must be >= 0")
        if weight_dtype not in DTYPE_BYTES or kv_dtype not in DTYPE_BYTES:
            raise ValueError(f"dtype must be one of {sorted(DTYPE_BYTES)}")
        self.gpu, self.model, self.tp = gpu, model, tp
        self.weight_dtype, self.kv_dtype = weight_dtype, kv_dtype
        # Scheduler + sampling CPU time: per step and per sequence in the batch (BLIS beta7).
        # A stack's attn_per_seq_s is per-sequence GPU time of one decode step on one GPU
        # (attention's per-sequence work: block-table walk, split-K reduction, kernel tail),
        # which the TP ranks share by heads; it joins the per-sequence term divided by tp.
        self.c_iter_s = c_iter_s
        self.c_per_seq_s = c_per_seq_s + attn_per_seq_s / tp
        # API-server time per request before the engine sees it (HTTP, tokenization); requests
        # pass one after another. Applied by the fidelity replay (gridenv/fidelity/replay.py).
        self.c_admit_s = c_admit_s
        # Latency every request pays outside the engine and in parallel with other requests
        # (client-server hops, the API server's tokenization and streaming of the first token);
        # it delays its first and last token, not the engine. Applied by the fidelity replay.
        self.c_request_s = c_request_s
        # Dynamic-energy calibration factor (physics.md section 4: the raw model is ~2x below
        # ML.ENERGY's measured J/token, which includes framework time).
        self.energy_scale = energy_scale

        bw = gpu.eta_bw * gpu.mem_bw_bytes_per_s
        # W8A8 FP8 runs GEMMs on FP8 tensor cores where the GPU has them.
        flops = gpu.eta_f * (gpu.peak_fp8_flops if weight_dtype == "fp8" else gpu.peak_bf16_flops)
        self.kv_bytes_per_token = model.kv_bytes_per_token(kv_dtype)

        self.mem_base_s = model.weight_bytes(weight_dtype) / tp / bw
        self.mem_per_ctx_token_s = self.kv_bytes_per_token / tp / bw
        self.comp_per_token_s = 2.0 * model.n_params / tp / flops
        self.comp_attn_s = 4.0 * model.n_layers * model.n_heads * model.head_dim / tp / flops
        if tp > 1:
            # Software-stack factors on the catalog's all-reduce figures (SOFTWARE_STACKS); 1.0
            # and no ring scaling leave them exactly as they are.
            a_ar = gpu.allreduce_latency_s * allreduce_latency_scale
            b_ar = gpu.allreduce_bw_bytes_per_s * allreduce_bw_scale
            ref = ALLREDUCE_REF_TP
            if allreduce_ring_tp_scaling:
                # Ring all-reduce over p GPUs: 2(p-1) steps (latency) moving 2(p-1)/p of the
                # buffer per GPU (bytes), relative to the catalog's reference TP.
                a_ar *= (tp - 1) / (ref - 1)
            if allreduce_ring_tp_scaling or allreduce_bw_tp_scaling:
                # Bandwidth-optimal all-reduces (NCCL's ring, vLLM's two-shot custom
                # all-reduce) move 2(p-1)/p of the buffer through each GPU's links at a
                # per-link bus bandwidth that does not depend on p: the bytes term grows with TP
                # (x0.67 at TP2, x1.17 at TP8 against TP4). allreduce_bw_tp_scaling alone keeps
                # the latency flat, as vLLM's custom all-reduce (one kernel, one NVLink barrier)
                # has it for the small decode messages.
                b_ar /= ((tp - 1) / tp) / ((ref - 1) / ref)
            self.comm_base_s = 2.0 * model.n_layers * a_ar
            # Activations are all-reduced in 16-bit: hidden * 2 bytes per token per all-reduce.
            self.comm_per_token_s = 2.0 * model.n_layers * model.hidden * 2.0 / b_ar
        else:
            self.comm_base_s = 0.0
            self.comm_per_token_s = 0.0
        self.fixed_s = model.n_layers * gpu.tau_layer_s + c_iter_s
        self.dyn_power_w = (gpu.tdp_w - gpu.idle_w) * tp

        kv_bytes = KV_MEMORY_FRACTION * gpu.memory_bytes * tp - model.weight_bytes(weight_dtype)
        self.kv_capacity_tokens = max(0, int(kv_bytes // self.kv_bytes_per_token))

    # ------------------------------------------------------------------ one iteration
    def iter_time(
        self,
        prefill_tokens: float,
        prefill_attn: float,
        decode_n: int,
        ctx_sum: float,
        prefill_n: int = 1,
    ) -> tuple[float, float, float]:
        """Time of one iteration and its compute and memory parts, in seconds.

        prefill_tokens: sum of new prompt tokens q_i prefilled in this iteration.
        prefill_attn: sum of q_i * (c_i + q_i / 2) over the prefilled requests.
        decode_n: number of decoding sequences D. ctx_sum: sum of their contexts (tokens).
        prefill_n: number of requests being prefilled (per-sequence CPU overhead).
        """
        n_tokens = prefill_tokens + decode_n
        n_seqs = (prefill_n if prefill_tokens > 0 else 0) + decode_n
        t_mem = self.mem_base_s + self.mem_per_ctx_token_s * ctx_sum
        t_comp = self.comp_per_token_s * n_tokens + self.comp_attn_s * prefill_attn
        t_iter = (
            (t_mem if t_mem > t_comp else t_comp)
            + self.fixed_s + self.comm_base_s + self.comm_per_token_s * n_tokens
            + self.c_per_seq_s * n_seqs
        )
        return t_iter, t_comp, t_mem

    def iter_energy_j(self, t_iter: float, t_comp: float, t_mem: float) -> float:
        """Dynamic (above idle) GPU energy of one iteration on all tp GPUs, joules."""
        busy = self.energy_scale * (0.9 * t_comp + 0.4 * t_mem)
        return self.dyn_power_w * (busy if busy < t_iter else t_iter)

    def prefill_time_s(self, prompt_tokens: float) -> float:
        """Time of an iteration that prefills one prompt alone (no decoders)."""
        return self.iter_time(prompt_tokens, prompt_tokens * prompt_tokens * 0.5, 0, 0.0, 1)[0]

    # ------------------------------------------------------------------ decode segments
    def _decode_coeffs(self, decode_n: int, ctx_sum0: float) -> tuple[float, float, float, float]:
        """Iteration i of a decode segment takes max(a + b*i, t_comp) + k_fixed."""
        a = self.mem_base_s + self.mem_per_ctx_token_s * ctx_sum0
        b = self.mem_per_ctx_token_s * decode_n
        t_comp = self.comp_per_token_s * decode_n
        k_fixed = (
            self.fixed_s + self.comm_base_s + (self.comm_per_token_s + self.c_per_seq_s) * decode_n
        )
        return a, b, t_comp, k_fixed

    @staticmethod
    def _compute_bound_iters(a: float, b: float, t_comp: float, k: int) -> int:
        """How many of the first k iterations are compute bound (a + b*i < t_comp)."""
        if t_comp <= a:
            return 0
        if b <= 0.0:
            return k
        n = math.ceil((t_comp - a) / b)
        return n if n < k else k

    def decode_segment(self, decode_n: int, ctx_sum0: float, k: int) -> tuple[float, float]:
        """Duration (s) and dynamic energy (J) of k decode iterations from context sum ctx_sum0."""
        if k <= 0 or decode_n <= 0:
            return 0.0, 0.0
        # Iteration i takes max(a + b*i, t_comp) + k_fixed (_decode_coeffs, inlined: hot path).
        m1 = self.mem_per_ctx_token_s
        a = self.mem_base_s + m1 * ctx_sum0
        b = m1 * decode_n
        t_comp = self.comp_per_token_s * decode_n
        k_fixed = self.fixed_s + self.comm_base_s + (self.comm_per_token_s + self.c_per_seq_s) * decode_n
        # i_c: how many of the k iterations are compute bound (a + b*i < t_comp)
        if t_comp <= a:
            i_c = 0
        elif b <= 0.0:
            i_c = k
        else:
            i_c = math.ceil((t_comp - a) / b)
            if i_c > k:
                i_c = k
        kk = k * (k - 1)
        # sum of a + b*i for i in [0, k)
        mem_sum = k * a + b * kk * 0.5
        # memory-bound part: i in [i_c, k)
        mem_tail = mem_sum if i_c == 0 else (k - i_c) * a + b * (kk - i_c * (i_c - 1)) * 0.5
        duration = i_c * t_comp + mem_tail + k * k_fixed
        busy = self.energy_scale * (0.9 * t_comp * k + 0.4 * mem_sum)
        energy = self.dyn_power_w * (busy if busy < duration else duration)
        return duration, energy

    def decode_iters_within(self, decode_n: int, ctx_sum0: float, dt: float) -> int:
        """The number of whole decode iterations that complete within dt seconds."""
        if dt <= 0.0 or decode_n <= 0:
            return 0
        a, b, t_comp, k_fixed = self._decode_coeffs(decode_n, ctx_sum0)
        t_first = (a if a > t_comp else t_comp) + k_fixed
        if dt < t_first:
            return 0
        # Compute-bound iterations (constant time) come first, since memory time grows.
        n_c = self._compute_bound_iters(a, b, t_comp, 1 << 62)
        t_c = t_comp + k_fixed
        rest = dt
        if n_c > 0 and dt < n_c * t_c:
            n = int(dt // t_c)
        else:
            rest -= n_c * t_c
            # Memory-bound iterations j = 0, 1, ...: time a1 + b*j.
            a1 = a + b * n_c + k_fixed
            if b <= 0.0:
                m = int(rest // a1)
            else:
                p = a1 - 0.5 * b
                m = int((-p + math.sqrt(p * p + 2.0 * b * rest)) / b)
                # Guard the float rounding of the closed form.
                while m > 0 and m * a1 + b * m * (m - 1) * 0.5 > rest:
                    m -= 1
                while (m + 1) * a1 + b * (m + 1) * m * 0.5 <= rest:
                    m += 1
            n = n_c + m
        # Agree exactly with decode_segment, whose closed form rounds differently: dt equal to
        # the duration of k iterations gives k (a hair less gives k - 1). Moves 0 or 1 step.
        while n > 0 and self.decode_segment(decode_n, ctx_sum0, n)[0] > dt:
            n -= 1
        while self.decode_segment(decode_n, ctx_sum0, n + 1)[0] <= dt:
            n += 1
        return n


def software_stack(name: str) -> dict:
    """ReplicaPerf keyword arguments of a named serving-software profile (``SOFTWARE_STACKS``)."""
    try:
        return dict(SOFTWARE_STACKS[name])
    except KeyError:
        raise KeyError(f"unknown software_stack {name!r}; known: {sorted(SOFTWARE_STACKS)}") from None
