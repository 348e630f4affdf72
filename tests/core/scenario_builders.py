"""One-site scenario dicts for core tests (not a test module): one region ``r`` holding one site
``s`` of one replica, no network delay or API overhead, Poisson arrivals of one request class
with fixed token counts. Each test file passes what its mechanism needs (GPU, rate, prefix...)."""

from __future__ import annotations


def fixed(n: int) -> dict:
    """A token-count distribution that always draws `n`."""
    return {"median": n, "sigma": 0.0, "min": n, "max": n}


def one_site_scenario(name: str, horizon_s: float, *, prompt_tokens: int, output_tokens: int,
                      rate_rps: float, slo_class: str = "chat", model: str = "llama-3-8b",
                      site: dict | None = None, request_class: dict | None = None,
                      batch_levels: list[int] | None = (64,), **top) -> dict:
    """The scenario dict; `site` / `request_class` entries override or extend the site's and the
    class's, `top` adds top-level sections (e.g. ``engine``); `batch_levels` None: the default
    actions."""
    raw = {
        "name": name, "horizon_s": horizon_s, **top,
        "regions": [{"name": "r", "population": 1.0}],
        "sites": [{"name": "s", "region": "r", "kind": "core", "gpu": "H100", "tp": 1, "replicas": 1,
                   "model": model, "gpu_usd_per_h": 3.0, "max_queue": 100000, **(site or {})}],
        "network": {"rtt_ms": {"r": [0.0]}, "api_overhead_ms": 0.0},
        "workload": {"arrivals": "poisson", "rate_rps": rate_rps,
                     "classes": {slo_class: {"share": 1.0, "prompt_tokens": fixed(prompt_tokens),
                                             "output_tokens": fixed(output_tokens), **(request_class or {})}},
                     "models": {model: 1.0}},
    }
    if batch_levels is not None:
        raw["actions"] = {"batch_levels": list(batch_levels), "initial_batch_level": 0}
    return raw
