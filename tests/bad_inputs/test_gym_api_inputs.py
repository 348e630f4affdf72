"""Actions outside ``action_space`` are rejected with InvalidActionError naming the action;
``step()`` before ``reset()`` says so."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import gridenv  # noqa: F401
from gridenv.envs.registration import env_id
from gridenv.envs import GridEnv, InvalidActionError


@pytest.fixture(scope="module")
def env() -> GridEnv:
    e = GridEnv("metro", config={"horizon_s": 30.0})  # 5 sites, 3 batch levels: MultiDiscrete([6, 3])
    e.reset(seed=0)
    return e


# (id, action, fragments of the message)
CASES = [
    ("fractional", [0.5, 1], ["[0.5, 1]", "fractional"]),
    ("fractional-level", np.array([1.0, 0.25]), ["0.25", "fractional"]),
    ("nan", [float("nan"), 0], ["nan", "non-finite"]),
    ("inf", np.array([0.0, np.inf]), ["inf", "non-finite"]),
    ("too-long", np.array([1, 0, 0]), ["array([1, 0, 0])", "shape (3,)"]),
    ("too-short", [1], ["[1]", "shape (1,)"]),
    ("nested", [[1, 0]], ["[[1, 0]]", "shape (1, 2)"]),
    ("scalar", 3, ["action 3 ", "shape ()"]),
    ("string", "1,0", ["'1,0'", "str"]),
    ("string-array", np.array(["1", "0"]), ["'1'", "dtype <U1"]),
    ("none", None, ["action None", "NoneType"]),
    ("bool", np.array([True, False]), ["True", "dtype bool"]),
    ("dict", {"site": 0, "level": 1}, ["{'site': 0", "dtype object"]),
    ("ragged", [1, [0, 1]], ["[1, [0, 1]]"]),
    ("complex", np.array([1 + 0j, 0]), ["1.+0.j", "complex128"]),
    ("negative-site", [-1, 0], ["[-1, 0]", "site -1 outside 0..5"]),
    ("site-too-big", [6, 0], ["[6, 0]", "site 6 outside 0..5"]),
    ("negative-level", np.array([0, -2]), ["array([ 0, -2])", "batch level -2 outside 0..2"]),
    ("level-too-big", (0, 3), ["(0, 3)", "batch level 3 outside 0..2"]),
    ("huge", np.array([2**62, 0]), ["4611686018427387904"]),
]


@pytest.mark.parametrize("action, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_action_outside_the_space_is_named(env: GridEnv, action, fragments) -> None:
    now = env.sim.now
    with pytest.raises(InvalidActionError) as err:
        env.step(action)
    msg = str(err.value)
    assert "MultiDiscrete([6, 3])" in msg
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)
    assert env.sim.now == now  # nothing was simulated


@pytest.mark.parametrize("action", [np.array([5, 1], dtype=np.int32), np.array([5.0, 1.0]), (np.uint8(5), 1), [5, 2]],
                         ids=["int32", "whole-floats", "numpy-scalars", "list"])
def test_actions_inside_the_space_are_accepted(action) -> None:
    e = GridEnv("metro", config={"horizon_s": 30.0})
    e.reset(seed=0)
    _, reward, _, _, info = e.step(action)  # 5 = shed: always allowed
    assert np.isfinite(reward) and not info["invalid_action"]


def test_step_before_reset_says_so() -> None:
    e = GridEnv("metro", config={"horizon_s": 30.0})
    with pytest.raises(RuntimeError, match=r"step\(\) before reset\(\)"):
        e.step([5, 0])


def test_step_before_reset_through_gym_make_says_so() -> None:
    e = gym.make(env_id("metro"), config={"horizon_s": 30.0})
    with pytest.raises(gym.error.ResetNeeded, match=r"step\(\) before calling env.reset\(\)"):
        e.step(np.array([5, 0]))


def test_step_in_an_episode_without_requests_says_why() -> None:
    e = GridEnv("metro", config={"horizon_s": 0.001, "workload": {"rate_rps": 0.01}})
    e.reset(seed=0)
    assert len(e.sim.arrivals) == 0 and e.sim.done
    with pytest.raises(RuntimeError, match=r"no request to route \(0 arrivals within horizon_s = 0.001 s\)"):
        e.step([5, 0])
