"""Sketch: a Ray Serve ``RequestRouter`` that asks the gridenv router service where to send a request.

Not a dependency of gridenv: ray is imported only inside :func:`make_router_class`, and this
file is an example to adapt, not tested against a live Ray cluster.

Run the service next to the Serve proxy (it binds 127.0.0.1 by default)::

    python -m agents.export runs/metro_maskable_ppo_s0 --out exported/metro
    python -m gridenv.router serve --policy exported/metro --port 8090

and deploy with ``request_router_config=RequestRouterConfig(request_router_class=
"ray_serve_request_router:GridenvRequestRouter")`` after
``GridenvRequestRouter = make_router_class()``. Ray Serve calls
``choose_replicas(candidate_replicas, pending_request)`` and expects ranked tiers (a list of
lists of replicas, most preferred first); this adapter returns the policy's choice first, then
the other feasible replicas by decreasing score, then the rest. Each replica reports its site's
live signals through its deployment's ``record_routing_stats()`` (``{"site": "edge-north",
"waiting": ..., "running": ..., "kv_util": ..., "rtt_ms": ..., "energy_price_usd_per_kwh": ...}``),
which Serve exposes to the router as ``replica.routing_stats``. A shed decision maps to an empty
ranking plus an error the caller turns into HTTP 429; here it falls back to all replicas.

Cache affinity: add the prompt's block hashes to the request object,
``"block_hashes": gridenv.router.prefix.prompt_block_hashes(token_ids)`` (128-token blocks), and
the service matches them against its own prefix index and remembers where it sent them
(approximate mode); a router that receives its engines' KV events sends each endpoint's
``"prefix_cached_frac"`` instead (precise mode).

The same service plugs into the other routers of ``shared/reference/routers.md`` with a few lines:

* vLLM production-stack: subclass ``RoutingInterface`` and implement
  ``route_request(self, endpoints, engine_stats, request_stats, request) -> str`` (a URL)::

      stats = engine_stats.get(ep.url)      # EngineStats, scraped from vLLM /metrics
      {"name": SITE_OF_URL[ep.url], "waiting": stats.num_queuing_requests,
       "running": stats.num_running_requests, "kv_util": stats.gpu_cache_usage_perc, ...}
      decision = client.route(snapshot)     # POST /v1/route
      return URL_OF_SITE[decision["endpoint"]]   # or raise -> 429 when decision["shed"]

* llm-d inference scheduler: a ``Scorer`` plug-in (Go) that POSTs the candidate pods' metrics
  (queue depth, running requests, KV-cache utilization) to ``/v1/score`` and returns
  ``scores[pod]`` (already in [0, 1]) per pod; weight it in the scheduling profile YAML like
  the built-in queue / kv-cache scorers, and use ``shed`` in an admission filter.
"""

from __future__ import annotations

import http.client
import json
import threading
from typing import Any

SERVICE_HOST, SERVICE_PORT = "127.0.0.1", 8090
SITE_FIELDS = ("waiting", "running", "kv_util", "rtt_ms", "energy_price_usd_per_kwh")


class RouterClient:
    """Keep-alive JSON client for ``POST /v1/route`` (one connection per thread)."""

    def __init__(self, host: str = SERVICE_HOST, port: int = SERVICE_PORT, timeout_s: float = 0.05) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self._local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        return conn

    def sites(self) -> list[str]:
        """The site names the policy routes between (``GET /healthz``), cached."""
        if getattr(self, "_sites", None) is None:
            self._sites = self._call("GET", "/healthz", None)["sites"]
        return self._sites

    def route(self, snapshot: dict) -> dict:
        return self._call("POST", "/v1/route", json.dumps(snapshot).encode())

    def _call(self, method: str, path: str, body: bytes | None) -> dict:
        conn = self._conn()
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = json.loads(resp.read())
        except (OSError, http.client.HTTPException, ValueError):
            conn.close()
            self._local.conn = None
            raise
        if resp.status != 200:
            raise ValueError(f"router service: HTTP {resp.status}: {data.get('error')}")
        return data


