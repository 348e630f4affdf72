"""Calibration of the roofline model (gridenv.core.perf) against splitwise-sim's measured table.

``shared/data/calibration/splitwise_perf_model.csv`` (MIT, splitwise-sim; physics.md section 3)
holds Llama-2-70B runs on A100-80GB and H100-80GB, measured on a 2023 serving stack. Reading of
the columns, checked against the data:

* ``prompt_time`` (ms) is the prefill of the whole batch: ``batch_size`` prompts of
  ``prompt_size`` tokens each. It matches one prompt of ``batch_size * prompt_size`` tokens
  (H100 TP4: 2 x 512 -> 104 ms vs 1 x 1024 -> 106 ms; 16 x 512 -> 874 ms vs 1 x 8192 -> 954 ms),
  and splitwise-sim itself interpolates it on ``batch_tokens = prompt_size * batch_size``.
  The model side is what the simulator's engine does: whole prompts packed into prefill
  iterations of at most ``max_prefill_tokens`` (scenario default 8192) tokens.
* ``token_time`` (ms) is the mean time between output tokens: ``e2e_time = prompt_time +
  (token_size - 1) * token_time`` row by row. The model side is the mean iteration of the
  ``token_size - 1`` decode iterations from context ``prompt_size + 1``, i.e. the iteration at a
  context of about ``prompt_size + token_size / 2`` per sequence (``decode_segment``).

Model configuration: ``SOFTWARE_STACKS["splitwise-2023"]`` (CPU overheads and all-reduce terms
of that stack, fitted to this table; the comment there gives the evidence for each) and the
catalog's GPU constants. Batch 16 and 64 rows all have prompt 512 and output 128; batch 1 rows
vary prompt (128-8192) and output (128-8192) with medians 512 and 128.

Required, and asserted strictly: every (hw, TP4/TP8, batch 1/16/64) median within +-35% for
both prefill and time between tokens. TP2 rows are not used by the fit and serve as an
out-of-sample check.

Run with ``-s`` to see the tables.
"""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from pathlib import Path

import pytest

from gridenv.core.catalog import GPUS, MODELS
from gridenv.core.perf import (
    DEFAULT_SOFTWARE_STACK,
    ENERGY_SCALE_DEFAULT,
    SOFTWARE_STACKS,
    ReplicaPerf,
    software_stack,
)
from gridenv.core.scenario import Scenario

CSV_PATH = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "data/calibration/splitwise_perf_model.csv"
)

HARDWARE = {"a100-80gb": "A100", "h100-80gb": "H100"}  # not the power-capped h100-80gb-pcap
TPS = (4, 8)
BATCHES = (1, 16, 64)
TOLERANCE = 0.35  # |model / measured - 1| (the issue: within +-35% of the medians)
STACK = "splitwise-2023"
MAX_PREFILL_TOKENS = Scenario.model_fields["max_prefill_tokens"].default

#: Batch-1 prefill per prompt size (beyond the requirement, which is on the medians): the
#: looser band for the TP8 cells, see test_prefill_by_prompt_size_batch1.
BY_PROMPT_TP8_TOLERANCE = 0.50


def _load() -> list[dict]:
    if not CSV_PATH.is_file():
        pytest.skip(f"calibration table not found at {CSV_PATH} (shared data not mounted)")
    with CSV_PATH.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["model"] == "llama2-70b"]
    for r in rows:
        for k in ("prompt_size", "batch_size", "token_size", "tensor_parallel"):
            r[k] = int(r[k])
        for k in ("prompt_time", "token_time", "e2e_time", "peak_power", "average_power"):
            r[k] = float(r[k])
    return rows


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return _load()


def _perf(hw: str, tp: int, stack: str = STACK, energy_scale: float = 1.0) -> ReplicaPerf:
    return ReplicaPerf(
        GPUS[HARDWARE.get(hw, hw)], MODELS["llama-2-70b"], tp,
        energy_scale=energy_scale, **software_stack(stack),
    )


