"""agents.teachers: warm-start teachers composed of registered heuristics."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from agents.heuristics import make_heuristic
from agents.teachers import PrefixSwitch
from agents.warm_start import make_teacher, teacher_names
from tests.agents.test_heuristics import snap


def site_of(policy, sn) -> int:
    policy.reset(0)
    site = int(policy.act(None, sn)[0])
    return -1 if site == sn.statics.max_sites else site


def test_prefix_switch_is_registered_as_a_teacher_not_a_baseline():
    from agents.heuristics import heuristic_names

    assert "prefix-switch" in teacher_names() and "prefix-switch" not in heuristic_names()
    t = make_teacher("prefix-switch", level=2)
    assert isinstance(t, PrefixSwitch) and t.level == 2 and t.min_cached_frac == 0.6
    assert t.cached.level == t.cold.level == 2


def test_prefix_switch_follows_llmd_where_the_prompt_is_cached_and_lenient_slo_greedy_elsewhere():
    # Site 2 holds the prompt but has a queue: slo-greedy prefers an idle site, llm-d's prefix
    # scorer (weight 2) keeps the request where its KV is.
    waiting = [0, 0, 6, 0, 0]
    hot = snap(waiting=waiting, cached=[0, 0, 0.9, 0, 0])
    lenient, llmd = make_teacher("slo-greedy-lenient"), make_heuristic("llmd-precise")
    assert site_of(llmd, hot) == 2 != site_of(lenient, hot)
    assert site_of(make_teacher("prefix-switch"), hot) == 2
    # At or under the threshold (60% of the prompt cached somewhere) the cold rule decides.
    for frac in (0.0, 0.5, 0.6):
        warm = snap(waiting=waiting, cached=[0, 0, frac, 0, 0])
        assert site_of(make_teacher("prefix-switch"), warm) == site_of(lenient, warm) != 2
    # A predicted miss everywhere: the cold rule sheds, the cached rule still routes.
    tight_cold = snap(ttft_slo_s=1e-3, waiting=waiting)
    tight_hot = snap(ttft_slo_s=1e-3, waiting=waiting, cached=[0, 0, 0.9, 0, 0])
    assert site_of(make_teacher("prefix-switch"), tight_cold) == -1
    assert site_of(make_teacher("prefix-switch"), tight_hot) == site_of(llmd, tight_hot) == 2
    assert make_teacher("prefix-switch").site_scores(hot).tolist() == llmd.site_scores(hot).tolist()


def test_prefix_switch_without_shared_prefixes_is_slo_greedy_lenient_for_a_whole_episode():
    actions = {}
    for name in ("prefix-switch", "slo-greedy-lenient"):
        env = gym.make("gridenv/Metro-v1")
        pol = make_teacher(name, level=2)
        pol.reset(7)
        obs, info = env.reset(seed=7)
        seq = []
        while True:
            assert not info["snapshot"].prefix_cached_frac.any()
            a = pol.act(obs, info["snapshot"])
            seq.append(a.tolist())
            obs, _, term, trunc, info = env.step(a)
            if term or trunc:
                break
        actions[name] = seq
    assert len(actions["prefix-switch"]) > 100
    assert actions["prefix-switch"] == actions["slo-greedy-lenient"]


@pytest.mark.parametrize("bad", [-0.1, 1.0, float("nan")])
def test_prefix_switch_refuses_a_threshold_outside_0_1(bad):
    with pytest.raises(ValueError, match="min_cached_frac must be in"):
        PrefixSwitch(min_cached_frac=bad)
