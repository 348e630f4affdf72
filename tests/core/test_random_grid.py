"""The random grid generator: valid, deterministic, covering the ranges it promises."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gridenv.core.random_grid import RandomGridSpec, estimated_capacity_rps, random_scenario
from gridenv.core.scenario import ScenarioError, load_scenario
from gridenv.core.simulator import GridSimulator

TRACE = Path(__file__).resolve().parents[2].parent / "shared/data/traces/azure_llm_2023/AzureLLMInferenceTrace_conv.csv"
SPEC = RandomGridSpec(observation_mode=None)


def test_every_generated_scenario_validates():
    for seed in range(60):
        sc = load_scenario(random_scenario(seed, SPEC))
        assert 1 <= sc.n_sites <= SPEC.max_sites
        assert 1 <= len(sc.regions) <= 6


def test_same_seed_same_grid_other_seed_differs():
    assert random_scenario(7, SPEC) == random_scenario(7, SPEC)
    assert random_scenario(7, SPEC) != random_scenario(8, SPEC)


def test_ranges_are_covered():
    """Over many seeds the generator reaches both ends of its promised ranges."""
    scs = [random_scenario(s, SPEC) for s in range(300)]
    n_sites = {len(s["sites"]) for s in scs}
    n_regions = {len(s["regions"]) for s in scs}
    assert min(n_sites) == 1 and max(n_sites) == 12
    assert min(n_regions) == 1 and max(n_regions) == 6
    kinds = {s["workload"]["arrivals"] for s in scs}
    assert kinds == {"poisson", "gamma", "mmpp"}  # no trace paths given: no trace arrivals
    loads = [s["workload"]["rate_rps"] / estimated_capacity_rps(s) for s in scs]  # no traces here
    assert min(loads) < 0.4 and max(loads) > 1.3  # light to overload
    assert any(len(s["workload"]["models"]) == 2 for s in scs)
    assert any("faults" in s for s in scs) and any("faults" not in s for s in scs)
    # RTT structures from metro (all < 40 ms) to intercontinental (some > 150 ms)
    max_rtt = [max(max(r) for r in s["network"]["rtt_ms"].values()) for s in scs]
    assert min(max_rtt) < 40 and max(max_rtt) > 150


def test_shares_sum_to_one():
    for seed in range(50):
        s = random_scenario(seed, SPEC)
        assert sum(r["population"] for r in s["regions"]) == pytest.approx(1.0, abs=1e-6)
        assert sum(c["share"] for c in s["workload"]["classes"].values()) == pytest.approx(1.0, abs=1e-6)
        assert sum(s["workload"]["models"].values()) == pytest.approx(1.0, abs=1e-6)


def test_offered_load_tracks_the_capacity_estimate():
    """A grid generated at light load mostly meets its SLOs under a sensible policy; an
    overloaded one does not: the capacity estimate is in the right range."""

    def attainment(load: float, seed: int) -> float:
        spec = RandomGridSpec(observation_mode=None, load=(load, load), horizon_s=60.0,
                              arrivals=("poisson",), p_faults=0.0, p_second_model=0.0)
        sc = load_scenario(random_scenario(seed, spec))
        sim = GridSimulator(sc)
        sim.reset(np.random.default_rng(0))
        while not sim.done and sim.pending is not None:
            snap = sim.snapshot()
            f = np.flatnonzero(snap.feasible)
            if len(f) == 0:
                sim.decide(-1, 1)
                continue
            headroom = snap.request.ttft_slo_s - snap.ttft_pred_s[f]
            sim.decide(int(f[np.argmax(headroom)]), 1)
        return sim.summary()["slo_attainment"]

    light = np.mean([attainment(0.3, s) for s in range(4)])
    heavy = np.mean([attainment(1.6, s) for s in range(4)])
    assert light > 0.75
    assert heavy < light - 0.2


@pytest.mark.skipif(not TRACE.exists(), reason="../shared traces not present")
def test_trace_arrivals_scaled_to_the_target_rate():
    spec = RandomGridSpec(observation_mode=None, arrivals=("trace",), trace_paths=(str(TRACE),))
    from gridenv.core.traces import load_trace

    s = random_scenario(3, spec)
    tr = load_trace(str(TRACE), None)
    assert s["workload"]["arrivals"] == "trace"
    sc = load_scenario(s)
    sim = GridSimulator(sc)
    sim.reset(np.random.default_rng(0))
    target = s["workload"]["trace"]["rate_scale"] * ((len(tr) - 1) / tr.arrival_s[-1])
    assert len(sim.arrivals) / sc.horizon_s == pytest.approx(target, rel=0.25)
    assert 0.2 < target / estimated_capacity_rps(s) < 1.6  # the drawn load, not the trace's own


@pytest.mark.parametrize("bad", [
    dict(n_regions=(0, 3)), dict(n_sites=(1, 13)), dict(load=(0.0, 1.0)),
    dict(load=(0.5, float("inf"))), dict(horizon_s=float("nan")), dict(rtt_structures=("lunar",)),
    dict(arrivals=("trace",)),
])
def test_bad_spec_is_refused_with_the_field_named(bad):
    field = next(iter(bad))
    with pytest.raises(ValueError, match=field):
        RandomGridSpec(**bad)


@pytest.mark.parametrize("seed", [-1, 1.5, "3", True])
def test_bad_seed_is_refused(seed):
    with pytest.raises(ValueError, match="seed"):
        random_scenario(seed, SPEC)


@pytest.mark.parametrize("seeds", ["x,1", "-3", ",", "1.5"])
def test_writer_cli_refuses_bad_seeds_in_one_line(seeds, tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "gridenv.core.random_grid", "--seeds", seeds,
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--seeds" in out.stderr and "Traceback" not in out.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_prefix_sharing_is_drawn_on_top_of_the_same_grid():
    """p_sharing: about that share of grids get prefix sharing (own random stream), on exactly
    the grid drawn without it: sites, network, arrivals and the classes' SLOs are unchanged;
    only prefix sections, the engine's block size and the capped prompt lengths are added."""
    shared = RandomGridSpec(observation_mode=None, p_sharing=0.5)
    n_shared = 0
    for seed in range(80):
        plain, sh = random_scenario(seed, SPEC), random_scenario(seed, shared)
        for key in ("sites", "regions", "network", "horizon_s"):
            assert sh[key] == plain[key]
        for key in ("arrivals", "rate_rps", "models"):
            assert sh["workload"].get(key) == plain["workload"].get(key)
        for name, cls in sh["workload"]["classes"].items():
            base = plain["workload"]["classes"][name]
            assert (cls["ttft_slo_s"], cls["tpot_slo_s"], cls["share"]) == (base["ttft_slo_s"], base["tpot_slo_s"], base["share"])
            assert cls["prompt_tokens"]["max"] <= base["prompt_tokens"]["max"]
        kinds = [c["prefix"]["kind"] for c in sh["workload"]["classes"].values() if "prefix" in c]
        n_shared += "engine" in sh
        assert bool(kinds) <= ("engine" in sh)
        load_scenario(sh)  # validates, PrefixSharing included
    assert 25 <= n_shared <= 55  # Binomial(80, 0.5): a 99.9% interval
    assert all("prefix" not in str(random_scenario(s, SPEC)) for s in range(20))  # default: none


