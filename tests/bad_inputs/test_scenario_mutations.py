"""One value of a registered scenario file replaced by a bad or extreme one: either a
ScenarioError (or TraceError) naming it, or an env whose observations and rewards stay finite.

Random single-value edits of this kind found three bugs on 2026-12-01 (a batch level of 2**63
and a 2**63-token shared prefix overflowed int64 deep in the encoder and the workload
generator; a log-normal sigma of 1e12 overflowed the draws); the cases that found them are
pinned in test_override_inputs.py, and this test keeps drawing new ones.
"""

from __future__ import annotations

import math
import signal

import numpy as np
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from gridenv.core.scenario import ScenarioError, load_scenario, scenario_file
from gridenv.core.traces import TraceError
from gridenv.envs.grid_env import GridEnv

SCENARIOS = ["metro", "coding-agent", "bursty", "outage", "rag"]
BAD = [-1, 0, 1, 0.5, -1e-9, 1e12, 2**63, float("nan"), float("inf"), "x", None, [], {}, True]


def _leaves(d, path=()):
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield from _leaves(v, path + (i,))
    else:
        yield path


RAW = {name: yaml.safe_load(scenario_file(name).read_text()) for name in SCENARIOS}
LEAVES = {name: list(_leaves(raw)) for name, raw in RAW.items()}


@st.composite
def mutated(draw):
    name = draw(st.sampled_from(SCENARIOS))
    path = draw(st.sampled_from(LEAVES[name]))
    value = draw(st.sampled_from(BAD))
    raw = yaml.safe_load(scenario_file(name).read_text())  # a fresh copy
    node = raw
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    raw["source"] = str(scenario_file(name))
    return name, path, value, raw


@settings(max_examples=150, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
          suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_a_mutated_scenario_is_refused_or_runs_finite(case):
    name, path, value, raw = case
    try:
        env = GridEnv(load_scenario(raw))
        obs, info = env.reset(seed=1)
    except (ScenarioError, TraceError) as err:
        msg = str(err)
        assert msg and "\n" not in msg, (name, path, value, msg)
        return
    rng = np.random.default_rng(0)
    n_sites, n_levels = (int(x) for x in env.action_space.nvec)
    for _ in range(150):
        sites = np.flatnonzero(info["action_mask"][:n_sites])
        obs, reward, terminated, truncated, info = env.step(np.array([rng.choice(sites), rng.integers(n_levels)]))
        assert np.isfinite(obs).all() and math.isfinite(reward), (name, path, value)
        if terminated or truncated:
            break


class _Slow(Exception):
    pass


def _too_slow(signum, frame):
    raise _Slow()


def test_every_value_set_huge_is_refused_or_runs_finite():
    """Each leaf of three scenarios (the sharing one included) set to 2**63, one at a time: the
    value class that overflowed, and with ``replicas`` hung building 2**63 engines. Every leaf,
    each case cut at 5 s (they take well under 1 s) so that a hang fails instead of hanging."""
    problems = []
    previous = signal.signal(signal.SIGALRM, _too_slow)
    for name in ("metro", "coding-agent", "rag"):
        for path in LEAVES[name]:
            raw = yaml.safe_load(scenario_file(name).read_text())
            node = raw
            for k in path[:-1]:
                node = node[k]
            node[path[-1]] = 2**63
            raw["source"] = str(scenario_file(name))
            signal.alarm(5)
            try:
                env = GridEnv(load_scenario(raw))
                obs, info = env.reset(seed=1)
                n_sites, n_levels = (int(x) for x in env.action_space.nvec)
                for _ in range(50):
                    site = int(np.flatnonzero(info["action_mask"][:n_sites])[0])
                    obs, reward, term, trunc, info = env.step(np.array([site, n_levels - 1]))
                    if not (np.isfinite(obs).all() and math.isfinite(reward)):
                        problems.append((name, path, "non-finite"))
                        break
                    if term or trunc:
                        break
            except (ScenarioError, TraceError):
                continue
            except _Slow:
                problems.append((name, path, "still running after 5 s"))
            except Exception as err:  # anything else is a bug: collect them all, then fail
                problems.append((name, path, f"{type(err).__name__}: {err}"))
            finally:
                signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)
    assert not problems, problems
