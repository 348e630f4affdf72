"""A native vector environment: N grid simulators stepped in one process, one batched buffer.

``gym.make_vec("gridenv/Metro-v1", num_envs=16)`` (the ids' ``vector_entry_point``) returns a
:class:`GridVectorEnv`. Compared with ``SyncVectorEnv`` over ``GridEnv``:

* each step encodes every sub-env's snapshot straight into its row of one preallocated
  ``(num_envs, obs_size)`` float32 array, and its action mask into a row of a
  ``(num_envs, mask_size)`` bool array (:attr:`GridVectorEnv.action_masks`), with no per-env
  info dictionaries, wrappers or copies in between;
* sub-env ``i`` is a :class:`~gridenv.core.simulator.GridSimulator` with its own
  ``np.random.Generator``, seeded from ``seed + i`` exactly as ``GridEnv.reset(seed=seed + i)``
  seeds its ``np_random``: with the same actions, sub-env ``i`` follows the same trajectory as a
  ``GridEnv`` reset with ``seed + i``, bit for bit (tests/envs/test_vector.py).

Autoreset: ``autoreset_mode=AutoresetMode.NEXT_STEP`` (gymnasium 1.x's default): the step
after an episode ends resets that sub-env, ignores its action, and returns reward 0 and
``terminated = truncated = False``. ``AutoresetMode.SAME_STEP``: the sub-env is reset within
the step that ends its episode; the returned observation is the new episode's first one, and
the final observation is in ``infos["final_obs"]`` (what Stable-Baselines3's VecEnv API needs;
agents/vec_env.py uses this mode). Episodes are only ever truncated (at ``horizon_s``).

Infos (gymnasium's dict-of-arrays with ``_key`` masks): every step ``action_mask``
(``(num_envs, mask_size)``), ``snapshot`` (an object array of each sub-env's
:class:`~gridenv.core.snapshot.RouterSnapshot`, ``None`` where no request is pending, what
heuristics decide from, as GridEnv's ``info["snapshot"]``), ``invalid_action``, ``sim_time_s`` and ``rewards`` (the three
reward terms in $, as arrays); at an episode's end ``episode_metrics`` (``GridSimulator.summary``
of that sub-env, each metric an array masked by ``_episode_metrics``) and ``episode``
(``r``: the episode's summed reward in $, ``l``: its number of decisions); with SAME_STEP these
end-of-episode entries sit in ``infos["final_info"]`` (as ``SyncVectorEnv`` puts them).

:meth:`GridVectorEnv.step_batch` is the lean form used by the SB3 adapter and subprocess workers:
it returns arrays plus a short list of the episodes that ended, and builds no infos.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from gridenv.core.scenario import Scenario, load_scenario
from gridenv.core.simulator import SHED, GridSimulator
from gridenv.core.interface import make_interface
from gridenv.envs.grid_env import InvalidActionError

__all__ = ["GridVectorEnv", "EndedEpisode", "BatchStep", "serve_shard"]


@dataclass
class EndedEpisode:
    """One sub-env's finished episode, reported by :meth:`GridVectorEnv.step_batch`."""

    index: int  # sub-env index within this vector env
    final_obs: np.ndarray  # the observation the episode ended on (all zeros: no request left)
    metrics: dict  # GridSimulator.summary() of the episode
    reward_usd: float  # summed reward of the episode ($, float64)
    length: int  # decisions in the episode


@dataclass
class BatchStep:
    """What :meth:`GridVectorEnv.step_batch` returns (arrays are the env's own buffers)."""

    obs: np.ndarray  # (num_envs, obs_size) float32
    masks: np.ndarray  # (num_envs, mask_size) bool
    rewards: np.ndarray  # (num_envs,) float64, $
    truncated: np.ndarray  # (num_envs,) bool
    invalid: np.ndarray  # (num_envs,) bool: an infeasible site was chosen (and handled)
    ended: list  # EndedEpisode per sub-env whose episode ended in this step


class GridVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` copies of one scenario, stepped together (see the module docstring)."""

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(
        self,
        num_envs: int,
        scenario: str | Scenario = "metro",
        config: dict | None = None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        copy: bool = True,
        render_mode: str | None = None,
    ) -> None:
        if not isinstance(num_envs, (int, np.integer)) or isinstance(num_envs, bool) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        if render_mode is not None:
            raise ValueError(f"GridVectorEnv does not render (render_mode={render_mode!r}): use GridEnv")
        autoreset_mode = AutoresetMode(autoreset_mode)
        if autoreset_mode == AutoresetMode.DISABLED:
            raise ValueError("autoreset_mode DISABLED is not supported: use NEXT_STEP or SAME_STEP")
        if isinstance(scenario, Scenario):
            self.scenario = scenario if not config else load_scenario(scenario.model_dump(), config)
        else:
            self.scenario = load_scenario(scenario, config)
        self.num_envs = int(num_envs)
        self.autoreset_mode = autoreset_mode
        self.metadata = {**type(self).metadata, "autoreset_mode": autoreset_mode}
        self.render_mode = None
        self.copy = bool(copy)
        self.sims = [GridSimulator(self.scenario) for _ in range(self.num_envs)]
        st = self.sims[0].statics
        self.max_sites = st.max_sites
        self.n_levels = len(st.batch_levels)
        self.single_action_space = spaces.MultiDiscrete([self.max_sites + 1, self.n_levels])
        #: The declared observation/action interface (gridenv.core.interface), as GridEnv's.
        self.interface = make_interface(st, self.scenario.observation.mode)
        self.single_observation_space = spaces.Box(-1.0, 1.0, (self.interface.obs_size,), dtype=np.float32)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self._raise_invalid = self.scenario.actions.invalid_action == "raise"
        n, mask_size = self.num_envs, self.max_sites + 1 + self.n_levels
        self._obs = np.zeros((n, self.interface.obs_size), dtype=np.float32)
        self._masks = np.zeros((n, mask_size), dtype=bool)
        self._idle_mask = np.zeros(mask_size, dtype=bool)
        self._idle_mask[self.max_sites:] = True  # no request: only "shed" is meaningful (as GridEnv)
        self._rewards = np.zeros(n, dtype=np.float64)
        self._truncated = np.zeros(n, dtype=bool)
        self._terminated = np.zeros(n, dtype=bool)  # never set: episodes are only truncated
        self._invalid = np.zeros(n, dtype=bool)
        self._terms = np.zeros((3, n), dtype=np.float64)  # goodput value, energy, GPU cost ($)
        self._sim_time = np.zeros(n, dtype=np.float64)
        self._ep_reward = np.zeros(n, dtype=np.float64)
        self._ep_length = np.zeros(n, dtype=np.int64)
        self._feasible: list[np.ndarray | None] = [None] * n
        self._snaps = np.full(n, None, dtype=object)  # RouterSnapshot per sub-env (None: no request)
        self._rngs: list[np.random.Generator | None] = [None] * n
        self._needs_reset = np.ones(n, dtype=bool)  # before the first reset
        self._autoreset = np.zeros(n, dtype=bool)  # NEXT_STEP: reset at the next step

    # ------------------------------------------------------------------ properties
    @property
    def action_masks(self) -> np.ndarray:
        """``(num_envs, mask_size)`` bool: each sub-env's current mask (GridEnv.action_masks)."""
        return self._masks

    @property
    def observations(self) -> np.ndarray:
        """``(num_envs, obs_size)`` float32: each sub-env's current observation (the buffer)."""
        return self._obs

    # ------------------------------------------------------------------ per sub-env
    def _observe(self, i: int) -> None:
        """Encode sub-env i's pending request into row i of the buffers (as GridEnv._observe)."""
        sim = self.sims[i]
        if sim.pending is None:  # episode over: the last observation carries no request
            self._feasible[i] = None
            self._snaps[i] = None
            self._obs[i] = 0.0
            self._masks[i] = self._idle_mask
            return
        snap = sim.snapshot()
        self.interface.encode(snap, out=self._obs[i])
        self._masks[i] = self.interface.action_mask(snap)
        self._feasible[i] = snap.feasible
        self._snaps[i] = snap

    def reset_env(self, i: int, seed: int | None = None) -> None:
        """Start a new episode in sub-env i; `seed` None continues its RNG (as GridEnv.reset)."""
        if seed is not None or self._rngs[i] is None:
            self._rngs[i], _ = seeding.np_random(seed)
        sim = self.sims[i]
        sim.reset(self._rngs[i])
        sim.take_reward()
        self._observe(i)
        self._needs_reset[i] = False
        self._autoreset[i] = False
        self._ep_reward[i] = 0.0
        self._ep_length[i] = 0
        self._sim_time[i] = sim.now

    def _check_actions(self, actions) -> np.ndarray:
        """The actions as an int64 array, else InvalidActionError; accepts and refuses as
        GridEnv.step does (integers, or floats holding whole numbers; no booleans, complex,
        strings or objects)."""
        try:
            a = np.asarray(actions)
        except (ValueError, TypeError) as e:  # ragged nested lists
            raise InvalidActionError(f"actions must be a ({self.num_envs}, 2) array of integers ({e})") from None
        if a.shape != (self.num_envs, 2):
            raise InvalidActionError(
                f"actions must have shape ({self.num_envs}, 2) [site, batch_level] per sub-env, got {a.shape}"
            )
        if a.dtype.kind not in "iuf":
            raise InvalidActionError(f"actions must be integers, got dtype {a.dtype}")
        if a.dtype.kind == "f" and (not np.all(np.isfinite(a)) or not np.array_equal(a, np.round(a))):
            raise InvalidActionError(f"actions must be integers, got {a.dtype} values {a.tolist()}")
        bad = (a[:, 0] < 0) | (a[:, 0] > self.max_sites) | (a[:, 1] < 0) | (a[:, 1] >= self.n_levels)
        if bad.any():  # checked before the int64 cast, which would wrap a huge float or uint64
            i = int(np.flatnonzero(bad)[0])
            raise InvalidActionError(
                f"action {a[i].tolist()} of sub-env {i} outside MultiDiscrete([{self.max_sites + 1}, {self.n_levels}])"
            )
        return a if a.dtype == np.int64 else a.astype(np.int64)

    # ------------------------------------------------------------------ batched core
    def _step_one(self, i: int, site: int, level: int) -> EndedEpisode | None:
        """Sub-env i: route its pending request, run to its next decision, encode row i."""
        sim = self.sims[i]
        if site == self.max_sites:
            site = SHED
        bad = site != SHED and (site >= sim.n_sites or not self._feasible[i][site])
        if bad:  # as GridEnv.step: shed it and count it, or raise
            if self._raise_invalid:
                raise InvalidActionError(
                    f"sub-env {i}: site slot {site} is masked for this request (feasible slots: "
                    f"{np.flatnonzero(self._feasible[i]).tolist()}, shed = {self.max_sites})"
                )
            sim.metrics.invalid_actions += 1
            site = SHED
        self._invalid[i] = bad
        sim.decide(site, level)
        value, energy, gpu = sim.take_reward()
        reward = value - energy - gpu
        self._rewards[i] = reward
        terms = self._terms
        terms[0, i], terms[1, i], terms[2, i] = value, energy, gpu
        self._ep_reward[i] += reward
        self._ep_length[i] += 1
        self._sim_time[i] = sim.now
        self._observe(i)
        done = sim.done
        self._truncated[i] = done
        if not done:
            return None
        self._needs_reset[i] = True
        return EndedEpisode(i, self._obs[i].copy(), sim.summary(),
                            float(self._ep_reward[i]), int(self._ep_length[i]))

    def step_batch(self, actions, same_step_reset: bool = True, active=None) -> BatchStep:
        """Apply one action per sub-env and run each to its next decision.

        With `same_step_reset`, a sub-env whose episode ends is reset (continuing its RNG) at
        once and its row holds the new episode's first observation; the ended episode is
        reported in ``ended``. Without it, the row holds the final observation and the sub-env
        must be reset (:meth:`reset_env`) before it is stepped again. `active` (indices) steps
        only those sub-envs; the others keep their rows.
        """
        acts = self._check_actions(actions)
        indices = range(self.num_envs) if active is None else [int(i) for i in active]
        for i in indices:
            if self._needs_reset[i]:
                raise RuntimeError(f"sub-env {i} must be reset before step() (call reset())")
        ended = []
        sites, levels = acts[:, 0].tolist(), acts[:, 1].tolist()
        for i in indices:
            ep = self._step_one(i, sites[i], levels[i])
            if ep is not None:
                ended.append(ep)
                if same_step_reset:
                    self.reset_env(i)
        return BatchStep(self._obs, self._masks, self._rewards, self._truncated, self._invalid, ended)

    # ------------------------------------------------------------------ gymnasium API
    def reset(
        self,
        *,
        seed: int | Sequence[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ):
        """Reset every sub-env (or those in ``options["reset_mask"]``); int seed -> seed + i."""
        if seed is None:
            seeds: list[int | None] = [None] * self.num_envs
        elif isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
            seeds = [int(seed) + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"reset(seed=list): expected {self.num_envs} seeds, got {len(seeds)}")
        mask = np.ones(self.num_envs, dtype=bool)
        if options and "reset_mask" in options:
            mask = np.asarray(options["reset_mask"])
            if mask.shape != (self.num_envs,) or mask.dtype != np.bool_:
                raise ValueError(f"options['reset_mask'] must be a bool array of shape ({self.num_envs},)")
        self._rewards[:] = 0.0
        for i in np.flatnonzero(mask):
            self.reset_env(int(i), seeds[i])
            self._truncated[i] = False
        infos = {"action_mask": self._out(self._masks), "snapshot": self._snaps.copy()}
        return self._out(self._obs), infos

    def step(self, actions):
        """One decision per sub-env, with gymnasium 1.x autoreset (see the module docstring)."""
        acts = self._check_actions(actions)
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            resetting = self._autoreset.copy()
            if resetting.any():
                # Sub-envs that ended in the previous step reset now; their actions are ignored.
                for i in np.flatnonzero(resetting):
                    self.reset_env(int(i))
                acts = acts.copy()
                acts[resetting] = [self.max_sites, 0]  # placeholder, not applied
            res = self.step_batch(acts, same_step_reset=False, active=np.flatnonzero(~resetting))
            self._rewards[resetting] = 0.0
            self._truncated[resetting] = False
            self._invalid[resetting] = False
            self._terms[:, resetting] = 0.0
            self._autoreset[:] = res.truncated
        else:
            res = self.step_batch(acts, same_step_reset=True)
        infos: dict[str, Any] = {
            "action_mask": self._out(self._masks),
            "snapshot": self._snaps.copy(),
            "invalid_action": self._invalid.copy(),
            "sim_time_s": self._sim_time.copy(),
            "rewards": {"goodput_value_usd": self._terms[0].copy(),
                        "energy_cost_usd": self._terms[1].copy(),
                        "gpu_cost_usd": self._terms[2].copy()},
        }
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            for ep in res.ended:
                self._add_info(infos, self._episode_info(ep), ep.index)
        else:
            for ep in res.ended:
                self._add_info(infos, {"final_obs": ep.final_obs,
                                       "final_info": self._episode_info(ep)}, ep.index)
        return (self._out(self._obs), self._rewards.copy(), self._terminated.copy(),
                self._truncated.copy(), infos)

    @staticmethod
    def _episode_info(ep: EndedEpisode) -> dict:
        return {"episode_metrics": dict(ep.metrics), "episode": {"r": ep.reward_usd, "l": ep.length}}

    def _out(self, a: np.ndarray) -> np.ndarray:
        return a.copy() if self.copy else a

    def close_extras(self, **kwargs) -> None:
        self.sims = []

    def __repr__(self) -> str:
        return f"GridVectorEnv({self.scenario.name!r}, num_envs={self.num_envs}, autoreset_mode={self.autoreset_mode.value})"


def serve_shard(conn, parent_conn, scenario, config, n: int, factory=None) -> None:
    """Worker-process loop: a SAME_STEP GridVectorEnv of `n` envs serving commands on `conn`.

    Commands ``("reset", seeds)``, ``("step", actions)``, ``("close", None)``; every reply is
    ``("ok", payload)`` or ``("error", traceback text)``. Lives here (gymnasium + numpy only) so
    a worker starts without importing torch or Stable-Baselines3 (agents/vec_env.py drives it).
    `factory` (picklable, ``factory(n)`` -> a SAME_STEP GridVectorEnv, e.g. the random-grid
    one) replaces ``GridVectorEnv(n, scenario, config)``.
    """
    parent_conn.close()
    try:
        if factory is not None:
            venv = factory(n)
        else:
            venv = GridVectorEnv(n, scenario, config, AutoresetMode.SAME_STEP, copy=False)
        conn.send(("ok", None))
    except BaseException:  # noqa: BLE001 (reported to the parent)
        conn.send(("error", traceback.format_exc()))
        conn.close()
        return
    while True:
        try:
            cmd, data = conn.recv()
        except (EOFError, KeyboardInterrupt):  # parent gone or interrupted: exit quietly
            break
        try:
            if cmd == "step":
                r = venv.step_batch(data, same_step_reset=True)
                ended = [(e.index, e.final_obs, e.metrics, e.reward_usd, e.length) for e in r.ended]
                conn.send(("ok", (r.obs, r.masks, r.rewards, r.truncated, ended)))
            elif cmd == "reset":
                for i, s in enumerate(data):
                    venv.reset_env(i, s)
                conn.send(("ok", (venv.observations, venv.action_masks)))
            elif cmd == "close":
                conn.send(("ok", None))
                break
            else:
                conn.send(("error", f"unknown command {cmd!r}"))
        except BaseException:  # noqa: BLE001
            conn.send(("error", traceback.format_exc()))
    conn.close()
