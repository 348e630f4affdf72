"""Limits a real deployment has: the model's context window (masked, counted, outputs cut at
it) and client timeouts (abandoned requests counted, their GPU time spent)."""

from __future__ import annotations

import numpy as np
from gridenv.core.catalog import MODELS
from gridenv.core.scenario import load_scenario
from gridenv.core.simulator import SHED, GridSimulator
from gridenv.core.snapshot import RequestView, make_snapshot
from scenario_builders import one_site_scenario  # tests/core/scenario_builders.py


def one_replica(prompt: int, output: int, rate_rps: float = 1.0, horizon_s: float = 60.0,
                **chat) -> dict:
    """One L4 (fp8 weights) replica; `chat`: extra keys of the chat class (timeouts)."""
    return one_site_scenario("limits", horizon_s, prompt_tokens=prompt, output_tokens=output, rate_rps=rate_rps,
                             site={"gpu": "L4", "weight_dtype": "fp8", "gpu_usd_per_h": 0.5}, request_class=chat)


def conserved(sim: GridSimulator) -> None:
    m = sim.metrics
    assert m.arrived == m.completed + m.shed + m.failed + m.timed_out + sum(sim.in_flight_census().values())


def test_catalog_context_windows_follow_the_model_cards() -> None:
    assert MODELS["llama-3-8b"].max_context_tokens == 8192
    assert MODELS["llama-3-70b"].max_context_tokens == 8192
    assert MODELS["llama-2-70b"].max_context_tokens == 4096


def test_prompt_over_the_context_window_is_masked_counted_and_fails_if_sent() -> None:
    sim = GridSimulator(load_scenario("metro"))
    st = sim.statics
    assert st.max_context_tokens == (8192,) * st.n_sites

    def feasible(prompt: int) -> np.ndarray:
        view = RequestView(prompt, 0, 0, st.model_names.index("llama-3-8b"), False, 0.25, 0.1)
        n = st.n_sites
        return make_snapshot(st, view, 0.0, [0] * n, [0] * n, [0.0] * n, [10.0] * n,
                             [0.1] * n, [True] * n, [0] * n).feasible

    assert feasible(8191).all()  # leaves room for one output token
    assert not feasible(8192).any()

    sim = GridSimulator(load_scenario(one_replica(9000, 10)))
    sim.reset(np.random.default_rng(0))
    n = 0
    while not sim.done:
        assert not sim.snapshot().feasible.any()
        sim.decide(0 if n % 2 else SHED)  # every other one is sent anyway
        n += 1
    s = sim.summary()
    assert s["over_context"] == s["arrived"] == n > 10
    assert s["failed_context"] == s["failed"] > 0 and s["completed"] == 0
    conserved(sim)


def test_output_stops_at_the_context_window() -> None:
    sim = GridSimulator(load_scenario(one_replica(8000, 1000, rate_rps=0.1, horizon_s=200.0)))
    sim.reset(np.random.default_rng(0))
    while not sim.done:
        sim.decide(0)
    s = sim.summary()
    assert s["output_truncated"] == s["arrived"] > 5
    assert s["completed"] > 0 and sim.metrics.served_output_tokens == 192 * s["completed"]


def test_clients_give_up_without_a_first_token_and_are_counted() -> None:
    """An overloaded L4 (8 req/s of 2000-token prompts): with a 2 s first-token timeout, no
    completed request waited longer for its first token, and the rest timed out."""
    raw = one_replica(2000, 50, rate_rps=8.0, timeout_s=2.0)
    sim = GridSimulator(load_scenario(raw))
    sim.reset(np.random.default_rng(0))
    while not sim.done:
        sim.decide(0)
        conserved(sim)
    s = sim.summary()
    assert s["timed_out"] > s["completed"] > 0
    assert max(sim.metrics.ttft_s) <= 2.0
    # A patient client (the default 30 s) waits: the same run abandons far fewer.
    patient = GridSimulator(load_scenario(one_replica(2000, 50, rate_rps=8.0)))
    patient.reset(np.random.default_rng(0))
    while not patient.done:
        patient.decide(0)
    assert patient.summary()["timed_out"] < s["timed_out"]
    assert max(patient.metrics.ttft_s) > 2.0


def test_abandoned_responses_spend_gpu_time_and_are_not_completed() -> None:
    """A 1 s whole-response timeout for 2000-token answers: every routed request started, ran
    for a second and was abandoned mid-decode; the GPU time is booked, nothing completed."""
    raw = one_replica(200, 2000, rate_rps=1.0, horizon_s=30.0, e2e_timeout_s=1.0)
    sim = GridSimulator(load_scenario(raw))
    sim.reset(np.random.default_rng(0))
    while not sim.done:
        sim.decide(0)
        conserved(sim)
    s = sim.summary()
    assert s["completed"] == 0 and s["timed_out"] > 15
    assert s["timed_out"] + s["in_flight"] == s["arrived"]
    # Each abandoned request held the GPU for about its 1 s (Poisson 1/s: busy ~1 - 1/e of the
    # time, less the overlap): spent and lost, since nothing was served.
    assert sim.metrics.busy_gpu_s.sum() > 0.3 * s["sim_time_s"] and sim.metrics.dyn_energy_j.sum() > 0
    assert sim.metrics.served_output_tokens == 0 and s["goodput_value_usd"] == 0.0
