"""One policy interface for heuristics, trained SB3 agents and exported ONNX policies."""

from __future__ import annotations

import abc

import numpy as np

from gridenv.core.snapshot import RouterSnapshot

__all__ = ["Policy"]


class Policy(abc.ABC):
    """Maps a router-visible snapshot (and its encoded observation) to an env action.

    The snapshot comes from what the environment returns: ``info["snapshot"]`` of ``reset`` and
    ``step`` (``None`` after the last step). It survives wrappers, ``gym.make_vec`` (an object
    array per key there), SB3 vector envs and Ray env runners; never reach into
    ``env.unwrapped``::

        obs, info = env.reset(seed=0)
        while True:
            obs, reward, terminated, truncated, info = env.step(policy.act(obs, info["snapshot"]))
            if terminated or truncated:
                break

    The action is ``np.array([site_slot, batch_level])`` of the env's MultiDiscrete space:
    ``site_slot == snapshot.statics.max_sites`` sheds the request. A policy must never choose a
    masked site (``snapshot.feasible`` false); shedding is always allowed.
    """

    #: Short name used on the leaderboard.
    name: str = "policy"

    def reset(self, seed: int | None = None) -> None:
        """Start of an episode; policies with randomness reseed from `seed` here."""

    @abc.abstractmethod
    def act(self, obs: np.ndarray, snapshot: RouterSnapshot) -> np.ndarray:
        """The action for the request in `snapshot` (`obs` is the env's encoding of it)."""

    def scores(self, obs: np.ndarray, snapshot: RouterSnapshot) -> np.ndarray | None:
        """Optional: a score in [0, 1] per site (higher = preferred), for router adapters."""
        return None
