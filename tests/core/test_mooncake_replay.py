"""The Mooncake replay of the `cache` suite: the committed trace is the published file, its path
resolves beside the scenario file, the scenario is registered as gridenv/MooncakeReplay-v1 and
works from any directory, and its sharing comes from the trace's hash_ids."""

from __future__ import annotations

import hashlib
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from agents.evaluation import get_suite
from gridenv.core.scenario import ScenarioError, load_scenario, scenario_names
from gridenv.core.simulator import SHED, GridSimulator
from gridenv.core.traces import load_trace
from gridenv.envs.registration import EXTRA_SCENARIO_FILES, resolve_scenario

ROOT = Path(__file__).resolve().parents[2]
MOONCAKE = ROOT / "configs" / "mooncake"
TRACE = MOONCAKE / "fast25_synthetic_trace.jsonl"
REPLAY = MOONCAKE / "mooncake-replay.yaml"
#: Git blob id of FAST25-release/traces/synthetic_trace.jsonl in kvcache-ai/Mooncake at 3b5a594.
UPSTREAM_BLOB = "e4838049c0dcfc358a5f24ab08251279475cba94"


def git_blob_id(data: bytes) -> str:
    """What ``git hash-object`` prints for a file of these bytes."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_committed_trace_is_the_published_file_with_its_published_shape() -> None:
    assert git_blob_id(TRACE.read_bytes()) == UPSTREAM_BLOB
    assert "Apache License" in (MOONCAKE / "LICENSE-APACHE").read_text()
    t = load_trace(TRACE)
    # FAST'25 Table 2, synthetic workload: 3,993 requests, mean input 15,325, mean output 149.
    assert len(t) == 3993 and 1000 < t.duration_s < 1030
    assert round(t.prompt_tokens.mean()) == 15325 and round(t.output_tokens.mean()) == 149
    for n, h in zip(t.prompt_tokens, t.hash_ids):
        assert (len(h) - 1) * 512 < n <= len(h) * 512  # one hash per 512-token block


def test_relative_trace_path_resolves_against_the_scenario_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no trace here: the scenario file's folder is used
    assert load_scenario(REPLAY).workload.trace.path == str(TRACE)
    # the working directory still comes first
    (tmp_path / TRACE.name).write_text('{"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [1, 2]}\n')
    assert load_scenario(REPLAY).workload.trace.path == str(tmp_path / TRACE.name)
    # a scenario given as a dict has no folder: only the working directory is tried
    raw = load_scenario(REPLAY).model_dump()
    with pytest.raises(ScenarioError, match=rf"'elsewhere.jsonl' not found \(looked at {tmp_path / 'elsewhere.jsonl'};"):
        load_scenario(raw, {"workload": {"trace": {"path": "elsewhere.jsonl"}}})
    with pytest.raises(ScenarioError, match=f"{tmp_path / 'nope.jsonl'} and {MOONCAKE / 'nope.jsonl'}"):
        load_scenario(REPLAY, {"workload": {"trace": {"path": "nope.jsonl"}}})


def test_registered_id_works_from_any_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert "mooncake/mooncake-replay.yaml" in EXTRA_SCENARIO_FILES
    ref = resolve_scenario("gridenv/MooncakeReplay-v1")
    assert (ref.name, ref.source) == ("mooncake-replay", str(REPLAY))
    assert resolve_scenario("mooncake-replay") == ref == resolve_scenario(str(REPLAY))
    assert load_scenario(REPLAY).name == "mooncake-replay"  # the file's name is its stem
    assert "mooncake-replay" not in scenario_names()  # not a built-in: not in `standard`
    env = gym.make("gridenv/MooncakeReplay-v1", config={"horizon_s": 5.0})
    obs, info = env.reset(seed=0)
    for _ in range(20):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample() * 0)
        assert np.isfinite(obs).all() and np.isfinite(reward)
    env.close()


def test_replay_shares_prefixes_through_the_trace_hashes() -> None:
    sc = load_scenario(REPLAY, {"horizon_s": 120.0})
    assert sc.workload.arrivals == "trace" and sc.workload.trace.format == "mooncake"

    def hit_rate(affine: bool) -> float:
        sim = GridSimulator(sc)
        sim.reset(np.random.default_rng(3))
        assert sim.arrivals.hash_block_tokens == 512
        rng = np.random.default_rng(4)
        while not sim.done:
            snap = sim.snapshot()
            f = np.flatnonzero(snap.feasible)
            if not len(f):
                sim.decide(SHED)
            elif affine:  # largest cached fraction, then fewest outstanding per replica
                load = (snap.waiting + snap.running) / np.asarray(snap.statics.replicas)
                sim.decide(int(f[np.lexsort((load[f], -np.round(snap.prefix_cached_frac[f], 2)))[0]]))
            else:
                sim.decide(int(f[rng.integers(len(f))]))
        return sim.summary()["prefix_hit_rate"]

    # The first 360 s of the trace at 3x (reuse grows later in the trace): 0.075 against 0.017.
    affine, blind = hit_rate(True), hit_rate(False)
    assert affine > 0.05 and affine > 2.5 * blind, (affine, blind)


def test_cache_suite_holds_the_caching_scenarios_and_the_replay_on_evaluation_seeds(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the replay no longer needs the repository root
    suite = get_suite("cache", ROOT / "configs" / "suites.yaml")
    assert list(suite.scenarios) == ["chat-multiturn", "coding-agent", "rag", "mooncake-replay"]
    assert Path(suite.source("mooncake-replay")) == REPLAY
    assert min(suite.seeds) >= 10000
    standard = get_suite("standard", ROOT / "configs" / "suites.yaml").scenarios
    assert {"chat-multiturn", "coding-agent", "rag"} <= set(standard)
