"""``gridenv/RandomGrid-v1``: a new generated grid and workload at every reset.

A training distribution for agents that must act on any grid: each ``reset`` draws a grid seed
and builds the scenario ``gridenv.core.random_grid.random_scenario(grid_seed, spec)``. The
observation is the topology-agnostic ``relative`` mode with ``spec.max_sites`` site slots (12
by default), so the spaces are the same for every grid; ``info["grid_seed"]`` and
``env.unwrapped.scenario`` say which grid an episode ran on.

Grid seeds: ``reset(seed=s)`` seeds ``np_random`` and the grid seed is drawn from it, in
``[0, TRAIN_GRID_SEED_END)``. Held-out grids (``configs/generalization.yaml``) use seeds at or
above :data:`HELDOUT_GRID_SEED_MIN`, which training never draws. ``reset(options={"grid_seed":
g})`` pins one grid (an evaluation of a given grid); ``grid_seeds=[...]`` at construction
restricts the draw to a list.

:class:`RandomGridVectorEnv` (``gym.make_vec("gridenv/RandomGrid-v1", num_envs=n)``, and the
batched training path of ``agents/vec_env.py``) is the native vector form: n simulators in one
process, sub-env ``i`` drawing its grids exactly as ``RandomGridEnv`` reset with ``seed + i``.
"""

from __future__ import annotations

from typing import Sequence

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode

from gridenv.core.interface import make_interface
from gridenv.core.random_grid import RandomGridSpec, random_scenario
from gridenv.core.scenario import load_scenario
from gridenv.core.simulator import GridSimulator
from gridenv.envs.grid_env import GridEnv
from gridenv.envs.vector import GridVectorEnv

__all__ = ["RandomGridEnv", "RandomGridVectorEnv", "TRAIN_GRID_SEED_END", "HELDOUT_GRID_SEED_MIN"]

#: Training draws grid seeds below this; held-out grids use seeds at or above HELDOUT_GRID_SEED_MIN.
TRAIN_GRID_SEED_END = 1_000_000_000
HELDOUT_GRID_SEED_MIN = 2_000_000_000


def _grid_spec(spec: RandomGridSpec | dict | None) -> RandomGridSpec:
    if isinstance(spec, dict):
        spec = RandomGridSpec.from_dict(spec)
    spec = spec or RandomGridSpec()
    if spec.observation_mode != "relative":
        raise ValueError("RandomGridEnv needs spec.observation_mode == 'relative' (one space for every grid)")
    return spec


def _grid_seed_list(grid_seeds: Sequence[int] | None) -> tuple[int, ...] | None:
    if grid_seeds is None:
        return None
    grid_seeds = tuple(int(g) for g in grid_seeds)
    if not grid_seeds or any(g < 0 for g in grid_seeds):
        raise ValueError(f"grid_seeds must be a non-empty list of non-negative ints, got {grid_seeds!r}")
    return grid_seeds


def _draw_grid_seed(rng: np.random.Generator, grid_seeds: tuple[int, ...] | None) -> int:
    """The next episode's grid seed, from the episode generator (before it draws the arrivals)."""
    if grid_seeds is not None:
        return grid_seeds[int(rng.integers(len(grid_seeds)))]
    return int(rng.integers(TRAIN_GRID_SEED_END))