def build_snapshot(replicas: list, request_info: dict, all_sites: list[str] = ()) -> tuple[dict, dict]:
    """(snapshot JSON, site -> replicas) from the candidates' routing stats.

    `request_info` holds the request fields: prompt_tokens, slo_class, origin, model, residency.
    Replicas of one site are merged (waiting and running summed, KV utilization averaged); sites
    of `all_sites` without a candidate replica are reported down.
    """
    by_site: dict[str, list] = {}
    for r in replicas:
        stats = getattr(r, "routing_stats", None) or {}
        if "site" in stats:
            by_site.setdefault(stats["site"], []).append(r)
    endpoints = []
    for site, reps in by_site.items():
        st = [r.routing_stats for r in reps]
        endpoints.append({
            "name": site,
            "waiting": sum(s.get("waiting", 0) for s in st),
            "running": sum(s.get("running", 0) for s in st),
            "kv_util": sum(s.get("kv_util", 0.0) for s in st) / len(st),
            "rtt_ms": st[0].get("rtt_ms", 0.0),
            "energy_price_usd_per_kwh": st[0].get("energy_price_usd_per_kwh", 0.0),
            "up": True,
        })
    for site in all_sites:
        if site not in by_site:
            endpoints.append({"name": site, "waiting": 0, "running": 0, "kv_util": 0.0, "rtt_ms": 0.0,
                              "energy_price_usd_per_kwh": 0.0, "up": False})
    return {"endpoints": endpoints, "request": dict(request_info)}, by_site


def rank_replicas(decision: dict, by_site: dict, candidates: list) -> list[list]:
    """Ranked tiers: the chosen site's replicas, then feasible sites by score, then the rest."""
    if decision.get("shed"):
        return [candidates]  # or raise, and answer 429 upstream
    scores = decision["scores"]
    order = sorted(by_site, key=lambda s: (s != decision["endpoint"], -scores.get(s, 0.0)))
    tiers = [by_site[s] for s in order if scores.get(s, 0.0) > 0.0]
    ranked = {id(r) for tier in tiers for r in tier}
    rest = [r for r in candidates if id(r) not in ranked]
    return tiers + ([rest] if rest else [])


def make_router_class(client: RouterClient | None = None, request_info_of: Any = None):
    """Build the RequestRouter subclass (imports ray here, so this module imports without it).

    `request_info_of(pending_request) -> dict` extracts prompt_tokens, slo_class, origin,
    model and residency from the request (e.g. from ``pending_request.args[0]``'s body or
    headers); the default reads a dict passed as the first argument.
    """
    from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

    client = client or RouterClient()

    def default_info(pending: PendingRequest | None) -> dict:
        args = getattr(pending, "args", None) or [{}]
        info = args[0] if isinstance(args[0], dict) else {}
        return {"prompt_tokens": int(info.get("prompt_tokens", 512)), "slo_class": info.get("slo_class", "chat"),
                "origin": info.get("origin"), "model": info.get("model"),
                "residency": bool(info.get("residency", False))}

    info_of = request_info_of or default_info

    class GridenvRequestRouter(RequestRouter):
        async def choose_replicas(
            self,
            candidate_replicas: list[RunningReplica],
            pending_request: PendingRequest | None = None,
        ) -> list[list[RunningReplica]]:
            try:
                snapshot, by_site = build_snapshot(candidate_replicas, info_of(pending_request),
                                                   client.sites())
                # A blocking call on loopback takes ~1-3 ms; use a thread (or aiohttp) under load.
                decision = client.route(snapshot)
            except Exception:  # noqa: BLE001 - the service is down: fall back to Serve's default
                return [candidate_replicas]
            return rank_replicas(decision, by_site, candidate_replicas)

    return GridenvRequestRouter


if __name__ == "__main__":  # a dry run of the adapter logic against a running service
    class _Replica:
        def __init__(self, site: str, **stats) -> None:
            self.replica_id, self.routing_stats = site, {"site": site, **stats}

    reps = [_Replica(s, waiting=i, running=4 * i, kv_util=0.1 * i, rtt_ms=5.0 + 10 * i,
                     energy_price_usd_per_kwh=0.18)
            for i, s in enumerate(["edge-north", "edge-south", "edge-east", "edge-west", "core"])]
    client = RouterClient(timeout_s=2.0)
    snap, sites = build_snapshot(reps[:4], {"prompt_tokens": 600, "slo_class": "chat", "origin": "north",
                                            "model": "llama-3-8b", "residency": False}, client.sites())
    snap["hour_utc"] = 12.0
    d = client.route(snap)
    print(json.dumps(d, indent=2))
    print([[r.replica_id for r in tier] for tier in rank_replicas(d, sites, reps[:4])])
