"""Helpers for core tests that need exact, hand-written request sequences."""

from __future__ import annotations

import numpy as np
import pytest

import gridenv.core.simulator as simulator_module
from gridenv.core.scenario import load_scenario
from gridenv.core.topology import MODEL_NAMES
from gridenv.core.workload import Arrivals


def _one_region_scenario(sites: list[dict], batch_levels: list[int], initial_level: int, horizon_s: float,
                         rtt_ms: list[float] | None = None):
    """A scenario with one region ("r") and the given sites (H100, Llama-3-8B unless overridden),
    no network or API delay unless given."""
    full_sites = [
        {"name": f"s{j}", "region": "r", "kind": "core", "gpu": "H100", "model": "llama-3-8b",
         "gpu_usd_per_h": 2.0, **s}
        for j, s in enumerate(sites)
    ]
    length = {"median": 100, "sigma": 0.0}
    return load_scenario({
        "name": "scripted", "horizon_s": horizon_s,
        "regions": [{"name": "r", "population": 1.0}],
        "sites": full_sites,
        "network": {"rtt_ms": {"r": rtt_ms if rtt_ms is not None else [0.0] * len(sites)},
                    "api_overhead_ms": 0.0},
        "workload": {"classes": {"chat": {"share": 1.0, "prompt_tokens": length, "output_tokens": length}},
                     "models": {"llama-3-8b": 1.0}},
        "actions": {"batch_levels": batch_levels, "initial_batch_level": initial_level},
    })


@pytest.fixture
def one_region_scenario():
    """Build a one-region scenario: ``one_region_scenario(sites, batch_levels, initial_level,
    horizon_s, rtt_ms=None)``."""
    return _one_region_scenario


@pytest.fixture
def scripted_arrivals(monkeypatch):
    """Make the simulator draw exactly the given requests: call with [(time_s, prompt_tokens,
    output_tokens), ...] (origin region 0, chat class, Llama-3-8B, no residency)."""

    def install(rows: list[tuple[float, int, int]]) -> None:
        n = len(rows)
        arrivals = Arrivals(
            time_s=np.array([r[0] for r in rows], dtype=np.float64),
            origin=np.zeros(n, dtype=np.int64),
            prompt_tokens=np.array([r[1] for r in rows], dtype=np.int64),
            output_tokens=np.array([r[2] for r in rows], dtype=np.int64),
            slo_class=np.zeros(n, dtype=np.int64),
            model=np.full(n, MODEL_NAMES.index("llama-3-8b"), dtype=np.int64),
            residency=np.zeros(n, dtype=bool),
        )
        monkeypatch.setattr(simulator_module, "generate_arrivals", lambda sc, topo, rng: arrivals)

    return install
