"""Warm-start teachers that are not baselines: compositions of registered heuristics.

A teacher only has to be a good policy a network can imitate from the observation; it is not on
the leaderboard, since no production router does what these do. See
:data:`agents.warm_start.TEACHERS` for the registered names.
"""

from __future__ import annotations

import numpy as np

from agents.heuristic_base import Heuristic
from gridenv.core.snapshot import RouterSnapshot

__all__ = ["PrefixSwitch"]


class PrefixSwitch(Heuristic):
    """One rule where some site holds a good part of the prompt in its prefix cache, another elsewhere.

    ``cached`` (default llm-d's precise-prefix profile, :class:`agents.cache_routers.LlmdPrecise`,
    with its saturation admission) decides a request when the largest
    ``prefix_cached_frac`` over the sites exceeds `min_cached_frac`; ``cold`` (default
    ``slo-greedy`` with ``shed_slack_frac`` 0.25, the ``slo-greedy-lenient`` teacher) decides
    the others. Both request the same `level` / `core_level`.

    Why: slo-greedy's TTFT estimate prices every queued request as a full uncached prefill, so
    where prompts share prefixes it sheds requests that would have been served in time and
    ignores which site holds the prompt; llm-d's weighted prefix scorer keeps sessions where
    their KV is, but never sheds by SLO and ignores price where nothing is cached.

    Chosen on tuning seeds only ($ per episode, batch level 128 everywhere): with thresholds 0,
    0.3 and 0.6 summed over coding-agent, mooncake-replay, chat-multiturn and rag (seeds
    5000-5001, mean of 2) 64.9, 65.1 and 64.6 (slo-greedy-lenient 59.5, llm-d precise 61.7);
    summed over RandomGrid grids 5002 and 11-15 with ``p_sharing`` 0.5, 69.3 (0.3) and 72.7
    (0.6) against slo-greedy-lenient's 71.7. 0.6: coding-agent 19.87 (lenient 17.04, llm-d
    18.57), mooncake-replay 23.41 (21.52, 23.90), chat-multiturn 7.36 (7.13, 6.65), rag 14.00
    (13.76, 12.56). Without shared prefixes (``prefix_cached_frac`` all zero) it is ``cold``
    exactly.
    """

    name = "prefix-switch"
    may_shed = True

    def __init__(self, level: int | None = None, *, core_level: int | None = None,
                 min_cached_frac: float = 0.6, cached: Heuristic | None = None,
                 cold: Heuristic | None = None) -> None:
        super().__init__(level, core_level=core_level)
        if not 0.0 <= min_cached_frac < 1.0:
            raise ValueError(f"min_cached_frac must be in [0, 1), got {min_cached_frac}")
        from agents.heuristics import make_heuristic

        self.min_cached_frac = float(min_cached_frac)
        self.cached = cached if cached is not None else make_heuristic("llmd-precise", level=level,
                                                                       core_level=core_level)
        self.cold = cold if cold is not None else make_heuristic("slo-greedy", level=level, core_level=core_level,
                                                                 shed_slack_frac=0.25)

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self.cached.reset(seed)
        self.cold.reset(seed)

    def _rule(self, snap: RouterSnapshot) -> Heuristic:
        c = snap.prefix_cached_frac
        return self.cached if c is not None and len(c) and float(np.max(c)) > self.min_cached_frac else self.cold

    def sheds(self, snap):
        return self._rule(snap).sheds(snap)

    def choose(self, snap):
        return self._rule(snap).choose(snap)

    def site_scores(self, snapshot):
        return self._rule(snapshot).site_scores(snapshot)
