"""Arrival processes and trace replay, checked against their definitions and the real traces."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import gridenv  # noqa: F401  (registers the ids)
from gridenv.core.scenario import load_scenario
from gridenv.core.topology import Topology
from gridenv.core.traces import load_azure_csv
from gridenv.core.workload import generate_arrivals

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
AZURE = SHARED / "data" / "traces" / "azure_llm_2023"


def arrivals(overrides: dict, seed: int = 0):
    sc = load_scenario("metro", overrides)
    return sc, generate_arrivals(sc, Topology(sc), np.random.default_rng(seed))


def cv(times: np.ndarray) -> float:
    gaps = np.diff(times)
    return float(gaps.std() / gaps.mean())


def test_poisson_rate_and_cv() -> None:
    sc, a = arrivals({"horizon_s": 4000.0, "workload": {"rate_rps": 20.0, "diurnal": {"amplitude": 0.0}}})
    rate = len(a) / sc.horizon_s
    assert rate == pytest.approx(20.0, rel=0.02)
    assert cv(a.time_s) == pytest.approx(1.0, abs=0.03)


def test_gamma_arrivals_have_the_configured_cv() -> None:
    _, a = arrivals({"horizon_s": 20000.0, "workload": {"arrivals": "gamma", "cv": 4.0,
                                                       "rate_rps": 10.0, "diurnal": {"amplitude": 0.0}}})
    assert cv(a.time_s) == pytest.approx(4.0, rel=0.1)
    assert len(a) / 20000.0 == pytest.approx(10.0, rel=0.1)


def test_mmpp_keeps_the_mean_rate_and_is_overdispersed() -> None:
    _, a = arrivals({"horizon_s": 20000.0, "workload": {"arrivals": "mmpp", "rate_rps": 10.0,
                                                       "diurnal": {"amplitude": 0.0}}})
    assert len(a) / 20000.0 == pytest.approx(10.0, rel=0.1)
    counts = np.bincount((a.time_s // 10.0).astype(int))
    assert counts.var() / counts.mean() > 3.0  # Poisson would give 1


def test_origins_follow_population_and_diurnal_peak_follows_local_time() -> None:
    overrides = {
        "horizon_s": 8000.0,
        "regions": [{"name": "north", "population": 1.0, "utc_offset_h": 0},
                    {"name": "south", "population": 1.0, "utc_offset_h": 0},
                    {"name": "east", "population": 1.0, "utc_offset_h": 12},
                    {"name": "west", "population": 2.0, "utc_offset_h": 0}],
        "workload": {"rate_rps": 20.0, "diurnal": {"amplitude": 0.8, "peak_hour": 12, "period_s": 8000.0}},
    }
    sc, a = arrivals(overrides)
    share = np.bincount(a.origin, minlength=4) / len(a)
    np.testing.assert_allclose(share, [0.2, 0.2, 0.2, 0.4], atol=0.01)
    # North peaks at UTC noon (t = 4000 s); east, 12 h ahead, has its trough then.
    mid = (a.time_s > 3000) & (a.time_s < 5000)
    north_mid = np.sum(mid & (a.origin == 0))
    east_mid = np.sum(mid & (a.origin == 2))
    assert north_mid > 4 * east_mid


def test_lengths_follow_class_distributions_and_slos_default_to_distserve() -> None:
    sc, a = arrivals({"horizon_s": 3000.0})
    chat = a.slo_class == 0
    assert np.median(a.prompt_tokens[chat]) == pytest.approx(600, rel=0.05)
    assert a.prompt_tokens.max() <= 8192 and a.output_tokens.min() >= 1
    assert sc.slo_of("chat") == (0.25, 0.10) and sc.slo_of("code") == (0.125, 0.20)
    assert np.mean(a.residency) == pytest.approx(0.1, abs=0.02)


def test_same_seed_same_arrivals_other_seed_differs() -> None:
    _, a = arrivals({}, seed=5)
    _, b = arrivals({}, seed=5)
    _, c = arrivals({}, seed=6)
    np.testing.assert_array_equal(a.time_s, b.time_s)
    np.testing.assert_array_equal(a.prompt_tokens, b.prompt_tokens)
    assert len(a) != len(c) or not np.array_equal(a.time_s, c.time_s)


@pytest.fixture(scope="module")
def azure_dir() -> Path:
    if not AZURE.is_dir():
        pytest.skip(f"shared traces not found at {AZURE} (a fresh clone has no ../shared)")
    return AZURE


@pytest.mark.parametrize("name, slo_class", [("AzureLLMInferenceTrace_conv.csv", "chat"),
                                             ("AzureLLMInferenceTrace_code.csv", "code")])
def test_azure_trace_replayed_end_to_end(azure_dir: Path, name: str, slo_class: str) -> None:
    """Every request of the real trace reaches the router, in order, with its own lengths, and
    ends completed, shed or failed (or in flight at the horizon): none vanish."""
    path = azure_dir / name
    trace = load_azure_csv(path)
    scale = 4.0  # replay 4x faster: the trace's hour in a quarter of the simulated time
    horizon = trace.duration_s / scale + 1.0
    env = gym.make("gridenv/Metro-v1", config={
        "horizon_s": horizon,
        "workload": {"arrivals": "trace", "trace": {"path": str(path), "rate_scale": scale,
                                                    "slo_class": slo_class}},
    }).unwrapped
    obs, info = env.reset(seed=0)
    seen_prompts, seen_times = [], []
    done = False
    while not done:
        snap = env.snapshot
        seen_prompts.append(snap.request.prompt_tokens)
        seen_times.append(env.sim.now)
        # least predicted TTFT among feasible sites, else shed
        ttft = np.where(snap.feasible, snap.ttft_pred_s, np.inf)
        site = int(np.argmin(ttft)) if np.isfinite(ttft).any() else env.max_sites
        obs, r, term, done, info = env.step(np.array([site, 2]))
    m = info["episode_metrics"]
    assert m["arrived"] == len(trace) == len(seen_prompts)
    np.testing.assert_array_equal(seen_prompts, trace.prompt_tokens)
    np.testing.assert_allclose(seen_times, trace.arrival_s / scale)
    assert m["completed"] + m["shed"] + m["failed"] + m["in_flight"] == len(trace)
    assert m["completed"] > 0.5 * len(trace)
    print(f"{name}: {len(trace)} requests, completed {m['completed']}, shed {m['shed']}, "
          f"SLO attainment {m['slo_attainment']:.3f}, TTFT p50 {m['ttft_p50_s']:.3f} s")


def test_trace_loop_repeats_the_trace(azure_dir: Path) -> None:
    path = azure_dir / "AzureLLMInferenceTrace_code.csv"
    trace = load_azure_csv(path)
    sc, a = arrivals({"horizon_s": 2.0 * trace.duration_s / 20.0 + 1.0,
                      "workload": {"arrivals": "trace", "trace": {"path": str(path), "rate_scale": 20.0,
                                                                  "loop": True}}})
    n = len(trace)
    assert 2 * n < len(a) < 3 * n  # two whole passes, then the third has begun
    np.testing.assert_array_equal(a.prompt_tokens[n:2 * n], trace.prompt_tokens)
    np.testing.assert_array_equal(a.prompt_tokens[2 * n:], trace.prompt_tokens[: len(a) - 2 * n])
    assert np.all(np.diff(a.time_s) >= 0)
    assert a.time_s[n] > a.time_s[n - 1]
