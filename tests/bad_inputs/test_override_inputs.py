"""Bad overrides (``load_scenario(name, overrides)`` / ``gym.make(id, config={...})``): one
ScenarioError naming the key path, the value and that it came from the override."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import gridenv  # noqa: F401  (registers the ids)
from gridenv.envs.registration import env_id
from gridenv.core.scenario import ScenarioError, load_scenario

NAN, INF = float("nan"), float("inf")

# (id, overrides, fragments of the message)
CASES = [
    ("rate-as-text", {"workload": {"rate_rps": "fast"}}, ["workload.rate_rps", "'fast'"]),
    ("rate-as-bool", {"workload": {"rate_rps": True}}, ["workload.rate_rps", "True", "boolean"]),
    ("rate-nan", {"workload": {"rate_rps": NAN}}, ["workload.rate_rps", "finite", "nan"]),
    ("rate-numpy-inf", {"workload": {"rate_rps": np.float64("inf")}}, ["workload.rate_rps", "inf"]),
    ("horizon-minus-inf", {"horizon_s": -INF}, ["horizon_s", "-inf"]),
    ("horizon-none", {"horizon_s": None}, ["horizon_s", "None"]),
    ("sites-not-a-list", {"sites": 3}, ["sites", "valid list", "3"]),
    ("workload-not-a-mapping", {"workload": "poisson"}, ["workload", "'poisson'"]),
    ("unknown-key", {"horizon": 10}, ["horizon", "Extra inputs are not permitted"]),
    ("unknown-nested-key", {"workload": {"rate": 10}}, ["workload.rate", "Extra inputs"]),
    ("rtt-nan", {"network": {"rtt_ms": {"north": [6, 18, 16, 20, NAN]}}}, ["network.rtt_ms.north.4", "nan"]),
    # found by setting every value to 2**63: building 2**63 replicas hung the env
    ("replicas-huge", {"sites": [{"name": "x", "region": "north", "kind": "edge", "gpu": "L4", "replicas": 2**63,
                                  "model": "llama-3-8b", "gpu_usd_per_h": 1.0}]},
     ["sites.0.replicas", "less than or equal to 4096", "9223372036854775808"]),
    ("hourly-price-inf", {"sites": [{"name": "x", "region": "north", "kind": "edge", "gpu": "L4", "replicas": 1,
                                     "model": "llama-3-8b", "gpu_usd_per_h": 1.0,
                                     "energy_price_usd_per_kwh": [0.1] * 23 + [INF]}]},
     ["sites.0.energy_price_usd_per_kwh.23", "inf"]),
    ("diurnal-amplitude-nan", {"workload": {"diurnal": {"amplitude": NAN}}}, ["workload.diurnal.amplitude", "nan"]),
    ("economics-inf", {"economics": {"output_value_usd_per_mtok": INF}}, ["economics.output_value_usd_per_mtok", "inf"]),
    ("batch-level-fraction", {"actions": {"batch_levels": [8, 8.5]}}, ["actions.batch_levels.1", "8.5"]),
    ("batch-levels-tuple", {"actions": {"batch_levels": (8, 32)}}, ["actions.batch_levels", "(8, 32)"]),
    # found by fuzzing: 2**63 passed and overflowed in the observation encoder
    ("batch-level-huge", {"actions": {"batch_levels": [8, 32, 2**63]}},
     ["actions.batch_levels", "9223372036854775808", "above the largest batch level supported, 65536"]),
    # an observation of 15 floats per slot: 10**9 slots raised numpy's MemoryError in gym.make
    ("max-sites-huge", {"actions": {"max_sites": 10**9}},
     ["actions.max_sites", "less than or equal to 4096", "1000000000"]),
    ("prefix-tokens-huge", {"workload": {"classes": {"chat": {"prefix": {"kind": "system_prompt", "tokens": 2**63}}}}},
     ["workload.classes.chat.prefix.tokens", "less than or equal to 16777216"]),
    ("prefix-count-huge", {"workload": {"classes": {"chat": {"prefix": {"kind": "documents", "count": 10**12}}}}},
     ["workload.classes.chat.prefix.count", "less than or equal to 1000000"]),
    ("prefix-zipf-huge", {"workload": {"classes": {"chat": {"prefix": {"kind": "documents", "zipf_s": 1e6}}}}},
     ["workload.classes.chat.prefix.zipf_s", "less than or equal to 10"]),
    ("length-sigma-huge", {"workload": {"classes": {"chat": {"prompt_tokens": {"median": 500, "sigma": 1e12}}}}},
     ["workload.classes.chat.prompt_tokens.sigma", "less than or equal to 10"]),
    ("cv-with-poisson", {"workload": {"cv": 3.0}}, ["workload.cv", "3.0", "ignored with arrivals 'poisson'"]),
    ("shares-rescaled-no-more", {"workload": {"classes": {"chat": {"share": 6}}}},
     ["workload.classes.chat.share", "less than or equal to 1", "6"]),
    ("missing-trace-file", {"workload": {"arrivals": "trace", "trace": {"path": "no/such/trace.csv"}}},
     ["workload.trace.path", "'no/such/trace.csv'", "not found", "working directory"]),
    ("residency-as-text", {"workload": {"arrivals": "gamma", "cv": 2.0, "residency_share": "high"}},
     ["workload.residency_share", "'high'"]),
]


@pytest.mark.parametrize("overrides, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_override_names_the_key_path(overrides: dict, fragments: list[str]) -> None:
    with pytest.raises(ScenarioError) as err:
        load_scenario("metro", overrides)
    msg = str(err.value)
    assert "\n" not in msg and "metro.yaml with overrides" in msg
    assert "(override)" in msg  # the source of the bad value
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)


@pytest.mark.parametrize("config, fragment", [
    ({"workload": {"rate_rps": NAN}}, "workload.rate_rps"),
    ({"horizon_s": True}, "horizon_s"),
    ({"faults": {"random": {"mtbf_s": INF, "mttr_s": 5.0}}}, "faults.random.mtbf_s"),
], ids=["nan-rate", "bool-horizon", "inf-mtbf"])
def test_gym_make_config_is_validated(config: dict, fragment: str) -> None:
    with pytest.raises(ScenarioError, match=fragment.replace(".", r"\.")):
        gym.make(env_id("metro"), config=config)


@pytest.mark.parametrize("overrides", [[("horizon_s", 10)], "horizon_s=10", 42], ids=["list", "str", "int"])
def test_overrides_must_be_a_mapping(overrides) -> None:
    with pytest.raises(ScenarioError, match="overrides must be a mapping") as err:
        load_scenario("metro", overrides)
    assert repr(overrides)[:20] in str(err.value)


def test_switching_arrivals_drops_the_old_process_settings() -> None:
    """bursty.yaml sets gamma's cv; switching to poisson in an override drops it (documented)."""
    sc = load_scenario("bursty", {"workload": {"arrivals": "poisson"}})
    assert sc.workload.arrivals == "poisson" and "cv" not in sc.workload.model_fields_set
    with pytest.raises(ScenarioError, match=r"workload\.cv.*\(override\)"):  # but not when given again
        load_scenario("bursty", {"workload": {"arrivals": "poisson", "cv": 4.0}})


