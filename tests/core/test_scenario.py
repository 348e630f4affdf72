"""Scenario validation: a bad scenario fails with one message naming the field or the line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gridenv.core.scenario import ScenarioError, load_scenario, scenario_dir, scenario_names
from gridenv.core.simulator import GridSimulator
from gridenv.core.traces import TraceError


def metro() -> dict:
    return yaml.safe_load((scenario_dir() / "metro.yaml").read_text())


def test_every_shipped_scenario_validates() -> None:
    names = scenario_names()
    assert {"metro", "continental", "outage", "bursty", "centralized", "distributed-edge"} <= set(names)
    for name in names:
        sc = load_scenario(name)
        assert sc.name == name
        GridSimulator(sc)  # builds the topology and catalog lookups


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d["sites"][2].update(gpu="B200"), r"sites\.2\.gpu: unknown GPU 'B200'"),
        (lambda d: d["sites"][0].update(replicas=-1), r"sites\.0\.replicas: Input should be greater than or equal to 1"),
        (lambda d: d["sites"][1].update(tp=0), r"sites\.1\.tp"),
        (lambda d: d["sites"][0].pop("gpu_usd_per_h"), r"sites\.0\.gpu_usd_per_h: Field required"),
        (lambda d: d.pop("horizon_s"), r"horizon_s: Field required"),
        (lambda d: d["network"]["rtt_ms"].update(north=[6, 18, 16]), r"network\.rtt_ms\.north: 3 values for 5 sites"),
        (lambda d: d["network"]["rtt_ms"].pop("west"), r"network\.rtt_ms: rows .* do not match regions"),
        (lambda d: d["sites"][0].update(model="gpt-5"), r"sites\.0\.model: unknown model 'gpt-5'"),
        (lambda d: d["sites"][0].update(region="mars"), r"sites\.0\.region: unknown region 'mars'"),
        (lambda d: d["sites"][0].update(colour="red"), r"sites\.0\.colour: Extra inputs are not permitted"),
        (lambda d: d["workload"]["classes"].update(poetry=d["workload"]["classes"]["chat"]), r"unknown SLO class 'poetry'"),
        (lambda d: d["workload"].update(models={"llama-3-70b": 1.0}), r"no site serves 'llama-3-70b'"),
        (lambda d: d["actions"].update(batch_levels=[32, 8]), r"actions\.batch_levels"),
        (lambda d: d["sites"][0].update(energy_price_usd_per_kwh=[0.1] * 5), r"24 hourly values"),
        (lambda d: d["sites"][1].update(name="edge-north"), r"duplicate name 'edge-north'"),
        (lambda d: d.update(faults={"outages": [{"site": "nowhere", "start_s": 1, "duration_s": 1}]}), r"faults\.outages\.0\.site: unknown site"),
        (lambda d: d["workload"].update(arrivals="trace"), r"needs a 'trace' section"),
    ],
)
def test_bad_scenario_names_the_field(mutate, expected: str) -> None:
    raw = metro()
    mutate(raw)
    with pytest.raises(ScenarioError, match=expected) as err:
        load_scenario(raw)
    assert "\n" not in str(err.value)


def test_model_that_does_not_fit_is_refused() -> None:
    raw = metro()
    raw["sites"][0].update(model="llama-3-70b")
    raw["workload"]["models"] = {"llama-3-8b": 1.0}
    with pytest.raises(ValueError, match=r"sites\.0: llama-3-70b .* does not fit on 1 x L4"):
        GridSimulator(load_scenario(raw))


def test_bad_yaml_file_and_unknown_name(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load_scenario(bad)
    with pytest.raises(ScenarioError, match="unknown scenario 'atlantis'; known: .*metro"):
        load_scenario("atlantis")
    with pytest.raises(ScenarioError, match="not found"):
        load_scenario(tmp_path / "missing.yaml")


def test_overrides_merge_deeply() -> None:
    sc = load_scenario("metro", {"workload": {"rate_rps": 99.0}, "horizon_s": 12.0})
    assert sc.workload.rate_rps == 99.0 and sc.horizon_s == 12.0
    assert sc.workload.classes["chat"].share == 0.6  # untouched siblings survive


def test_malformed_trace_row_names_the_line(tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:17:03.9799600,4808,10\n"
        "2023-11-16 18:17:04.0319600,abc,8\n"
    )
    raw = metro()
    raw["workload"].update(arrivals="trace", trace={"path": str(trace)})
    del raw["workload"]["rate_rps"], raw["workload"]["diurnal"]  # read only by synthetic arrivals
    with pytest.raises(TraceError, match=r"line 3: column 'ContextTokens'"):
        GridSimulator(load_scenario(raw))
