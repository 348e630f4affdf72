"""Bad trace files, and degenerate traces that must replay (and loop) without hanging.

Malformed rows raise TraceError naming the file, the line and the column/key; unsorted rows are
sorted (stable, documented in gridenv/core/traces.py); looping is well-defined for any
timestamps (period = span + mean gap, at least MIN_LOOP_PERIOD_S) and bounded in memory.
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import gridenv  # noqa: F401
from gridenv.envs.registration import env_id
from gridenv.core.scenario import MAX_REQUESTS_PER_EPISODE, ScenarioError, load_scenario
from gridenv.core.simulator import GridSimulator
from gridenv.core.topology import Topology
from gridenv.core.traces import TraceError, load_trace
from gridenv.core.workload import MIN_LOOP_PERIOD_S, generate_arrivals

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def mooncake(*records: dict | str) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def rec(ts=0, inp=10, out=5, hashes=()) -> dict:
    return {"timestamp": ts, "input_length": inp, "output_length": out, "hash_ids": list(hashes)}


# (id, file name, content, fragments of the TraceError message)
CASES = [
    ("mooncake-nan-timestamp", "t.jsonl", mooncake(rec(), '{"timestamp": NaN, "input_length": 1, "output_length": 1, "hash_ids": []}'),
     ["t.jsonl line 2", "'timestamp'", "NaN"]),
    ("mooncake-inf-timestamp", "t.jsonl", mooncake('{"timestamp": Infinity, "input_length": 1, "output_length": 1, "hash_ids": []}'),
     ["line 1", "'timestamp'", "Infinity"]),
    ("mooncake-negative-timestamp", "t.jsonl", mooncake(rec(), rec(ts=-5)), ["line 2", "'timestamp'", "-5"]),
    ("mooncake-float-timestamp", "t.jsonl", mooncake(rec(ts=1.5)), ["line 1", "'timestamp'", "1.5"]),
    ("mooncake-bool-length", "t.jsonl", mooncake(rec(inp=True)), ["line 1", "'input_length'", "true"]),
    ("mooncake-zero-length", "t.jsonl", mooncake(rec(out=0)), ["line 1", "'output_length'", "0"]),
    ("mooncake-negative-length", "t.jsonl", mooncake(rec(), rec(), rec(inp=-3)), ["line 3", "'input_length'", "-3"]),
    ("mooncake-nan-length", "t.jsonl", mooncake('{"timestamp": 0, "input_length": NaN, "output_length": 1, "hash_ids": []}'),
     ["line 1", "'input_length'", "NaN"]),
    ("mooncake-missing-key", "t.jsonl", mooncake({"timestamp": 0, "input_length": 3, "hash_ids": []}),
     ["line 1", "'output_length'", "missing"]),
    ("mooncake-empty", "t.jsonl", "", ["t.jsonl", "no records"]),
    ("mooncake-blank-lines-only", "t.jsonl", "\n  \n\n", ["no records"]),
    ("mooncake-not-json", "t.jsonl", mooncake(rec(), "{timestamp: 1}"), ["line 2", "invalid JSON"]),
    # json.loads keeps the last of two equal keys: input_length 1000 was replayed as 5, silently
    ("mooncake-duplicate-key", "t.jsonl",
     mooncake(rec(), '{"timestamp": 0, "input_length": 1000, "input_length": 5, "output_length": 5, "hash_ids": []}'),
     ["t.jsonl line 2", "key 'input_length'", "given twice"]),
    ("azure-empty", "t.csv", "", ["t.csv line 1", "file is empty"]),
    ("azure-header-only", "t.csv", HEADER, ["no data rows"]),
    ("azure-negative-count", "t.csv", HEADER + "2023-11-16 18:17:03.97,-5,10\n", ["line 2", "'ContextTokens'", "-5"]),
    ("azure-nan-count", "t.csv", HEADER + "2023-11-16 18:17:03.97,nan,10\n", ["line 2", "'ContextTokens'", "nan"]),
    ("azure-inf-count", "t.csv", HEADER + "2023-11-16 18:17:03.97,5,inf\n", ["line 2", "'GeneratedTokens'", "inf"]),
    ("azure-nan-timestamp", "t.csv", HEADER + "2023-11-16 18:17:03.97,5,1\nnan,5,1\n", ["line 3", "'TIMESTAMP'", "nan"]),
    ("unknown-suffix", "t.txt", "x", ["t.txt", "suffix '.txt'"]),
]


@pytest.mark.parametrize("name, content, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_trace_file_names_file_line_and_field(tmp_path: Path, name: str, content: str, fragments) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(TraceError) as err:
        load_trace(path)
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))


def test_unsorted_rows_are_sorted_stably(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(mooncake(rec(ts=3000, inp=3), rec(ts=1000, inp=1), rec(ts=3000, inp=4), rec(ts=2000, inp=2)))
    trace = load_trace(path)
    np.testing.assert_array_equal(trace.arrival_s, [0.0, 1.0, 2.0, 2.0])
    np.testing.assert_array_equal(trace.prompt_tokens, [1, 2, 3, 4])


def replay(path: Path, horizon_s: float, loop: bool = True, rate_scale: float = 1.0):
    return {"horizon_s": horizon_s, "workload": {"arrivals": "trace", "trace": {
        "path": str(path), "loop": loop, "rate_scale": rate_scale, "slo_class": "chat"}}}


@pytest.mark.parametrize("records, per_pass, period_s", [
    ([rec(ts=0)], 1, MIN_LOOP_PERIOD_S),                                  # a single row
    ([rec(ts=7), rec(ts=7), rec(ts=7)], 3, MIN_LOOP_PERIOD_S),            # identical timestamps
    ([rec(ts=0), rec(ts=1)], 2, MIN_LOOP_PERIOD_S),                       # 1 ms apart: minimum period
    ([rec(ts=0), rec(ts=2000), rec(ts=4000)], 3, 6.0),                    # span 4 s + mean gap 2 s
], ids=["single-row", "identical", "tiny-span", "regular"])
def test_degenerate_traces_loop_with_a_defined_period(tmp_path, records, per_pass, period_s) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(mooncake(*records))
    sc = load_scenario("metro", replay(path, horizon_s=30.0))
    a = generate_arrivals(sc, Topology(sc), np.random.default_rng(0))
    passes = int(np.ceil(30.0 / period_s))
    assert len(a) == per_pass * passes
    assert np.all(np.diff(a.time_s) >= 0) and a.time_s[-1] < 30.0
    np.testing.assert_allclose(a.time_s[per_pass] - a.time_s[0], period_s)


def test_single_row_loop_runs_a_whole_episode(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(mooncake(rec(ts=123)))
    env = gym.make(env_id("metro"), config=replay(path, horizon_s=20.0))
    env.reset(seed=0)
    steps, truncated = 0, False
    while not truncated:
        _, reward, _, truncated, _ = env.step(env.action_space.sample() * 0)
        assert np.isfinite(reward)
        steps += 1
        assert steps < 1000
    assert env.unwrapped.sim.metrics.arrived == 20


def test_a_loop_too_long_for_memory_is_refused_up_front(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(mooncake(*[rec(ts=0)] * 200))  # 200 requests per second once looped
    sc = load_scenario("metro", replay(path, horizon_s=1e6))
    with pytest.raises(ScenarioError, match=rf"workload\.trace: .*t\.jsonl.*{MAX_REQUESTS_PER_EPISODE:,}"):
        GridSimulator(sc)


def test_relative_trace_path_resolves_against_the_working_directory(tmp_path, monkeypatch) -> None:
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "t.jsonl").write_text(mooncake(rec(ts=0), rec(ts=500)))
    monkeypatch.chdir(tmp_path)
    sc = load_scenario("metro", replay(Path("traces/t.jsonl"), horizon_s=5.0, loop=False))
    assert sc.workload.trace.path == str(tmp_path.resolve() / "traces" / "t.jsonl")
