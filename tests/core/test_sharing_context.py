"""multi_turn conversations that start with a shared context (``context_tokens``): a coding
agent's repository context heads every step of every session on that repository."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from gridenv.core.scenario import ScenarioError, load_scenario
from gridenv.core.simulator import GridSimulator
from scenario_builders import one_site_scenario  # tests/core/scenario_builders.py

BS = 64
CTX_TOKENS = 1000  # 15 full blocks of 64 and 40 tokens that spill into the conversation's blocks


def scenario(prefix: dict, horizon_s: float = 300.0) -> dict:
    return one_site_scenario("ctx", horizon_s, prompt_tokens=100, output_tokens=50, rate_rps=2.0,
                             slo_class="code", model="llama-3.1-8b", request_class={"prefix": prefix},
                             batch_levels=None, engine={"block_size_tokens": BS})


def arrivals(raw: dict, seed: int = 0):
    sim = GridSimulator(load_scenario(raw))
    sim.reset(np.random.default_rng(seed))
    return sim, sim.arrivals


def test_every_turn_starts_with_its_conversation_s_shared_context() -> None:
    _, a = arrivals(scenario({"kind": "multi_turn", "context_tokens": CTX_TOKENS, "count": 3,
                              "turns_mean": 4.0, "think_time_s": 20.0}))
    n_ctx = CTX_TOKENS // BS
    by_conv = defaultdict(list)  # conversation key namespace -> its turns' chains, in time order
    for i, chain in enumerate(a.prefix_hashes):
        assert len(chain) == (a.prompt_tokens[i] + a.output_tokens[i]) // BS
        conv_key = chain[n_ctx] >> 24  # the first block after the context: the conversation's own
        by_conv[conv_key].append((i, chain))
    contexts = set()
    for turns in by_conv.values():
        head = tuple(turns[0][1][:n_ctx])
        contexts.add(head)
        for k, (i, chain) in enumerate(turns):
            assert tuple(chain[:n_ctx]) == head  # the same context on every turn
            # turn k's prompt: context + k+1 new texts + k answers
            assert a.prompt_tokens[i] == CTX_TOKENS + 100 * (k + 1) + 50 * k
            if k:
                prev = turns[k - 1][1]
                assert tuple(chain[: len(prev)]) == tuple(prev)  # extends the previous turn
    assert len(contexts) == 3  # every context drawn, by several conversations
    assert len(by_conv) > 3 * 5
    own = [set(chain[n_ctx:]) for turns in by_conv.values() for _, chain in turns[-1:]]
    assert sum(len(s) for s in own) == len(set().union(*own))  # conversations share only contexts
    ctx_keys = set().union(*contexts)
    assert not ctx_keys & set().union(*own)


def test_zipf_popularity_of_contexts() -> None:
    _, a = arrivals(scenario({"kind": "multi_turn", "context_tokens": CTX_TOKENS, "count": 20,
                              "zipf_s": 1.2, "turns_mean": 1.0}, horizon_s=600.0))
    firsts = np.array([chain[0] for chain in a.prefix_hashes])  # one turn per conversation
    _, counts = np.unique(firsts, return_counts=True)
    counts = np.sort(counts)[::-1]
    assert counts[0] > 4 * counts[len(counts) // 2]  # the head is far more popular than the middle


def test_the_shared_context_is_served_from_cache_across_conversations() -> None:
    """One replica, contexts that fit its cache: after its first conversation a context's
    blocks are hits for every other conversation on it."""
    raw = scenario({"kind": "multi_turn", "context_tokens": CTX_TOKENS, "count": 2,
                    "turns_mean": 1.0})
    sim, a = arrivals(raw)
    while not sim.done:
        sim.decide(0, 0)
    hit_tokens = sim.summary()["prefix_hit_rate"] * a.prompt_tokens.sum()
    expected = (len(a) - 2) * (CTX_TOKENS // BS) * BS  # all but the first of each context
    assert hit_tokens == pytest.approx(expected, rel=0.02)


def test_context_tokens_only_with_multi_turn() -> None:
    with pytest.raises(ScenarioError, match="context_tokens.*multi_turn"):
        load_scenario(scenario({"kind": "documents", "context_tokens": 500}))


def test_without_context_the_conversations_are_unchanged() -> None:
    """context_tokens: 0 (the default) draws nothing more: same arrivals bit for bit."""
    base = {"kind": "multi_turn", "turns_mean": 3.0}
    _, a = arrivals(scenario(base), seed=3)
    _, b = arrivals(scenario({**base, "context_tokens": 0}), seed=3)
    assert np.array_equal(a.time_s, b.time_s) and np.array_equal(a.prompt_tokens, b.prompt_tokens)
    assert [tuple(c) for c in a.prefix_hashes] == [tuple(c) for c in b.prefix_hashes]
    assert isinstance(a.prefix_hashes[0], range)
