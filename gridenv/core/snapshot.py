"""What a request router can see, and the one encoder that turns it into an observation.

A :class:`RouterSnapshot` holds per-site live signals (waiting and running requests, KV
utilization, RTT from the request's origin, energy price, up or down, batching level, how much of
this request's prompt is cached there, precisely and by the router's own index, and the prompt
tokens waiting to be prefilled) and the request (prompt length, SLO class, origin, model, residency). Everything derived from it (the
feasibility mask, the predicted TTFT, the observation vector) is computed here and nowhere else:
the Gymnasium environment, the heuristic baselines and the exported router at serving time all
call :func:`make_snapshot`, and the observation is encoded by the declared interface
(:mod:`gridenv.core.interface`; :func:`encode` is its slots-mode shorthand). The environment
returns each snapshot in ``info["snapshot"]``, so policies decide from what the env returns.

This module imports numpy only, so a router host needs neither gymnasium nor torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import chain

import numpy as np

from gridenv.core.interface import SLO_CLASSES, action_mask, make_interface

__all__ = [
    "SiteStatics", "RequestView", "RouterSnapshot", "make_snapshot", "encode",
    "feature_spec", "obs_size", "SLO_CLASSES", "SHED", "prefill_time_s", "snapshot_from_lists",
]

_chain = chain.from_iterable

#: Sentinel site index meaning "shed the request" in decisions (the action uses max_sites).
SHED = -1


@dataclass(frozen=True)
class SiteStatics:
    """Static facts about the sites a router routes between (carried in an exported policy)."""

    site_names: tuple[str, ...]
    region_names: tuple[str, ...]
    model_names: tuple[str, ...]
    region_utc_offset_h: tuple[float, ...]
    site_region: tuple[int, ...]
    site_model: tuple[int, ...]
    is_edge: tuple[bool, ...]
    replicas: tuple[int, ...]
    max_waiting: tuple[int, ...]  # whole site: replicas * max_queue
    kv_capacity_tokens: tuple[int, ...]  # per replica
    batch_levels: tuple[int, ...]
    max_sites: int
    api_overhead_s: float
    # Prefill-time model per site: max(mem_s, tok_s*L + attn_s*L^2/2) + fixed_s + lin_s*L
    prefill_mem_s: tuple[float, ...]
    prefill_tok_s: tuple[float, ...]
    prefill_attn_s: tuple[float, ...]
    prefill_fixed_s: tuple[float, ...]
    prefill_lin_s: tuple[float, ...]
    # What running a request costs at each site (an operator knows its own prices).
    tp: tuple[int, ...]  # GPUs per replica
    gpu_usd_per_h: tuple[float, ...]  # per GPU
    gpu_tdp_w: tuple[float, ...]  # per GPU
    site_power_factor: tuple[float, ...]  # PUE * (1 + server overhead)
    # Longest prompt + output the site's model accepts; empty = no limit (older exports).
    max_context_tokens: tuple[int, ...] = ()

    @property
    def n_sites(self) -> int:
        return len(self.site_names)

    def to_dict(self) -> dict:
        return asdict(self)

    def __getstate__(self):  # pickle the fields, not the per-process caches (_arrays, _interfaces)
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def __setstate__(self, state) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, v)

    @classmethod
    def from_dict(cls, d: dict) -> "SiteStatics":
        fields = cls.__dataclass_fields__
        missing = [k for k in fields if k not in d and k != "max_context_tokens"]
        if missing:
            raise ValueError(f"site statics: missing fields {missing}")
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in fields}
        return cls(**kw)

    @classmethod
    def from_topology(cls, topo) -> "SiteStatics":
        from gridenv.core.topology import MODEL_NAMES

        sc = topo.scenario
        perfs = [s.perf for s in topo.sites]
        # The scenario's own models (never the whole catalog: adding a model to catalog.py
        # must not change an observation).
        models = tuple(sorted({MODEL_NAMES[s.model] for s in topo.sites}))
        return cls(
            site_names=tuple(topo.site_names),
            region_names=tuple(topo.region_names),
            model_names=models,
            region_utc_offset_h=tuple(float(x) for x in topo.region_utc_offset_h),
            site_region=tuple(s.region for s in topo.sites),
            site_model=tuple(models.index(MODEL_NAMES[s.model]) for s in topo.sites),
            is_edge=tuple(s.kind == "edge" for s in topo.sites),
            replicas=tuple(s.replicas for s in topo.sites),
            max_waiting=tuple(s.replicas * s.max_queue for s in topo.sites),
            kv_capacity_tokens=tuple(s.kv_capacity_tokens for s in topo.sites),
            batch_levels=tuple(sc.actions.batch_levels),
            max_sites=sc.max_sites,
            api_overhead_s=sc.network.api_overhead_ms / 1000.0,
            prefill_mem_s=tuple(p.mem_base_s for p in perfs),
            prefill_tok_s=tuple(p.comp_per_token_s for p in perfs),
            prefill_attn_s=tuple(p.comp_attn_s for p in perfs),
            prefill_fixed_s=tuple(p.fixed_s + p.comm_base_s + p.c_per_seq_s for p in perfs),
            prefill_lin_s=tuple(p.comm_per_token_s for p in perfs),
            tp=tuple(s.tp for s in topo.sites),
            gpu_usd_per_h=tuple(s.gpu_usd_per_h for s in topo.sites),
            gpu_tdp_w=tuple(s.perf.gpu.tdp_w for s in topo.sites),
            site_power_factor=tuple(s.site_power_factor for s in topo.sites),
            max_context_tokens=tuple(s.perf.model.max_context_tokens for s in topo.sites),
        )


@dataclass(slots=True)
class RequestView:
    """The request being routed, as the router sees it (no output length: that is unknown)."""

    prompt_tokens: int
    slo_class: int  # index into SLO_CLASSES
    origin: int  # region index
    model: int  # index into statics.model_names (the scenario's own models)
    residency: bool  # must be served in its origin region
    ttft_slo_s: float
    tpot_slo_s: float


@dataclass(slots=True, eq=False)
class RouterSnapshot:
    """Live signals for every site plus the request, and what is derived from them."""

    statics: SiteStatics
    request: RequestView
    hour_utc: float  # time of day, for the diurnal features
    waiting: np.ndarray  # requests sent but not yet running, per site
    running: np.ndarray  # requests being prefilled or decoded, per site
    kv_util: np.ndarray  # fraction of KV blocks in use, per site (paged, on demand)
    rtt_ms: np.ndarray  # RTT from the request's origin, per site
    energy_price_usd_per_kwh: np.ndarray
    up: np.ndarray  # bool
    batch_level: np.ndarray  # int, index into statics.batch_levels
    # Fraction of this request's prompt tokens already in the KV cache of the replica the site
    # would use (precise: from the engines' caches, as KV-event-driven routers see them).
    prefix_cached_frac: np.ndarray = None
    # Fraction of the prompt the router's own prefix index (what it sent where recently,
    # bounded LRU: gridenv.core.prefix_index) says is cached there (approximate).
    prefix_indexed_frac: np.ndarray = None
    # Prompt tokens sent to the site and not yet admitted to a batch (in transit or queued):
    # the prefill backlog that saturation detectors and Dynamo's cost read.
    queued_prompt_tokens: np.ndarray = None
    # derived by make_snapshot
    feasible: np.ndarray = None  # bool, per site
    ttft_pred_s: np.ndarray = None  # per site

    @property
    def action_mask(self) -> np.ndarray:
        """Flat MultiDiscrete mask: max_sites + 1 site choices (last = shed), then batch levels."""
        return action_mask(self.statics, self.feasible)

    def __eq__(self, other) -> bool:
        """Same statics, request and signals (arrays compared element-wise)."""
        if not isinstance(other, RouterSnapshot):
            return NotImplemented
        for k in self.__dataclass_fields__:
            a, b = getattr(self, k), getattr(other, k)
            if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
                if not np.array_equal(a, b):
                    return False
            elif a != b:
                return False
        return True

    __hash__ = None  # mutable arrays inside


def _statics_arrays(st: SiteStatics) -> dict:
    """numpy views of the statics, cached on the (frozen) object."""
    cache = st.__dict__.get("_arrays")
    if cache is None:
        cache = {
            "site_region": np.asarray(st.site_region, dtype=np.int64),
            "site_model": np.asarray(st.site_model, dtype=np.int64),
            "is_edge": np.asarray(st.is_edge, dtype=np.float64),
            "replicas": np.asarray(st.replicas, dtype=np.float64),
            "max_waiting": np.asarray(st.max_waiting, dtype=np.float64),
            "kv_cap": np.asarray(st.kv_capacity_tokens, dtype=np.float64),
            "run_cap": np.asarray(st.replicas, dtype=np.float64) * max(st.batch_levels),
            "p_mem": np.asarray(st.prefill_mem_s), "p_tok": np.asarray(st.prefill_tok_s),
            "p_attn": np.asarray(st.prefill_attn_s), "p_fixed": np.asarray(st.prefill_fixed_s),
            "p_lin": np.asarray(st.prefill_lin_s),
            "level_den": float(max(len(st.batch_levels) - 1, 1)),
        }
        cache["kv_cap_min"] = float(cache["kv_cap"].min())
        ctx = np.asarray(st.max_context_tokens or [np.inf] * st.n_sites, dtype=np.float64)
        cache["max_ctx"], cache["max_ctx_min"] = ctx, float(ctx.min())
        cache["model_ok"] = [cache["site_model"] == m for m in range(len(st.model_names))]
        cache["waiting_limit"] = [np.where(ok, cache["max_waiting"], -np.inf) for ok in cache["model_ok"]]
        cache["in_region"] = [
            (cache["site_region"] == r).astype(np.float64) for r in range(len(st.region_names))
        ]
        cache["prefill_memo"] = {}
        # Plain-Python copies for snapshot_from_lists.
        cache["prefill_list_memo"] = {}
        cache["prefill_coeffs"] = list(zip(*(cache[k].tolist() for k in ("p_tok", "p_attn", "p_mem", "p_fixed", "p_lin"))))
        cache["waiting_limit_list"] = [lim.tolist() for lim in cache["waiting_limit"]]
        cache["kv_cap_list"] = cache["kv_cap"].tolist()
        cache["max_ctx_list"] = cache["max_ctx"].tolist()
        cache["replicas_list"] = cache["replicas"].tolist()
        cache["c_zero2"] = np.zeros((2, st.n_sites))
        cache["zeros"] = (0.0,) * st.n_sites
        object.__setattr__(st, "_arrays", cache)
    return cache


def prefill_time_s(st: SiteStatics, prompt_tokens: float) -> np.ndarray:
    """Per-site time to prefill one prompt alone (the roofline model of gridenv.core.perf).

    Memoized per prompt length (a hot path: once per decision); the returned array is
    read-only."""
    a = _statics_arrays(st)
    memo = a["prefill_memo"]
    out = memo.get(prompt_tokens)
    if out is None:
        L = float(prompt_tokens)
        out = a["p_tok"] * L
        out += a["p_attn"] * (L * L * 0.5)
        np.maximum(out, a["p_mem"], out=out)
        out += a["p_fixed"]
        out += a["p_lin"] * L
        out.flags.writeable = False
        if len(memo) < 65536:
            memo[prompt_tokens] = out
    return out


def make_snapshot(
    statics: SiteStatics,
    request: RequestView,
    hour_utc: float,
    waiting, running, kv_util, rtt_ms, energy_price_usd_per_kwh, up, batch_level,
    prefix_cached_frac=None, prefix_indexed_frac=None, queued_prompt_tokens=None,
) -> RouterSnapshot:
    """Build a snapshot and derive its feasibility mask and predicted TTFTs.

    The signals are array-likes of one number per site; they are read as float64 (one
    conversion) and derived by :func:`snapshot_from_lists`. The last three signals default to
    0 (no prefix cached, no backlog known)."""
    zeros = _statics_arrays(statics)["zeros"]
    sig = np.array(
        (waiting, running, kv_util, rtt_ms, energy_price_usd_per_kwh, up, batch_level,
         zeros if prefix_cached_frac is None else prefix_cached_frac,
         zeros if prefix_indexed_frac is None else prefix_indexed_frac,
         zeros if queued_prompt_tokens is None else queued_prompt_tokens),
        dtype=np.float64,
    )
    if sig.ndim != 2 or sig.shape[1] != statics.n_sites:
        raise ValueError(f"snapshot signals: expected one value per site ({statics.n_sites} sites), "
                         f"got rows of shape {sig.shape[1:]}")
    return snapshot_from_lists(statics, request, hour_utc, *sig.tolist())


def snapshot_from_lists(
    statics: SiteStatics,
    request: RequestView,
    hour_utc: float,
    waiting, running, kv_util, rtt_ms, energy_price_usd_per_kwh, up, batch_level,
    prefix_cached_frac, prefix_indexed_frac, queued_prompt_tokens,
) -> RouterSnapshot:
    """:func:`make_snapshot` for signals already given as lists of Python numbers, one per site
    (the simulator's hot path; the caller checks the lengths).

    The few per-site values are derived in plain Python (Python floats are IEEE doubles: the
    same values as float64 arrays, bit for bit) and every array of the snapshot comes from one
    numpy conversion: a snapshot costs a handful of numpy calls whatever the features."""
    a = _statics_arrays(statics)
    p = request.prompt_tokens
    # Feasible: up, serves the request's model with room in its queue (waiting < max_waiting;
    # the limit is -inf where the model is not served), the prompt fits the KV cache and the
    # context window, and residency holds.
    feasible = [u > 0.0 and w < lim for u, w, lim in zip(up, waiting, a["waiting_limit_list"][request.model])]
    if p >= a["kv_cap_min"]:
        feasible = [f and p < c for f, c in zip(feasible, a["kv_cap_list"])]
    if p >= a["max_ctx_min"]:  # the prompt must leave room for an answer
        feasible = [f and p < c for f, c in zip(feasible, a["max_ctx_list"])]
    if request.residency:
        origin = request.origin
        feasible = [f and r == origin for f, r in zip(feasible, statics.site_region)]
    # Router's TTFT estimate: network + API + its own prefill (of the uncached part of the
    # prompt) behind the queued ones (assumed of similar length) spread over the site's replicas.
    api = statics.api_overhead_s
    full = _prefill_time_list(statics, a, p)
    if any(prefix_cached_frac):
        own = [_prefill_time_of(a, coeffs, p * (1.0 - c)) for coeffs, c in zip(a["prefill_coeffs"], prefix_cached_frac)]
        ttft = [(r * 1e-3 + api) + o + t * (w / q)
                for r, o, t, w, q in zip(rtt_ms, own, full, waiting, a["replicas_list"])]
    else:
        ttft = [(r * 1e-3 + api) + t * (1.0 + w / q)
                for r, t, w, q in zip(rtt_ms, full, waiting, a["replicas_list"])]
    # (np.fromiter over the chained rows converts each number exactly as np.array does, at
    # half the cost: no type discovery)
    m = np.fromiter(_chain((waiting, running, kv_util, rtt_ms, energy_price_usd_per_kwh, ttft, batch_level,
                            prefix_cached_frac, prefix_indexed_frac, queued_prompt_tokens, up, feasible)),
                    np.float64, 12 * statics.n_sites).reshape(12, statics.n_sites)
    flags = m[10:] > a["c_zero2"]  # up, feasible
    # Positional, in field order (statics, request, hour_utc, waiting, running, kv_util, rtt_ms,
    # energy_price_usd_per_kwh, up, batch_level, prefix_cached_frac, prefix_indexed_frac,
    # queued_prompt_tokens, feasible, ttft_pred_s): cheaper than keywords on this hot path.
    return RouterSnapshot(statics, request, float(hour_utc), m[0], m[1], m[2], m[3], m[4], flags[0],
                          m[6].astype(np.int64), m[7], m[8], m[9], flags[1], m[5])


def _prefill_time_of(a: dict, coeffs: tuple, tokens: float) -> float:
    """One site's prefill time of `tokens` (prefill_time_s's operations, in the same order, on
    Python floats)."""
    tok, attn, mem, fixed, lin = coeffs
    t = tok * tokens + attn * (tokens * tokens * 0.5)
    if not (t >= mem or t != t):  # np.maximum(t, mem): NaN propagates
        t = mem
    return t + fixed + lin * tokens


def _prefill_time_list(st: SiteStatics, a: dict, prompt_tokens) -> list:
    """:func:`prefill_time_s` as a list of Python floats (memoized the same way)."""
    memo = a["prefill_list_memo"]
    out = memo.get(prompt_tokens)
    if out is None:
        L = float(prompt_tokens)
        out = [_prefill_time_of(a, coeffs, L) for coeffs in a["prefill_coeffs"]]
        if len(memo) < 65536:
            memo[prompt_tokens] = out
    return out


def obs_size(statics: SiteStatics, mode: str = "slots") -> int:
    """Observation length (see :mod:`gridenv.core.interface`)."""
    return make_interface(statics, mode).obs_size


def feature_spec(statics: SiteStatics, mode: str = "slots") -> list[dict]:
    """Names, order, units and scaling of every observation element (for exported policies)."""
    return make_interface(statics, mode).feature_spec()


def encode(snap: RouterSnapshot, out: np.ndarray | None = None, mode: str = "slots") -> np.ndarray:
    """The observation vector of a snapshot in `mode` (:meth:`gridenv.core.interface.Interface.encode`)."""
    return make_interface(snap.statics, mode).encode(snap, out)
