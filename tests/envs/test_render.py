"""Renders show what a router reads: class names, model, KV use, up/down state, batch caps."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

import gridenv  # noqa: F401
from gridenv.core.interface import SLO_CLASSES


def _run(mode: str, steps: int):
    env = gym.make("gridenv/Outage-v1", render_mode=mode)
    obs, info = env.reset(seed=0)
    for _ in range(steps):
        site = int(np.flatnonzero(info["action_mask"][: env.unwrapped.max_sites + 1])[0])
        obs, r, term, trunc, info = env.step(np.array([site, 1]))
    return env


def test_ansi_names_the_class_model_and_site_states():
    env = _run("ansi", 1500)  # the core site is down from t = 100 s to 160 s
    text = env.render()
    sim = env.unwrapped.sim
    p = sim.pending
    assert f"slo_class={SLO_CLASSES[p.slo_class]}" in text and "model=llama-3-8b" in text
    core = next(line for line in text.splitlines() if line.startswith("core"))
    assert core.split()[2] == ("n" if sim.site_down[4] else "y")
    assert "kv%" in text and "batch" in text and "timed_out=" in text


def test_rgb_array_is_an_image():
    img = _run("rgb_array", 50).render()
    assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8 and img.std() > 0
