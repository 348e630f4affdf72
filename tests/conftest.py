"""Fixtures shared across test folders."""

from __future__ import annotations

from pathlib import Path

import pytest

METRO = "gridenv/Metro-v1"


@pytest.fixture(scope="session")
def tiny_metro_run(tmp_path_factory) -> Path:
    """A MaskablePPO trained for a few hundred steps on 20 s Metro episodes, with DummyVecEnv +
    VecNormalize, saved as model.zip + vecnormalize.pkl; trained once per test session."""
    pytest.importorskip("sb3_contrib")
    import gymnasium as gym
    from sb3_contrib import MaskablePPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    import gridenv  # noqa: F401

    run = tmp_path_factory.mktemp("tiny_metro_run") / "metro_maskable_ppo_s0"
    venv = VecNormalize(DummyVecEnv([lambda: gym.make(METRO, config={"horizon_s": 20})]), norm_reward=False)
    model = MaskablePPO("MlpPolicy", venv, n_steps=128, batch_size=64, n_epochs=2, seed=0, device="cpu")
    model.learn(384)
    run.mkdir(parents=True)
    model.save(run / "model.zip")
    venv.save(str(run / "vecnormalize.pkl"))
    return run