def _iterations(batch: int, prompt: int) -> list[int]:
    """How the engine packs `batch` whole prompts into prefill iterations."""
    per_iter = max(1, MAX_PREFILL_TOKENS // prompt)
    return [min(per_iter, batch - i) for i in range(0, batch, per_iter)]


def model_prefill_s(perf: ReplicaPerf, batch: int, prompt: int) -> float:
    """Time to prefill `batch` prompts of `prompt` tokens (nothing decoding)."""
    return sum(
        perf.iter_time(n * prompt, n * prompt * prompt * 0.5, 0, 0.0, n)[0]
        for n in _iterations(batch, prompt)
    )


def model_tbt_s(perf: ReplicaPerf, batch: int, prompt: int, output: int) -> float:
    """Mean time between tokens over the output-1 decode iterations after the prefill."""
    k = max(1, output - 1)
    return perf.decode_segment(batch, batch * (prompt + 1), k)[0] / k


def _group(rows, keys, tps=TPS, batches=BATCHES):
    groups = defaultdict(list)
    for r in rows:
        if r["hardware"] in HARDWARE and r["tensor_parallel"] in tps and r["batch_size"] in batches:
            groups[tuple(r[k] for k in keys)].append(r)
    return dict(sorted(groups.items()))


def _med(rs, key):
    return statistics.median(r[key] for r in rs)


def _prefill_errors(rows, tps=TPS, batches=BATCHES):
    out = []
    for (hw, tp, b), rs in _group(rows, ("hardware", "tensor_parallel", "batch_size"),
                                  tps, batches).items():
        prompt = int(_med(rs, "prompt_size"))
        measured = _med(rs, "prompt_time") * 1e-3
        model = model_prefill_s(_perf(hw, tp), b, prompt)
        out.append((hw, tp, b, prompt, len(rs), measured, model, model / measured - 1))
    return out


def _tbt_errors(rows, keys, tps=TPS, batches=BATCHES):
    out = []
    for key, rs in _group(rows, keys, tps, batches).items():
        hw, tp, b = key[:3]
        prompt, output = int(_med(rs, "prompt_size")), int(_med(rs, "token_size"))
        measured = _med(rs, "token_time") * 1e-3
        model = model_tbt_s(_perf(hw, tp), b, prompt, output)
        out.append((hw, tp, b, prompt, output, len(rs), measured, model, model / measured - 1))
    return out


def _flag(err, tol=TOLERANCE):
    return "" if abs(err) <= tol else "  <-- outside"


# --------------------------------------------------------------------------- time between tokens
def test_time_between_tokens_per_cell(rows, record_property):
    """Every (hw, TP, batch, prompt, output) cell: median token_time within +-35%."""
    errs = _tbt_errors(rows, ("hardware", "tensor_parallel", "batch_size", "prompt_size",
                              "token_size"))
    assert len(errs) == 2 * 2 * (13 + 2)  # batch 1: 13 (prompt, output) combos; 16, 64: one
    lines = [f"time between tokens, Llama-2-70B, stack {STACK} {SOFTWARE_STACKS[STACK]}",
             "hw          tp batch prompt output  n  measured_ms  model_ms   error"]
    for hw, tp, b, p, o, n, meas, mod, err in errs:
        lines.append(f"{hw:11s} {tp:2d} {b:5d} {p:6d} {o:6d} {n:2d} {meas * 1e3:11.2f} "
                     f"{mod * 1e3:9.2f} {err:+7.1%}{_flag(err)}")
    worst = max(abs(e[-1]) for e in errs)
    lines.append(f"worst |error| {worst:.1%}")
    print("\n" + "\n".join(lines))
    record_property("tbt_table", "\n".join(lines))
    bad = [e for e in errs if abs(e[-1]) > TOLERANCE]
    assert not bad, f"time between tokens outside +-35%: {bad}"


def test_time_between_tokens_medians(rows, record_property):
    """Per (hw, TP, batch) median token_time, model at the median prompt and output."""
    errs = _tbt_errors(rows, ("hardware", "tensor_parallel", "batch_size"))
    assert len(errs) == len(HARDWARE) * len(TPS) * len(BATCHES)
    lines = ["time between tokens, medians per (hw, tp, batch)",
             "hw          tp batch prompt output  n  measured_ms  model_ms   error"]
    for hw, tp, b, p, o, n, meas, mod, err in errs:
        lines.append(f"{hw:11s} {tp:2d} {b:5d} {p:6d} {o:6d} {n:2d} {meas * 1e3:11.2f} "
                     f"{mod * 1e3:9.2f} {err:+7.1%}{_flag(err)}")
    print("\n" + "\n".join(lines))
    record_property("tbt_median_table", "\n".join(lines))
    assert all(abs(e[-1]) <= TOLERANCE for e in errs), errs


# --------------------------------------------------------------------------------------- prefill
def test_prefill_medians(rows, record_property):
    """Per (hw, TP, batch) median prompt_time vs the model at the median prompt size: +-35%."""
    errs = _prefill_errors(rows)
    assert len(errs) == len(HARDWARE) * len(TPS) * len(BATCHES)
    lines = [f"prefill (prompt_time), medians per (hw, tp, batch); model packs prompts into "
             f"iterations of <= {MAX_PREFILL_TOKENS} tokens",
             "hw          tp batch prompt  n  measured_ms  model_ms   error"]
    for hw, tp, b, p, n, meas, mod, err in errs:
        lines.append(f"{hw:11s} {tp:2d} {b:5d} {p:6d} {n:2d} {meas * 1e3:11.1f} "
                     f"{mod * 1e3:9.1f} {err:+7.1%}{_flag(err)}")
    print("\n" + "\n".join(lines))
    record_property("prefill_table", "\n".join(lines))
    bad = [e for e in errs if abs(e[-1]) > TOLERANCE]
    assert not bad, f"prefill outside +-35%: {bad}"


def test_prefill_by_prompt_size_batch1(rows, record_property):
    """Batch 1, per prompt size (128-8192). Beyond the requirement; restricted honestly.

    TP4: every prompt size within +-35%. TP8: within +-50% only. At TP8 the 2023 stack's prefill
    of one 1024-2048-token prompt costs 151-134 us per token on A100 (H100: 76-67), while its
    batched prefill (16-64 x 512 tokens) costs 254-230 us (H100: 99-90): per token, 1.2-1.9x
    more at 8k-32k tokens per batch than at 1-2k. The model's per-token cost is one constant
    per (hw, TP), fitted to the required medians (512-token and batched prompts), so it
    over-predicts the 1-2k-token single prompts at TP8 (A100 +36% / +44%). The stack also has a
    prefill floor of about 55 ms at TP8 even for 128 tokens (H100), which the model's fixed costs
    (about 34 ms) do not reach (-42%)."""
    groups = _group([r for r in rows if r["batch_size"] == 1],
                    ("hardware", "tensor_parallel", "prompt_size"))
    lines = ["prefill at batch 1 per prompt size",
             "hw          tp prompt  n  measured_ms  model_ms   error"]
    bad = []
    for (hw, tp, p), rs in groups.items():
        meas = _med(rs, "prompt_time") * 1e-3
        mod = model_prefill_s(_perf(hw, tp), 1, p)
        err = mod / meas - 1
        lines.append(f"{hw:11s} {tp:2d} {p:6d} {len(rs):2d} {meas * 1e3:11.1f} "
                     f"{mod * 1e3:9.1f} {err:+7.1%}{_flag(err)}")
        tol = TOLERANCE if tp == 4 else BY_PROMPT_TP8_TOLERANCE
        if abs(err) > tol:
            bad.append((hw, tp, p, err))
    print("\n" + "\n".join(lines))
    record_property("prefill_by_prompt_table", "\n".join(lines))
    assert len(groups) == 2 * 2 * 7
    assert not bad, bad


# ------------------------------------------------------------------------- out of sample, TP2
def test_tp2_out_of_sample(rows, record_property):
    """TP2 rows (not used to fit the splitwise-2023 profile): medians within +-35%.

    Batch 64 at TP2 is left out: 64 x (512 + 128) tokens of KV (13 GB) do not fit next to
    Llama-2-70B's 138 GB of weights on 2 x 80 GB (the model's KV capacity is 18k tokens), and the
    measured rows show it (prompt_time of 64 prompts 4x below that of 16)."""
    perf = _perf("A100", 2)
    assert perf.kv_capacity_tokens < 64 * (512 + 128)
    pre = _prefill_errors(rows, tps=(2,), batches=(1, 16))
    tbt = _tbt_errors(rows, ("hardware", "tensor_parallel", "batch_size"), tps=(2,),
                      batches=(1, 16))
    assert len(pre) == len(tbt) == len(HARDWARE) * 2
    lines = ["TP2 (out of sample), medians per (hw, batch)",
             "hw          tp batch  prefill meas/model ms   error |  tbt meas/model ms   error"]
    for p, t in zip(pre, tbt):
        lines.append(f"{p[0]:11s} {p[1]:2d} {p[2]:5d} {p[5] * 1e3:9.1f} {p[6] * 1e3:9.1f} "
                     f"{p[-1]:+7.1%} | {t[6] * 1e3:7.2f} {t[7] * 1e3:7.2f} {t[-1]:+7.1%}")
    print("\n" + "\n".join(lines))
    record_property("tp2_table", "\n".join(lines))
    bad = [e for e in pre + tbt if abs(e[-1]) > TOLERANCE]
    assert not bad, bad


def test_stack_factors_leave_modern_stack_alone():
    """The 2023 all-reduce factors are part of that profile only: vllm-2024 keeps the catalog's
    all-reduce figures, and the 2023 profile changes only the all-reduce and CPU terms, never
    the GEMM / memory roofline. (The default stack is vllm-0.6, fitted under load by
    gridenv.fidelity; tests/core/test_fidelity.py covers it.)"""
    assert DEFAULT_SOFTWARE_STACK == "vllm-0.6"
    assert Scenario.model_fields["software_stack"].default == DEFAULT_SOFTWARE_STACK
    assert set(SOFTWARE_STACKS["vllm-2024"]) == {"c_iter_s", "c_per_seq_s"}
    gpu, model = GPUS["H100"], MODELS["llama-2-70b"]
    for tp in (2, 4, 8):
        plain = ReplicaPerf(gpu, model, tp, **software_stack("vllm-2024"))
        explicit = ReplicaPerf(gpu, model, tp, allreduce_latency_scale=1.0,
                               allreduce_bw_scale=1.0, allreduce_ring_tp_scaling=False,
                               **software_stack("vllm-2024"))
        old = ReplicaPerf(gpu, model, tp, **software_stack("splitwise-2023"))
        for name in ReplicaPerf.__slots__:
            assert getattr(plain, name) == getattr(explicit, name), name
        for name in ("mem_base_s", "mem_per_ctx_token_s", "comp_per_token_s", "comp_attn_s",
                     "kv_capacity_tokens"):
            assert getattr(old, name) == getattr(plain, name), name
        assert plain.comm_base_s == 2.0 * model.n_layers * gpu.allreduce_latency_s
        assert old.comm_per_token_s > plain.comm_per_token_s
    with pytest.raises(ValueError):
        ReplicaPerf(gpu, model, 4, allreduce_bw_scale=0.0)


# ----------------------------------------------------------------------------------------- power
def test_power_ratios_vs_splitwise_a100(rows, record_property):
    """Normalized GPU power (``average_power``, ``peak_power``: per GPU / TDP) vs the model.

    Only A100 rows carry power (H100 rows are zeros). Rows: prompt 512, output 128, batch 1-16
    with non-zero power. Model: the request's prefill + (output - 1) decode iterations,
    P_gpu / TDP = (idle floor + dynamic energy) / time / TDP per GPU.

    Asserted: (1) the raw model (energy_scale 1) is below the measurement, as physics.md says;
    (2) with ENERGY_SCALE_DEFAULT the average is within +-30%; (3) both decrease from TP2 to
    TP8 at each batch; (4) the model's prefill draws more than its decode, and the measured
    peak (prefill) is above the measured average."""
    sel = [r for r in rows if r["hardware"] == "a100-80gb" and r["prompt_size"] == 512
           and r["token_size"] == 128 and r["batch_size"] <= 16 and r["average_power"] > 0]
    groups = defaultdict(list)
    for r in sel:
        groups[(r["tensor_parallel"], r["batch_size"])].append(r)
    gpu = GPUS["A100"]
    lines = ["A100 normalized power per GPU (TDP 400 W), Llama-2-70B, prompt 512, output 128",
             "tp batch  meas_avg meas_peak | model_prefill model_decode model_avg "
             f"scaled_avg(x{ENERGY_SCALE_DEFAULT}) error"]
    table = {}
    for (tp, b), rs in sorted(groups.items()):
        perf = _perf("A100", tp)
        t_p, t_c, t_m = perf.iter_time(b * 512, b * 512 * 256.0, 0, 0.0, b)
        e_p = perf.iter_energy_j(t_p, t_c, t_m)
        t_d, e_d = perf.decode_segment(b, b * 513, 127)
        norm = tp * gpu.tdp_w
        idle = gpu.idle_w * tp
        prefill_ratio = (idle * t_p + e_p) / t_p / norm
        decode_ratio = (idle * t_d + e_d) / t_d / norm
        avg_raw = (idle * (t_p + t_d) + e_p + e_d) / (t_p + t_d) / norm
        avg_scaled = (idle * (t_p + t_d) + ENERGY_SCALE_DEFAULT * (e_p + e_d)) / (t_p + t_d) / norm
        meas_avg, meas_peak = _med(rs, "average_power"), _med(rs, "peak_power")
        err = avg_scaled / meas_avg - 1
        table[(tp, b)] = (meas_avg, meas_peak, prefill_ratio, decode_ratio, avg_raw, avg_scaled)
        lines.append(f"{tp:2d} {b:5d} {meas_avg:9.3f} {meas_peak:9.3f} | {prefill_ratio:13.3f} "
                     f"{decode_ratio:12.3f} {avg_raw:9.3f} {avg_scaled:9.3f} {err:+7.1%}")
    print("\n" + "\n".join(lines))
    record_property("power_table", "\n".join(lines))
    assert len(table) >= 10
    for (tp, b), (m_avg, m_peak, pre, dec, raw, scaled) in table.items():
        assert raw < m_avg, (tp, b)
        assert abs(scaled / m_avg - 1) <= 0.30, (tp, b, scaled, m_avg)
        assert pre > 1.5 * dec, (tp, b)
        assert m_peak > m_avg, (tp, b)
    for b in {b for _, b in table}:
        tps = sorted(tp for tp, bb in table if bb == b)
        for lo, hi in zip(tps, tps[1:]):
            assert table[(lo, b)][0] > table[(hi, b)][0]  # measured
            assert table[(lo, b)][4] > table[(hi, b)][4]  # model
