"""Gymnasium layer over the simulation core."""

from gridenv.envs.grid_env import GridEnv, InvalidActionError

__all__ = ["GridEnv", "InvalidActionError"]
