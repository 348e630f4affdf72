"""The snapshot's derived fields (feasibility, predicted TTFT) are computed in plain Python over
the sites for speed (gridenv.core.snapshot.snapshot_from_lists); they must equal, bit for bit, the
vectorized float64 formulas they replace, for any signals (including NaN, negative and huge
values), and the simulator's list path must equal make_snapshot on the same signals."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from gridenv.core.scenario import load_scenario
from gridenv.core.simulator import GridSimulator
from gridenv.core.snapshot import RequestView, make_snapshot, prefill_time_s, snapshot_from_lists

FIELDS = ("waiting", "running", "kv_util", "rtt_ms", "energy_price_usd_per_kwh", "up", "batch_level",
          "prefix_cached_frac", "prefix_indexed_frac", "queued_prompt_tokens", "feasible", "ttft_pred_s")


def _reference(st, req: RequestView, waiting, running, kv_util, rtt_ms, price, up, batch_level,
               cached, indexed, queued) -> dict:
    """The vectorized derivation (numpy float64, as written before the plain-Python one)."""
    sig = np.array((waiting, running, kv_util, rtt_ms, price, up, batch_level, cached, indexed, queued),
                   dtype=np.float64)
    w, rtt, c = sig[0], sig[3], sig[7]
    up_b = sig[5] > 0.0
    feasible = up_b & (np.asarray(st.site_model) == req.model) & (w < np.asarray(st.max_waiting, dtype=float))
    feasible &= req.prompt_tokens < np.asarray(st.kv_capacity_tokens, dtype=float)
    feasible &= req.prompt_tokens < np.asarray(st.max_context_tokens, dtype=float)
    if req.residency:
        feasible &= np.asarray(st.site_region) == req.origin
    full = prefill_time_s(st, req.prompt_tokens)
    replicas = np.asarray(st.replicas, dtype=float)
    if c.any():
        tokens = req.prompt_tokens * (1.0 - c)
        own = np.asarray(st.prefill_tok_s) * tokens + np.asarray(st.prefill_attn_s) * (tokens * tokens * 0.5)
        np.maximum(own, np.asarray(st.prefill_mem_s), out=own)
        own += np.asarray(st.prefill_fixed_s)
        own += np.asarray(st.prefill_lin_s) * tokens
        ttft = (rtt * 1e-3 + st.api_overhead_s) + own + full * (w / replicas)
    else:
        ttft = (rtt * 1e-3 + st.api_overhead_s) + full * (1.0 + w / replicas)
    return {"waiting": w, "running": sig[1], "kv_util": sig[2], "rtt_ms": rtt, "energy_price_usd_per_kwh": sig[4],
            "up": up_b, "batch_level": sig[6].astype(np.int64), "prefix_cached_frac": c,
            "prefix_indexed_frac": sig[8], "queued_prompt_tokens": sig[9], "feasible": feasible, "ttft_pred_s": ttft}


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.fixture(scope="module", params=["as-is", "small-kv"])
def statics(request):
    """Continental's statics; "small-kv" gives some sites a KV cache below the context window
    (so the KV check decides feasibility on its own)."""
    st = GridSimulator(load_scenario("continental")).statics
    if request.param == "small-kv":
        st = replace(st, kv_capacity_tokens=tuple(2000 + 3000 * i for i in range(st.n_sites)))
    return st


_value = hs.one_of(hs.floats(-1e9, 1e9), hs.just(float("nan")), hs.integers(-5, 10**6))


@settings(max_examples=300, deadline=None)
@given(data=hs.data())
def test_derived_fields_equal_the_vectorized_formulas_bit_for_bit(statics, data) -> None:
    st = statics
    n = st.n_sites
    row = hs.lists(_value, min_size=n, max_size=n)
    prompt_tokens = data.draw(hs.one_of(  # anywhere, and next to every limit (KV, context window)
        hs.integers(1, 200_000),
        hs.sampled_from(sorted({c + d for c in st.kv_capacity_tokens + st.max_context_tokens for d in (-1, 0, 1)}))))
    origin = data.draw(hs.integers(0, len(st.region_names) - 1))
    signals = (data.draw(hs.lists(hs.integers(0, 300), min_size=n, max_size=n)), data.draw(row), data.draw(row),
               data.draw(row), data.draw(row), data.draw(hs.lists(hs.booleans(), min_size=n, max_size=n)),
               data.draw(hs.lists(hs.integers(0, 2), min_size=n, max_size=n)),
               data.draw(hs.one_of(hs.just([0.0] * n), hs.lists(hs.one_of(hs.just(0.0), hs.floats(0.0, 1.0), _value),
                                                                 min_size=n, max_size=n))),
               data.draw(row), data.draw(hs.lists(hs.integers(0, 10**6), min_size=n, max_size=n)))
    for model in range(len(st.model_names)):
        for residency in (False, True):
            req = RequestView(prompt_tokens, 0, origin, model, residency, 1.0, 0.1)
            want = _reference(st, req, *signals)
            for snap in (make_snapshot(st, req, 3.0, *signals), snapshot_from_lists(st, req, 3.0, *signals),
                         make_snapshot(st, req, 3.0, *(np.asarray(s) for s in signals))):
                for k in FIELDS:
                    assert _same(getattr(snap, k), want[k]), (k, getattr(snap, k), want[k])


def test_the_simulator_snapshot_equals_make_snapshot_of_its_signals() -> None:
    # a shared-prefix workload, so the prefix-cache signals (and the cached-prefill TTFT) are exercised
    sim = GridSimulator(load_scenario("metro", {"workload": {"rate_rps": 80, "classes": {
        "chat": {"prefix": {"kind": "multi_turn", "think_time_s": 5.0}},
        "code": {"prefix": {"kind": "system_prompt", "count": 3}}}}}))
    sim.reset(np.random.default_rng(3))
    rng = np.random.default_rng(4)
    feasible_seen = infeasible_seen = cached_seen = 0
    for _ in range(2000):
        snap = sim.snapshot()
        again = make_snapshot(sim.statics, snap.request, snap.hour_utc, snap.waiting, snap.running, snap.kv_util,
                              snap.rtt_ms, snap.energy_price_usd_per_kwh, snap.up, snap.batch_level,
                              snap.prefix_cached_frac, snap.prefix_indexed_frac, snap.queued_prompt_tokens)
        for k in FIELDS:
            assert _same(getattr(snap, k), getattr(again, k)), k
        cached_seen += int(snap.prefix_cached_frac.any())
        feasible_seen += int(snap.feasible.sum())
        infeasible_seen += int((~snap.feasible).sum())
        ok = np.flatnonzero(snap.feasible)
        sim.decide(int(rng.choice(ok)) if len(ok) else -1, int(rng.integers(3)))
        if sim.done:
            break
    assert feasible_seen and infeasible_seen and cached_seen  # both outcomes, and cache hits, were exercised


def test_make_snapshot_refuses_signals_of_the_wrong_length(statics) -> None:
    n = statics.n_sites
    req = RequestView(100, 0, 0, 0, False, 1.0, 0.1)
    with pytest.raises(ValueError, match=f"one value per site \\({n} sites\\)"):
        make_snapshot(statics, req, 0.0, *([[0] * (n + 1)] * 10))
