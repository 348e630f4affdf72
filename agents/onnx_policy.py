"""An exported ONNX routing policy as an :class:`agents.policy.Policy` (on the router runtime).

    from agents.onnx_policy import ONNXPolicy
    policy = ONNXPolicy("exported/metro")           # or "exported/metro/policy.onnx"
    obs, info = env.reset(seed=0)
    action = policy.act(obs, info["snapshot"])      # the snapshot comes from the env's info

The same :class:`gridenv.router.runtime.RouterPolicy` that serves HTTP decides here, so a
leaderboard run of an exported policy measures exactly what would be deployed. No torch is
needed. Loading verifies ``policy.json`` against ``policy.onnx`` (hash, sizes) and its recorded
observation interface against this gridenv's (``gridenv.core.interface``: version, content
hash; a difference is refused naming the feature or vocabulary).

* ``act`` returns the env action ``[site_slot, batch_level]`` (``site_slot == max_sites``
  sheds): the argmax of the masked logits, so never a masked site.
* ``scores`` returns one score per site in [0, 1]: the policy's probability of choosing it,
  the softmax over the masked site logits (infeasible sites 0; the remainder to 1 is the shed
  probability).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agents.policy import Policy
from gridenv.core.snapshot import RouterSnapshot
from gridenv.router.runtime import RouterPolicy

__all__ = ["ONNXPolicy"]


class ONNXPolicy(Policy):
    """An exported policy directory (``policy.onnx`` + ``policy.json``) or its ``.onnx`` file.

    Raises:
        gridenv.router.runtime.PolicyFileError (a ValueError): missing files, hash or feature-spec
            mismatch.
    """

    def __init__(self, path: str | Path, name: str | None = None) -> None:
        self.router = RouterPolicy.load(path)
        self.path = self.router.path
        self.name = name or self.path.name
        self._checked: dict[int, object] = {}  # id -> statics (kept alive: ids stay unique)

    def reset(self, seed: int | None = None) -> None:
        """Deterministic policy: nothing to reseed."""

    def _outputs(self, obs: np.ndarray | None, snapshot: RouterSnapshot):
        key = id(snapshot.statics)
        if key not in self._checked:
            self.router.check_snapshot(snapshot)
            self._checked[key] = snapshot.statics
        if obs is None:
            obs = self.router.interface.encode(snapshot)
        obs = np.asarray(obs, dtype=np.float32)
        if obs.shape != (self.router.obs_size,):
            raise ValueError(f"{self.name}: observation of shape {obs.shape}, the policy takes "
                             f"({self.router.obs_size},) (exported for scenario {self.router.scenario!r})")
        return self.router.run(obs, snapshot.action_mask)

    def act(self, obs: np.ndarray, snapshot: RouterSnapshot) -> np.ndarray:
        _, _, site, level = self._outputs(obs, snapshot)
        return np.array([int(site[0]), int(level[0])], dtype=np.int64)

    def scores(self, obs: np.ndarray, snapshot: RouterSnapshot) -> np.ndarray:
        _, scores, _, _ = self._outputs(obs, snapshot)
        return np.asarray(scores[0, : self.router.n_sites], dtype=np.float64)