class RandomGridEnv(GridEnv):
    """:class:`GridEnv` over a new random grid every reset (see the module docstring)."""

    def __init__(
        self,
        spec: RandomGridSpec | dict | None = None,
        grid_seeds: Sequence[int] | None = None,
        render_mode: str | None = None,
    ) -> None:
        self.grid_spec = _grid_spec(spec)
        self.grid_seeds = grid_seeds = _grid_seed_list(grid_seeds)
        self.grid_seed = grid_seeds[0] if grid_seeds else 0
        super().__init__(load_scenario(random_scenario(self.grid_seed, self.grid_spec)),
                         render_mode=render_mode)

    def _set_grid(self, grid_seed: int) -> None:
        """Swap in the simulator of another generated grid (the spaces stay the same)."""
        if grid_seed == self.grid_seed and self.sim is not None:
            return
        scenario = load_scenario(random_scenario(grid_seed, self.grid_spec))
        sim = GridSimulator(scenario)
        iface = make_interface(sim.statics, scenario.observation.mode)
        # Relative mode: the declaration does not depend on the grid, so neither do the spaces.
        assert iface.content_hash == self.interface.content_hash, "relative interface changed with the grid"
        self.scenario, self.sim, self.interface, self.grid_seed = scenario, sim, iface, grid_seed

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._np_random, self._np_random_seed = seeding.np_random(seed)
        if options and "grid_seed" in options:
            g = options["grid_seed"]
            if not isinstance(g, (int, np.integer)) or isinstance(g, bool) or g < 0:
                raise ValueError(f"options['grid_seed'] must be a non-negative int, got {g!r}")
            grid_seed = int(g)
        else:
            grid_seed = _draw_grid_seed(self.np_random, self.grid_seeds)
        self._set_grid(grid_seed)
        obs, info = super().reset(seed=None, options=options)
        info["grid_seed"] = self.grid_seed
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        info["grid_seed"] = self.grid_seed
        return obs, reward, terminated, truncated, info


class RandomGridVectorEnv(GridVectorEnv):
    """:class:`GridVectorEnv` whose sub-envs draw a new generated grid at every reset.

    Sub-env ``i`` reset with seed ``s`` follows the trajectory of ``RandomGridEnv`` reset with
    ``s`` (the grid seed and then the arrivals come from the same generator), bit for bit;
    later resets continue its generator. Each sub-env keeps its own simulator and encoder (the
    relative interface's declaration, hence the spaces, is the same for every grid).
    """

    def __init__(self, num_envs: int, spec: RandomGridSpec | dict | None = None,
                 grid_seeds: Sequence[int] | None = None, autoreset_mode=AutoresetMode.NEXT_STEP,
                 copy: bool = True, render_mode: str | None = None) -> None:
        self.grid_spec = _grid_spec(spec)
        self.grid_seeds = _grid_seed_list(grid_seeds)
        first = self.grid_seeds[0] if self.grid_seeds else 0
        super().__init__(num_envs, load_scenario(random_scenario(first, self.grid_spec)), None,
                         autoreset_mode, copy, render_mode)
        self.grid_seed = np.full(self.num_envs, first, dtype=np.int64)
        self.interfaces = [self.interface] * self.num_envs
        self.scenarios = [self.scenario] * self.num_envs

    def reset_env(self, i: int, seed: int | None = None) -> None:
        if seed is not None or self._rngs[i] is None:
            self._rngs[i], _ = seeding.np_random(seed)
        grid_seed = _draw_grid_seed(self._rngs[i], self.grid_seeds)
        if grid_seed != self.grid_seed[i] or self.sims[i].arrivals is None:
            scenario = load_scenario(random_scenario(grid_seed, self.grid_spec))
            sim = GridSimulator(scenario)
            iface = make_interface(sim.statics, scenario.observation.mode)
            if iface.content_hash != self.interface.content_hash:  # pragma: no cover - relative mode
                raise RuntimeError("the relative interface changed with the grid")
            self.sims[i], self.interfaces[i], self.scenarios[i] = sim, iface, scenario
            self.grid_seed[i] = grid_seed
        super().reset_env(i, None)

    def _observe(self, i: int) -> None:
        """GridVectorEnv._observe with sub-env i's own encoder (its grid's statics)."""
        sim = self.sims[i]
        if sim.pending is None:
            self._feasible[i], self._snaps[i] = None, None
            self._obs[i] = 0.0
            self._masks[i] = self._idle_mask
            return
        snap = sim.snapshot()
        self.interfaces[i].encode(snap, out=self._obs[i])
        self._masks[i] = self.interfaces[i].action_mask(snap)
        self._feasible[i] = snap.feasible
        self._snaps[i] = snap


def make_random_grid_env(**kwargs) -> gym.Env:
    return RandomGridEnv(**kwargs)
