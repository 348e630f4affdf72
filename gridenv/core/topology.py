"""The grid: regions (user populations), sites, and the region x site RTT matrix between them.

The RTT matrix is the scenario's ``network.rtt_ms`` exactly as given: each entry is the measured
(or assumed) round trip from a region's users to a site. Nothing is recomputed from it: users
never relay traffic through another region's users, so a shortest path over a region/site graph
would invent routes that do not exist (a scenario saying north -> core is 150 ms would be
simulated at 60 ms via north -> edge-south -> south's users -> core). Degraded-link faults scale
entries at run time (``GridSimulator``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gridenv.core.catalog import GPUS, MODELS
from gridenv.core.perf import ReplicaPerf, software_stack
from gridenv.core.scenario import Scenario

__all__ = ["Topology", "SiteSpec", "MODEL_NAMES"]

#: Models in the fixed order the observation one-hot uses.
MODEL_NAMES: tuple[str, ...] = tuple(sorted(MODELS))


@dataclass(frozen=True)
class SiteSpec:
    """Static description of one site, as the simulator and the router see it."""

    index: int
    name: str
    region: int  # region index
    kind: str  # "edge" | "core"
    model: int  # index into MODEL_NAMES
    replicas: int
    tp: int
    gpus: int  # provisioned GPUs = replicas * tp
    max_queue: int  # waiting requests per replica before the site counts as full
    kv_capacity_tokens: int  # per replica
    perf: ReplicaPerf
    gpu_usd_per_h: float
    pue: float
    server_overhead: float
    idle_w: float  # all provisioned GPUs, GPU power only
    price_usd_per_kwh: tuple[float, ...]  # 24 local hours
    carbon_g_per_kwh: tuple[float, ...]  # 24 local hours
    utc_offset_h: float

    @property
    def site_power_factor(self) -> float:
        """Site power / GPU power: PUE * (1 + non-GPU server share)."""
        return self.pue * (1.0 + self.server_overhead)


def _hourly(v) -> tuple[float, ...]:
    return tuple(float(x) for x in v) if isinstance(v, list) else (float(v),) * 24


class Topology:
    """Regions, sites and the network between them."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.region_names = [r.name for r in scenario.regions]
        self.region_population = np.array([r.population for r in scenario.regions], dtype=float)
        self.region_utc_offset_h = np.array([r.utc_offset_h for r in scenario.regions], dtype=float)
        region_index = {n: i for i, n in enumerate(self.region_names)}
        stack = software_stack(scenario.software_stack)

        self.sites: list[SiteSpec] = []
        for i, s in enumerate(scenario.sites):
            perf = ReplicaPerf(GPUS[s.gpu], MODELS[s.model], s.tp, s.weight_dtype, **stack)
            r = region_index[s.region]
            self.sites.append(
                SiteSpec(
                    index=i, name=s.name, region=r, kind=s.kind, model=MODEL_NAMES.index(s.model),
                    replicas=s.replicas, tp=s.tp, gpus=s.replicas * s.tp, max_queue=s.max_queue,
                    kv_capacity_tokens=perf.kv_capacity_tokens, perf=perf,
                    gpu_usd_per_h=s.gpu_usd_per_h, pue=s.pue, server_overhead=s.server_overhead,
                    idle_w=GPUS[s.gpu].idle_w * s.replicas * s.tp,
                    price_usd_per_kwh=_hourly(s.energy_price_usd_per_kwh),
                    carbon_g_per_kwh=_hourly(s.carbon_g_per_kwh),
                    utc_offset_h=scenario.regions[r].utc_offset_h,
                )
            )
            if perf.kv_capacity_tokens <= 0:
                raise ValueError(
                    f"sites.{i}: {s.model} ({s.weight_dtype}) does not fit on {s.tp} x {s.gpu}"
                )
        self.site_names = [s.name for s in self.sites]

        # Region x site RTT in ms, in region and site order: the scenario's matrix as given.
        self.rtt_ms = np.array(
            [[float(x) for x in scenario.network.rtt_ms[r]] for r in self.region_names], dtype=float
        )
        self.rtt_ms.flags.writeable = False
        self.site_region = np.array([s.region for s in self.sites], dtype=np.int64)
        self.site_model = np.array([s.model for s in self.sites], dtype=np.int64)

    @property
    def n_regions(self) -> int:
        return len(self.region_names)

    @property
    def n_sites(self) -> int:
        return len(self.sites)
