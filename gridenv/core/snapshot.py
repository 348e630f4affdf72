"""What a request router can see, and the one encoder that turns it into an observation.

A :class:`RouterSnapshot` holds per-site live signals (waiting and running requests, KV
utilization, RTT from the request's origin, energy price, up or down, batching level) and the
request (prompt length, SLO class, origin, model, residency). Everything derived from it (the
feasibility mask, the predicted TTFT, the observation vector) is computed here and nowhere else:
the Gymnasium environment, the heuristic baselines and the exported router at serving time all
call :func:`make_snapshot` and :func:`encode`.

This module imports numpy only, so a router host needs neither gymnasium nor torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = [
    "SiteStatics", "RequestView", "RouterSnapshot", "make_snapshot", "encode",
    "feature_spec", "obs_size", "SITE_FEATURES", "SLO_CLASSES", "SHED",
]

#: SLO classes, in one-hot order (same as gridenv.core.scenario.SLO_CLASSES).
SLO_CLASSES: tuple[str, ...] = ("chat", "code", "summarization")

#: Sentinel site index meaning "shed the request" in decisions (the action uses max_sites).
SHED = -1

#: Per-site features, in observation order: (name, unit, how it is scaled to [0, 1]).
SITE_FEATURES: tuple[tuple[str, str, str], ...] = (
    ("present", "flag", "1 if the slot holds a site, 0 for padding"),
    ("up", "flag", "1 if the site is up"),
    ("feasible", "flag", "1 if the request may go there (the action mask)"),
    ("waiting", "requests", "outstanding not-yet-running requests / max_waiting, clipped to 1"),
    ("running", "requests", "running requests / (replicas * largest batch level), clipped to 1"),
    ("kv_util", "fraction", "KV blocks in use / KV blocks (paged; evictable cached blocks count as free)"),
    ("ttft_pred", "s", "predicted TTFT / the request's TTFT SLO, divided by 4, clipped to 1"),
    ("rtt", "ms", "RTT from the request's origin / 200 ms, clipped to 1"),
    ("energy_price", "$/kWh", "price / 0.5 $/kWh, clipped to 1"),
    ("batch_level", "index", "current batching level / (levels - 1)"),
    ("is_edge", "flag", "1 for an edge site, 0 for core"),
    ("in_origin_region", "flag", "1 if the site is in the request's origin region"),
)
N_SITE_FEATURES = len(SITE_FEATURES)
RTT_SCALE_MS = 200.0
PRICE_SCALE_USD_PER_KWH = 0.5
TTFT_RATIO_CLIP = 4.0
PROMPT_LOG_SCALE = math.log1p(32768.0)


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
        sc = topo.scenario
        perfs = [s.perf for s in topo.sites]
        return cls(
            site_names=tuple(topo.site_names),
            region_names=tuple(topo.region_names),
            model_names=tuple(_model_names()),
            region_utc_offset_h=tuple(float(x) for x in topo.region_utc_offset_h),
            site_region=tuple(s.region for s in topo.sites),
            site_model=tuple(s.model for s in topo.sites),
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


def _model_names() -> tuple[str, ...]:
    from gridenv.core.catalog import MODELS

    return tuple(sorted(MODELS))


@dataclass(slots=True)
class RequestView:
    """The request being routed, as the router sees it (no output length: that is unknown)."""

    prompt_tokens: int
    slo_class: int  # index into SLO_CLASSES
    origin: int  # region index
    model: int  # index into statics.model_names
    residency: bool  # must be served in its origin region
    ttft_slo_s: float
    tpot_slo_s: float


@dataclass(slots=True)
class RouterSnapshot:
    """Live signals for every site plus the request, and what is derived from them."""

    statics: SiteStatics
    request: RequestView
    hour_utc: float  # time of day, for the diurnal features
    waiting: np.ndarray  # requests sent but not yet running, per site
    running: np.ndarray  # requests being prefilled or decoded, per site
    kv_util: np.ndarray  # fraction of KV capacity reserved, per site
    rtt_ms: np.ndarray  # RTT from the request's origin, per site
    energy_price_usd_per_kwh: np.ndarray
    up: np.ndarray  # bool
    batch_level: np.ndarray  # int, index into statics.batch_levels
    # derived by make_snapshot
    feasible: np.ndarray = None  # bool, per site
    ttft_pred_s: np.ndarray = None  # per site
    _signals: np.ndarray | None = field(default=None, repr=False)  # stacked rows, for encode

    @property
    def action_mask(self) -> np.ndarray:
        """Flat MultiDiscrete mask: max_sites + 1 site choices (last = shed), then batch levels."""
        st = self.statics
        m = np.zeros(st.max_sites + 1 + len(st.batch_levels), dtype=bool)
        m[: st.n_sites] = self.feasible
        m[st.max_sites] = True  # shedding is always allowed
        m[st.max_sites + 1 :] = True
        return m


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
        n = st.n_sites
        cache["kv_cap_min"] = float(cache["kv_cap"].min())
        ctx = np.asarray(st.max_context_tokens or [np.inf] * n, dtype=np.float64)
        cache["max_ctx"], cache["max_ctx_min"] = ctx, float(ctx.min())
        cache["model_ok"] = [cache["site_model"] == m for m in range(len(st.model_names))]
        cache["in_region"] = [
            (cache["site_region"] == r).astype(np.float64) for r in range(len(st.region_names))
        ]
        # Per-feature scale, rows in SITE_FEATURES order (ttft_pred is scaled per request).
        scale = np.ones((N_SITE_FEATURES, n))
        scale[3] = 1.0 / cache["max_waiting"]
        scale[4] = 1.0 / cache["run_cap"]
        scale[7] = 1.0 / RTT_SCALE_MS
        scale[8] = 1.0 / PRICE_SCALE_USD_PER_KWH
        scale[9] = 1.0 / cache["level_den"]
        cache["scale"] = scale
        template = np.zeros((len(st.region_names), N_SITE_FEATURES, n))
        template[:, 0] = 1.0
        template[:, 10] = cache["is_edge"]
        for r in range(len(st.region_names)):
            template[r, 11] = cache["site_region"] == r
        cache["template"] = template
        cache["obs_size"] = obs_size(st)
        cache["prefill_memo"] = {}
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
) -> RouterSnapshot:
    """Build a snapshot and derive its feasibility mask and predicted TTFTs."""
    a = _statics_arrays(statics)
    # One conversion for all live signals (rows), then views: cheap on the hot path.
    sig = np.array(
        (waiting, running, kv_util, rtt_ms, energy_price_usd_per_kwh, up, batch_level),
        dtype=np.float64,
    )
    waiting, rtt_ms, up = sig[0], sig[3], sig[5] > 0.0
    feasible = up & a["model_ok"][request.model] & (waiting < a["max_waiting"])
    if request.prompt_tokens >= a["kv_cap_min"]:
        feasible &= request.prompt_tokens < a["kv_cap"]
    if request.prompt_tokens >= a["max_ctx_min"]:  # the prompt must leave room for an answer
        feasible &= request.prompt_tokens < a["max_ctx"]
    if request.residency:
        feasible &= a["site_region"] == request.origin
    # Router's TTFT estimate: network + API + its own prefill behind the queued ones (assumed
    # of similar length) spread over the site's replicas.
    ttft = (rtt_ms * 1e-3 + statics.api_overhead_s) + prefill_time_s(
        statics, request.prompt_tokens
    ) * (1.0 + waiting / a["replicas"])
    return RouterSnapshot(
        statics=statics, request=request, hour_utc=float(hour_utc),
        waiting=waiting, running=sig[1], kv_util=sig[2], rtt_ms=rtt_ms,
        energy_price_usd_per_kwh=sig[4], up=up, batch_level=sig[6].astype(np.int64),
        feasible=feasible, ttft_pred_s=ttft, _signals=sig,
    )


def obs_size(statics: SiteStatics) -> int:
    return statics.max_sites * N_SITE_FEATURES + _request_size(statics)


def _request_size(st: SiteStatics) -> int:
    # prompt, SLO one-hot, origin one-hot, model one-hot, residency, hour sin, hour cos
    return 1 + len(SLO_CLASSES) + len(st.region_names) + len(st.model_names) + 1 + 2


def feature_spec(statics: SiteStatics) -> list[dict]:
    """Names, order, units and scaling of every observation element (for exported policies)."""
    spec = []
    for slot in range(statics.max_sites):
        for name, unit, scale in SITE_FEATURES:
            spec.append({"name": f"site[{slot}].{name}", "unit": unit, "scale": scale})
    spec.append({"name": "request.prompt_tokens", "unit": "tokens",
                 "scale": "log1p(tokens) / log1p(32768), clipped to 1"})
    spec += [{"name": f"request.slo_class={c}", "unit": "flag", "scale": "one-hot"} for c in SLO_CLASSES]
    spec += [{"name": f"request.origin={r}", "unit": "flag", "scale": "one-hot"} for r in statics.region_names]
    spec += [{"name": f"request.model={m}", "unit": "flag", "scale": "one-hot"} for m in statics.model_names]
    spec.append({"name": "request.residency", "unit": "flag", "scale": "1 if it must stay in its region"})
    spec.append({"name": "origin_hour.sin", "unit": "1", "scale": "sin(2 pi local hour / 24)"})
    spec.append({"name": "origin_hour.cos", "unit": "1", "scale": "cos(2 pi local hour / 24)"})
    return spec


def encode(snap: RouterSnapshot, out: np.ndarray | None = None) -> np.ndarray:
    """The observation vector (float32, in [-1, 1]) of a snapshot."""
    st = snap.statics
    a = _statics_arrays(st)
    req = snap.request
    n, F = st.n_sites, N_SITE_FEATURES
    if out is None:
        out = np.zeros(a["obs_size"], dtype=np.float32)
    else:
        out[:] = 0.0
    sig = snap._signals
    if sig is None:  # built by hand, not by make_snapshot
        sig = np.array((snap.waiting, snap.running, snap.kv_util, snap.rtt_ms,
                        snap.energy_price_usd_per_kwh, snap.up, snap.batch_level), dtype=np.float64)
    # Rows in SITE_FEATURES order; the constant rows (present, is_edge, in_origin_region) come
    # from a per-origin template, then one scale-and-clip for the whole block.
    site = a["template"][req.origin].copy()
    site[1] = snap.up
    site[2] = snap.feasible
    site[3:6] = sig[0:3]
    site[6] = snap.ttft_pred_s
    site[7:9] = sig[3:5]
    site[9] = sig[6]
    site *= a["scale"]
    site[6] *= 1.0 / (req.ttft_slo_s * TTFT_RATIO_CLIP)
    np.clip(site, 0.0, 1.0, out=site)
    out[: n * F] = site.T.ravel()
    i = st.max_sites * F
    out[i] = min(math.log1p(req.prompt_tokens) / PROMPT_LOG_SCALE, 1.0)
    i += 1
    out[i + req.slo_class] = 1.0
    i += len(SLO_CLASSES)
    out[i + req.origin] = 1.0
    i += len(st.region_names)
    out[i + req.model] = 1.0
    i += len(st.model_names)
    out[i] = 1.0 if req.residency else 0.0
    hour = (snap.hour_utc + st.region_utc_offset_h[req.origin]) % 24.0
    out[i + 1] = math.sin(2.0 * math.pi * hour / 24.0)
    out[i + 2] = math.cos(2.0 * math.pi * hour / 24.0)
    return out