def test_a_grid_with_prefix_sharing_hits_the_cache():
    from gridenv.envs.random_grid_env import RandomGridEnv

    env = RandomGridEnv(spec={"p_sharing": 1.0, "horizon_s": 30.0})
    hit_rates = []
    for seed in (3, 12):
        obs, info = env.reset(seed=seed)
        while True:
            snap = info["snapshot"]
            f = np.flatnonzero(snap.feasible)
            site = snap.statics.max_sites if len(f) == 0 else int(f[np.argmax(snap.request.ttft_slo_s - snap.ttft_pred_s[f])])
            obs, r, term, trunc, info = env.step(np.array([site, 1]))
            assert np.isfinite(r) and np.isfinite(obs).all()
            if term or trunc:
                break
        hit_rates.append(info["episode_metrics"]["prefix_hit_rate"])
    assert min(hit_rates) > 0.1


@pytest.mark.parametrize("name", ["p_sharing", "p_faults", "p_second_model", "p_residency"])
@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan")])
def test_probabilities_must_be_probabilities(name, p):
    with pytest.raises(ValueError, match=f"{name} must be a probability"):
        RandomGridSpec(**{name: p})


# Found by probing the env-config path (2026-12-01): each was accepted, or failed with a
# TypeError far from the cause.
@pytest.mark.parametrize("bad, fragment", [
    ({"p_faults": 1.5}, "p_faults must be a probability in [0, 1], got 1.5"),
    ({"p_residency": "x"}, "p_residency: Input should be a valid number (got 'x')"),
    ({"horizon_s": "10"}, "horizon_s: Input should be a valid number (got '10')"),
    ({"arrivals": "poisson"}, "arrivals: Input should be a valid tuple (got 'poisson')"),
    ({"n_regions": [1.5, 3]}, "n_regions.0: Input should be a valid integer (got 1.5)"),
    ({"load": [True, 2]}, "load.0: Input should be a valid number (got True)"),
    ({"bogus": 1}, "bogus: Unexpected keyword argument (got 1)"),
    ([1, 2], "expected a mapping of fields"),
])
def test_spec_from_a_mapping_names_the_bad_field_in_one_line(bad, fragment):
    with pytest.raises(ValueError) as err:
        RandomGridSpec.from_dict(bad)
    msg = str(err.value)
    assert fragment in msg and "\n" not in msg and msg.startswith("RandomGridSpec: ")


def test_spec_from_a_mapping_takes_json_lists():
    assert RandomGridSpec.from_dict({"load": [0.5, 1], "arrivals": ["poisson"]}) == RandomGridSpec(
        load=(0.5, 1.0), arrivals=("poisson",))


def test_extra_overrides_are_merged_into_every_grid_and_validated():
    """`extra` was declared and never read; now it is deep-merged last, and load_scenario
    validates it like any override."""
    spec = RandomGridSpec(observation_mode=None, extra={"horizon_s": 30.0, "economics": {"output_value_usd_per_mtok": 3.0}})
    for seed in (1, 2):
        sc = load_scenario(random_scenario(seed, spec))
        assert sc.horizon_s == 30.0 and sc.economics.output_value_usd_per_mtok == 3.0
    with pytest.raises(ScenarioError, match="horizon_s"):
        load_scenario(random_scenario(1, RandomGridSpec(observation_mode=None, extra={"horizon_s": -1.0})))