@pytest.mark.parametrize("name", ["metro", "bursty", "continental", "outage"])
def test_a_validated_scenario_round_trips_with_overrides(name: str) -> None:
    """``GridEnv(scenario_object, config=...)`` re-validates ``model_dump()``, which writes every
    default: defaults must not count as settings the arrival process ignores."""
    from gridenv.envs import GridEnv

    sc = load_scenario(name)
    assert load_scenario(sc.model_dump()) == sc
    env = GridEnv(sc, config={"horizon_s": 5.0})
    assert env.scenario.horizon_s == 5.0


MOONCAKE = str(Path(__file__).resolve().parents[2] / "configs" / "mooncake" / "mooncake-replay.yaml")


def test_a_block_size_that_does_not_divide_mooncake_blocks_is_refused_up_front() -> None:
    """It was a plain ValueError from the workload at reset(); now the scenario refuses it,
    naming the field, and the same size is fine without prefix caching (no chains built)."""
    with pytest.raises(ScenarioError) as info:
        load_scenario(MOONCAKE, {"engine": {"block_size_tokens": 48}})
    assert "engine.block_size_tokens: 48 does not divide the 512-token blocks" in str(info.value)
    assert "(override)" in str(info.value)
    env = gym.make("gridenv/MooncakeReplay-v1", config={"engine": {"block_size_tokens": 48, "prefix_caching": False}})
    obs, _ = env.reset(seed=0)
    assert np.isfinite(obs).all()
    load_scenario(MOONCAKE, {"engine": {"block_size_tokens": 32}})
