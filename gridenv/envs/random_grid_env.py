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
"""

from __future__ import annotations

from typing import Sequence

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding

from gridenv.core.interface import make_interface
from gridenv.core.random_grid import RandomGridSpec, random_scenario
from gridenv.core.scenario import load_scenario
from gridenv.core.simulator import GridSimulator
from gridenv.envs.grid_env import GridEnv

__all__ = ["RandomGridEnv", "TRAIN_GRID_SEED_END", "HELDOUT_GRID_SEED_MIN"]

#: Training draws grid seeds below this; held-out grids use seeds at or above HELDOUT_GRID_SEED_MIN.
TRAIN_GRID_SEED_END = 1_000_000_000
HELDOUT_GRID_SEED_MIN = 2_000_000_000


class RandomGridEnv(GridEnv):
    """:class:`GridEnv` over a new random grid every reset (see the module docstring)."""

    def __init__(
        self,
        spec: RandomGridSpec | dict | None = None,
        grid_seeds: Sequence[int] | None = None,
        render_mode: str | None = None,
    ) -> None:
        if isinstance(spec, dict):
            spec = RandomGridSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})
        self.grid_spec = spec or RandomGridSpec()
        if self.grid_spec.observation_mode != "relative":
            raise ValueError("RandomGridEnv needs spec.observation_mode == 'relative' (one space for every grid)")
        if grid_seeds is not None:
            grid_seeds = tuple(int(g) for g in grid_seeds)
            if not grid_seeds or any(g < 0 for g in grid_seeds):
                raise ValueError(f"grid_seeds must be a non-empty list of non-negative ints, got {grid_seeds!r}")
        self.grid_seeds = grid_seeds
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
        elif self.grid_seeds is not None:
            grid_seed = self.grid_seeds[int(self.np_random.integers(len(self.grid_seeds)))]
        else:
            grid_seed = int(self.np_random.integers(TRAIN_GRID_SEED_END))
        self._set_grid(grid_seed)
        obs, info = super().reset(seed=None, options=options)
        info["grid_seed"] = self.grid_seed
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        info["grid_seed"] = self.grid_seed
        return obs, reward, terminated, truncated, info


def make_random_grid_env(**kwargs) -> gym.Env:
    return RandomGridEnv(**kwargs)
