"""The Mooncake-format replay of the `cache` suite: the committed synthetic trace is what its
documented command writes, and the replay's sharing comes from the trace's hash_ids."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from agents.evaluation import get_suite
from gridenv.core.scenario import load_scenario
from gridenv.core.simulator import SHED, GridSimulator
from gridenv.core.traces import load_trace

ROOT = Path(__file__).resolve().parents[2]
MOONCAKE = ROOT / "configs" / "mooncake"
TRACE = MOONCAKE / "mooncake-synthetic-10min.jsonl"
REPLAY = MOONCAKE / "mooncake-replay.yaml"


def documented_command() -> str:
    """The bash line of configs/mooncake/README.md that writes the trace."""
    text = (MOONCAKE / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)\n```", text, re.S).group(1).strip()
    assert block.startswith("python -c ")
    return block


def test_the_documented_command_writes_the_committed_trace(tmp_path: Path) -> None:
    code = documented_command().removeprefix("python -c ").strip("\"")
    (tmp_path / "configs" / "mooncake").mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True, timeout=300)
    written = (tmp_path / "configs" / "mooncake" / TRACE.name).read_bytes()
    assert written == TRACE.read_bytes()


def test_trace_has_mooncake_s_published_shape() -> None:
    t = load_trace(TRACE)
    assert 3500 < len(t) < 4500 and 590 < t.duration_s <= 600  # 23,608 requests per hour
    assert 7000 < t.prompt_tokens.mean() < 8500  # Mooncake: mean input 7,590 tokens
    first = [h[0] for h in t.hash_ids]
    assert len(set(first)) < 0.5 * len(first)  # documents are shared across requests
    for n, h in zip(t.prompt_tokens, t.hash_ids):
        assert (len(h) - 1) * 512 < n <= len(h) * 512  # one hash per 512-token block


def test_replay_shares_prefixes_through_the_trace_hashes(monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # the trace path is relative to the working directory
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

    affine, blind = hit_rate(True), hit_rate(False)
    assert affine > 0.25 and affine > blind + 0.08, (affine, blind)


def test_cache_suite_holds_the_caching_scenarios_and_the_replay_on_evaluation_seeds(monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # suite paths are relative to the working directory
    suite = get_suite("cache")
    assert list(suite.scenarios) == ["chat-multiturn", "coding-agent", "rag", "mooncake-replay"]
    assert Path(suite.source("mooncake-replay")) == REPLAY
    assert min(suite.seeds) >= 10000
    assert {"chat-multiturn", "coding-agent", "rag"} <= set(get_suite("standard").scenarios)
