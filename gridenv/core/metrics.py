"""Per-episode serving metrics: latency, goodput, energy, cost, carbon.

Goodput follows DistServe: a request counts only if it meets both its TTFT and its TPOT SLO.
Every arrived request ends in exactly one of ``completed``, ``shed`` or ``failed`` (or is still
``in_flight`` when the episode ends): nothing is dropped without being counted.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Metrics"]

J_PER_KWH = 3.6e6


class Metrics:
    """Counters and per-request samples of one episode."""

    def __init__(self, n_sites: int) -> None:
        self.arrived = 0  # requests that reached the router (retries not counted again)
        self.completed = 0
        self.good = 0  # completed within both SLOs
        self.shed = 0  # refused by the policy
        self.failed = 0  # lost to outages after max_retries, or larger than any KV cache
        self.failed_oversize = 0  # part of `failed`: prompt + output exceed the replica's KV
        self.retried = 0  # re-routed after an outage
        self.invalid_actions = 0  # masked choices, handled by the documented fallback
        self.good_prompt_tokens = 0
        self.good_output_tokens = 0
        self.served_prompt_tokens = 0
        self.served_output_tokens = 0
        self.goodput_value_usd = 0.0
        self.ttft_s: list[float] = []
        self.tpot_s: list[float] = []
        self.e2e_s: list[float] = []
        self.network_rtt_ms: list[float] = []
        # Dynamic (above-idle) site energy and what it costs, per site.
        self.dyn_energy_j = np.zeros(n_sites)
        self.dyn_energy_usd = np.zeros(n_sites)
        self.dyn_co2_g = np.zeros(n_sites)
        self.busy_gpu_s = np.zeros(n_sites)  # GPU-seconds spent running iterations
        self.busy_gpu_usd = np.zeros(n_sites)
        # Idle floor and provisioned GPU cost, filled in by the simulator at summary time.
        self.idle_energy_j = np.zeros(n_sites)
        self.idle_energy_usd = np.zeros(n_sites)
        self.idle_co2_g = np.zeros(n_sites)
        self.provisioned_gpu_usd = np.zeros(n_sites)

    def in_flight(self) -> int:
        return self.arrived - self.completed - self.shed - self.failed

    def summary(self, duration_s: float) -> dict:
        """Scalar metrics of the episode so far (duration_s: simulated seconds elapsed)."""
        dur = max(duration_s, 1e-9)
        finished = self.completed + self.shed + self.failed
        energy_j = float(self.dyn_energy_j.sum() + self.idle_energy_j.sum())
        energy_usd = float(self.dyn_energy_usd.sum() + self.idle_energy_usd.sum())
        gpu_usd = float(self.provisioned_gpu_usd.sum())
        cost = energy_usd + gpu_usd
        served = self.served_prompt_tokens + self.served_output_tokens

        def pct(xs: list[float], q: float) -> float:
            return float(np.percentile(xs, q)) if xs else float("nan")

        return {
            "sim_time_s": float(duration_s),
            "arrived": self.arrived,
            "completed": self.completed,
            "good": self.good,
            "shed": self.shed,
            "failed": self.failed,
            "failed_oversize": self.failed_oversize,
            "in_flight": self.in_flight(),
            "retried": self.retried,
            "invalid_actions": self.invalid_actions,
            "slo_attainment": self.good / finished if finished else float("nan"),
            "goodput_rps": self.good / dur,
            "goodput_tokens_per_s": (self.good_prompt_tokens + self.good_output_tokens) / dur,
            "goodput_output_tokens_per_s": self.good_output_tokens / dur,
            "goodput_value_usd": self.goodput_value_usd,
            "ttft_p50_s": pct(self.ttft_s, 50), "ttft_p99_s": pct(self.ttft_s, 99),
            "tpot_p50_s": pct(self.tpot_s, 50), "tpot_p99_s": pct(self.tpot_s, 99),
            "e2e_p50_s": pct(self.e2e_s, 50), "e2e_p99_s": pct(self.e2e_s, 99),
            "network_rtt_mean_ms": float(np.mean(self.network_rtt_ms)) if self.network_rtt_ms else float("nan"),
            "energy_kwh": energy_j / 3.6e6,
            "idle_energy_kwh": float(self.idle_energy_j.sum()) / 3.6e6,
            "energy_cost_usd": energy_usd,
            "dynamic_energy_cost_usd": float(self.dyn_energy_usd.sum()),  # the reward's energy term
            "gpu_cost_usd": gpu_usd,
            "busy_gpu_cost_usd": float(self.busy_gpu_usd.sum()),
            "cost_usd": cost,
            "usd_per_mtok": cost / served * 1e6 if served else float("nan"),
            "tokens_per_joule": self.served_output_tokens / energy_j if energy_j else float("nan"),
            "co2_kg": float(self.dyn_co2_g.sum() + self.idle_co2_g.sum()) / 1000.0,
            "goodput_tokens_per_usd": (self.good_prompt_tokens + self.good_output_tokens) / cost if cost else float("nan"),
            "goodput_tokens_per_kwh": (self.good_prompt_tokens + self.good_output_tokens) / (energy_j / 3.6e6) if energy_j else float("nan"),
        }
