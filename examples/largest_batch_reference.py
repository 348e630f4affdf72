"""A reference row for the generalist's leaderboard, not a registered baseline.

``SloGreedyLargestBatch`` routes as ``slo-greedy`` does and asks every chosen site for its
largest batching level (128 sequences in every registered scenario), where the registered
heuristics keep each site's configured level (32). Production routers pick an endpoint, not the
engine's batch size, so this is not one of them; it is here to show how much of a learned
policy's margin over the heuristics comes from the batching half of the action alone
(README "The generalist"):

    python evaluate.py --suites-file configs/suites_generalist.yaml --suite zero-shot \
        --scenarios metro --policies slo-greedy,slo-greedy-b128=examples/largest_batch_reference.py:SloGreedyLargestBatch
"""

from __future__ import annotations

import numpy as np

from agents.heuristics import make_heuristic
from agents.policy import Policy


class SloGreedyLargestBatch(Policy):
    """slo-greedy's site choice, the largest batching level at the chosen site."""

    name = "slo-greedy-b128"

    def __init__(self) -> None:
        self._router = make_heuristic("slo-greedy")

    def reset(self, seed: int | None = None) -> None:
        self._router.reset(seed)

    def act(self, obs: np.ndarray, snapshot) -> np.ndarray:
        action = self._router.act(obs, snapshot)
        if action[0] < snapshot.statics.n_sites:  # routed, not shed
            action[1] = len(snapshot.statics.batch_levels) - 1
        return action
