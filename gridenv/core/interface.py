"""The observation and action interface, declared once.

Everything that addresses an observation or an action by position is derived from the
declarations in this module: the encoder (:meth:`Interface.encode`), the feature spec exported
with a policy (:meth:`Interface.feature_spec`), the action mask, the router's JSON snapshot
fields (:data:`SITE_SIGNALS`, :data:`REQUEST_FIELDS`) and the interface record (version +
content hash) that every trained model and exported policy carries.

Two observation modes (a scenario's ``observation: {mode: ...}``):

``slots`` (version ``slots-2``)
    ``max_sites`` blocks of :data:`SLOT_SITE_FEATURES`, then :data:`SLOT_REQUEST_FEATURES`,
    which name the request's origin region and model by one-hots over the *scenario's own*
    regions and models. A network trained on it is tied to that grid.
``relative`` (version ``relative-1``)
    ``max_sites`` blocks of :data:`RELATIVE_SITE_FEATURES` (each site seen from the request:
    RTT from its origin, same-region flag, predicted TTFT against its SLO, price, cost, load...)
    then :data:`RELATIVE_REQUEST_FEATURES`, which carry no region, site or model identity. One
    per-site network can score any 1..``max_sites`` sites of any grid; the declaration (and its
    hash) does not depend on the sites' names or on the number of regions.

A feature is declared by its name, unit, ``source`` (a Python expression over the snapshot
``snap``, its statics ``st``, its request ``req``, ``np``, ``math`` and :func:`local_hour`)
and its scaling; the encoder is compiled from those expressions, and the tests re-evaluate
each declaration independently, element by element.

Adding a feature = one declaration here (+ its computation in ``gridenv.core.snapshot`` when it
needs a new live signal). Changing any declaration changes :attr:`Interface.content_hash`, so a
policy trained before the change is refused with a message naming the feature.

This module imports numpy only (no gymnasium, no torch, nothing else from gridenv).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "SLO_CLASSES", "MODES", "VERSIONS", "SiteFeature", "RequestFeature", "Signal",
    "SLOT_SITE_FEATURES", "SLOT_REQUEST_FEATURES", "RELATIVE_SITE_FEATURES",
    "RELATIVE_REQUEST_FEATURES", "SITE_SIGNALS", "REQUEST_FIELDS", "Interface",
    "InterfaceMismatchError", "check_compatible", "make_interface", "local_hour", "action_mask",
]

#: SLO classes, in one-hot order. The one definition (scenario.py and snapshot.py import it).
SLO_CLASSES: tuple[str, ...] = ("chat", "code", "summarization")

#: Observation modes and the interface version each one currently encodes. Bump a version when
#: its declaration changes (the content hash changes anyway; the version is for humans).
#: History: slots-1 = env v0 (model one-hot over the whole catalog); slots-2 = env v1 (over the
#: scenario's own models); relative-1 = env v1; slots-3 / relative-2 = env v1 with the prefix-cache
#: and prefill-backlog site features (the cache-aware routing issue).
VERSIONS: dict[str, str] = {"slots": "slots-3", "relative": "relative-2"}
MODES: tuple[str, ...] = tuple(VERSIONS)


def local_hour(hour_utc, utc_offset_h):
    """Local hour of day in [0, 24) at UTC hour `hour_utc` (scalars or arrays)."""
    return (hour_utc + utc_offset_h) % 24.0


# ---------------------------------------------------------------------------- declarations
@dataclass(frozen=True)
class SiteFeature:
    """One per-site observation element (one per site slot; padding slots are all 0).

    ``source``: expression over ``snap``/``st``/``req`` giving the raw per-site values; ``kind``
    says what it depends on: ``static`` (the statics only), ``origin`` (statics and the
    request's origin), ``signal`` (a live ``snap.<field>`` array), ``request`` (anything else,
    evaluated per decision). The value is ``clip(raw / divide_by, 0, 1)``; ``divide_by`` is a
    number or an expression (per request when it mentions ``req``).
    """

    name: str
    unit: str
    source: str
    kind: str
    scaling: str
    divide_by: str = "1"


@dataclass(frozen=True)
class RequestFeature:
    """Request observation elements: a scalar ``transform`` of ``source`` (``x``), or, with a
    ``vocab``, a one-hot of the index ``source`` over that vocabulary (one element per entry)."""

    name: str
    unit: str
    source: str
    scaling: str
    transform: str = "x"
    vocab: str | None = None


def _site(name, unit, source, kind, scaling, divide_by="1") -> SiteFeature:
    return SiteFeature(name, unit, source, kind, scaling, str(divide_by))


_PRESENT = _site("present", "flag", "np.ones(st.n_sites)", "static", "1 if the slot holds a site, 0 for padding")
_UP = _site("up", "flag", "snap.up", "signal", "1 if the site is up")
_FEASIBLE = _site("feasible", "flag", "snap.feasible", "signal", "1 if the request may go there (the action mask)")
_WAITING = _site("waiting", "requests", "snap.waiting", "signal",
                 "outstanding not-yet-running requests / max_waiting, clipped to 1", "np.asarray(st.max_waiting)")
_RUNNING = _site("running", "requests", "snap.running", "signal",
                 "running requests / (replicas * largest batch level), clipped to 1",
                 "np.asarray(st.replicas) * max(st.batch_levels)")
_KV = _site("kv_util", "fraction", "snap.kv_util", "signal", "reserved KV tokens / KV capacity")
_TTFT = _site("ttft_pred", "s", "snap.ttft_pred_s", "signal",
              "predicted TTFT / the request's TTFT SLO, divided by 4, clipped to 1", "req.ttft_slo_s * 4.0")
_RTT = _site("rtt", "ms", "snap.rtt_ms", "signal", "RTT from the request's origin / 200 ms, clipped to 1", 200.0)
_PRICE = _site("energy_price", "$/kWh", "snap.energy_price_usd_per_kwh", "signal",
               "price / 0.5 $/kWh, clipped to 1", 0.5)
_LEVEL = _site("batch_level", "index", "snap.batch_level", "signal", "current batching level / (levels - 1)",
               "max(len(st.batch_levels) - 1, 1)")
_EDGE = _site("is_edge", "flag", "np.asarray(st.is_edge)", "static", "1 for an edge site, 0 for core")
_SAME_REGION = _site("in_origin_region", "flag", "np.asarray(st.site_region) == req.origin", "origin",
                     "1 if the site is in the request's origin region")
_CACHED = _site("prefix_cached", "fraction", "snap.prefix_cached_frac", "signal",
                "fraction of the prompt's tokens in the prefix cache of the replica the site would use "
                "(precise, from the engines' caches)")
_INDEXED = _site("prefix_indexed", "fraction", "snap.prefix_indexed_frac", "signal",
                 "fraction of the prompt the router's own prefix index says it sent there recently "
                 "(approximate, bounded LRU)")
_BACKLOG = _site("prefill_backlog", "tokens", "snap.queued_prompt_tokens", "signal",
                 "prompt tokens in transit or queued / (replicas * 16384), clipped to 1",
                 "np.asarray(st.replicas) * 16384.0")

#: slots mode, per site slot (order = observation order).
SLOT_SITE_FEATURES: tuple[SiteFeature, ...] = (
    _PRESENT, _UP, _FEASIBLE, _WAITING, _RUNNING, _KV, _TTFT, _RTT, _PRICE, _LEVEL, _EDGE, _SAME_REGION,
    _CACHED, _INDEXED, _BACKLOG,
)

#: relative mode, per site slot: the slots features (none of which names a site or region)
#: plus what a topology-agnostic scorer needs to compare sites it has never seen.
RELATIVE_SITE_FEATURES: tuple[SiteFeature, ...] = (
    _PRESENT, _UP, _FEASIBLE, _WAITING, _RUNNING, _KV, _TTFT, _RTT, _SAME_REGION, _PRICE, _LEVEL, _EDGE,
    _site("replica_usd_per_h", "$/h", "np.asarray(st.tp) * np.asarray(st.gpu_usd_per_h)", "static",
          "GPU rent of one replica (GPUs per replica * $/GPU-h) / 50 $/h, clipped to 1", 50.0),
    _site("replica_power_kw", "kW", "np.asarray(st.tp) * np.asarray(st.gpu_tdp_w) * np.asarray(st.site_power_factor)",
          "static", "full-load power of one replica incl. PUE and server overhead / 10 kW, clipped to 1", 10000.0),
    _site("capacity", "requests", "np.asarray(st.replicas) * max(st.batch_levels)", "static",
          "replicas * largest batch level / 1024, clipped to 1", 1024.0),
    _site("prompt_kv_frac", "fraction", "req.prompt_tokens / np.asarray(st.kv_capacity_tokens, dtype=float)",
          "request", "prompt tokens / KV capacity of one replica, clipped to 1"),
    _CACHED, _INDEXED, _BACKLOG,
)

_PROMPT = RequestFeature("prompt_tokens", "tokens", "req.prompt_tokens",
                         "log1p(tokens) / log1p(32768), clipped to 1",
                         "min(math.log1p(x) / math.log1p(32768.0), 1.0)")
_SLO = RequestFeature("slo_class", "flag", "req.slo_class", "one-hot", vocab="slo_class")
_RESIDENCY = RequestFeature("residency", "flag", "req.residency", "1 if it must stay in its region",
                            "1.0 if x else 0.0")
_HOUR = "local_hour(snap.hour_utc, st.region_utc_offset_h[req.origin])"
_SIN = RequestFeature("origin_hour.sin", "1", _HOUR, "sin(2 pi local hour / 24)", "math.sin(2.0 * math.pi * x / 24.0)")
_COS = RequestFeature("origin_hour.cos", "1", _HOUR, "cos(2 pi local hour / 24)", "math.cos(2.0 * math.pi * x / 24.0)")

#: slots mode, after the site blocks.
SLOT_REQUEST_FEATURES: tuple[RequestFeature, ...] = (
    _PROMPT, _SLO,
    RequestFeature("origin", "flag", "req.origin", "one-hot", vocab="region"),
    RequestFeature("model", "flag", "req.model", "one-hot", vocab="model"),
    _RESIDENCY, _SIN, _COS,
)

#: relative mode: no region, site or model identity.
RELATIVE_REQUEST_FEATURES: tuple[RequestFeature, ...] = (
    _PROMPT, _SLO, _RESIDENCY, _SIN, _COS,
    RequestFeature("ttft_slo", "s", "req.ttft_slo_s", "log10(ttft_slo_s / 10 ms) / 4, clipped to [0, 1]",
                   "min(max(math.log10(x / 0.01) / 4.0, 0.0), 1.0)"),
    RequestFeature("tpot_slo", "s", "req.tpot_slo_s", "tpot_slo_s / 0.5 s, clipped to 1", "min(x / 0.5, 1.0)"),
)

_DECLARATIONS = {
    "slots": (SLOT_SITE_FEATURES, SLOT_REQUEST_FEATURES),
    "relative": (RELATIVE_SITE_FEATURES, RELATIVE_REQUEST_FEATURES),
}


@dataclass(frozen=True)
class Signal:
    """A field of the router's JSON snapshot: what the caller sends, its unit and valid range."""

    name: str
    type: str  # JSON type: "number", "integer", "boolean", "string", "array" (bounds: its length)
    unit: str
    minimum: float | None = None
    maximum: float | None = None
    required: bool = True
    description: str = ""


#: Live per-site signals a caller sends for every endpoint (``endpoints[i]``), besides ``name``.
SITE_SIGNALS: tuple[Signal, ...] = (
    Signal("waiting", "number", "requests", 0.0, None, True, "requests sent to the site, not yet running"),
    Signal("running", "number", "requests", 0.0, None, True, "requests being prefilled or decoded"),
    Signal("kv_util", "number", "fraction", 0.0, 1.0, True, "reserved KV tokens / KV capacity"),
    Signal("rtt_ms", "number", "ms", 0.0, None, True, "RTT from the request's origin"),
    Signal("energy_price_usd_per_kwh", "number", "$/kWh", 0.0, None, True, "the site's electricity price now"),
    Signal("up", "boolean", "flag", None, None, True, "the site accepts requests"),
    Signal("batch_level", "integer", "index", 0, None, False,
           "current batching level, an index into batch_levels (default: the initial level)"),
    Signal("prefix_cached_frac", "number", "fraction", 0.0, 1.0, False,
           "fraction of this prompt's tokens cached at the endpoint, from its KV events (precise mode; "
           "default: the service's own prefix index when the request carries block hashes, else 0)"),
    Signal("prefix_indexed_frac", "number", "fraction", 0.0, 1.0, False,
           "fraction of this prompt the caller's own prefix index says it sent there recently "
           "(default: the service's own index when the request carries block hashes, else 0)"),
    Signal("queued_prompt_tokens", "number", "tokens", 0.0, None, False,
           "prompt tokens sent to the endpoint and not yet admitted to a batch (default 0)"),
)

#: The request fields (``request.<name>``); ``hour_utc`` is a top-level optional number.
REQUEST_FIELDS: tuple[Signal, ...] = (
    Signal("prompt_tokens", "integer", "tokens", 1, None, True, "prompt length"),
    Signal("slo_class", "string", "name", None, None, True, "one of " + ", ".join(SLO_CLASSES)),
    Signal("origin", "string", "name", None, None, True, "the region the request comes from"),
    Signal("model", "string", "name", None, None, True, "the model it needs"),
    Signal("residency", "boolean", "flag", None, None, True, "must be served in its origin region"),
    Signal("ttft_slo_s", "number", "s", 0.0, None, False, "TTFT SLO (> 0; default: the class's)"),
    Signal("tpot_slo_s", "number", "s", 0.0, None, False, "TPOT SLO (> 0; default: the class's)"),
    Signal("block_hashes", "array", "hashes", 0, 8192, False,
           "the prompt's block hashes in order, integers or strings: hash i names the prompt's whole "
           "prefix up to the end of block i (the router service matches them against its prefix index "
           "and records them at the endpoint it picks; default: none)"),
    Signal("block_size_tokens", "integer", "tokens", 1, 1 << 20, False,
           "prompt tokens per block hash (default 128, the simulated router's index entry)"),
)
HOUR_FIELD = Signal("hour_utc", "number", "h", 0.0, 24.0, False, "time of day in [0, 24); default: now")


# ---------------------------------------------------------------------------- errors, helpers
class InterfaceMismatchError(ValueError):
    """A policy recorded under another interface than the environment's (the message says what differs)."""


def action_mask(statics, feasible: np.ndarray) -> np.ndarray:
    """Flat MultiDiscrete mask: ``max_sites`` site slots + shed, then batch levels."""
    m = np.zeros(statics.max_sites + 1 + len(statics.batch_levels), dtype=bool)
    m[: statics.n_sites] = feasible
    m[statics.max_sites:] = True  # shedding and every batch level are always allowed
    return m


def _canonical(d: Any) -> str:
    return json.dumps(d, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _compile(expr: str, what: str):
    try:
        return compile(expr, f"<interface {what}>", "eval")
    except SyntaxError as err:
        raise ValueError(f"interface declaration {what}: invalid expression {expr!r} ({err})") from None


_NS = {"np": np, "math": math, "local_hour": local_hour}

try:  # the ufunc np.clip calls for float arrays, without its Python-level argument handling
    from numpy._core.umath import clip as _clip
except ImportError:  # numpy < 2
    from numpy.core.umath import clip as _clip


# ---------------------------------------------------------------------------- the interface
class Interface:
    """The observation and action interface of one scenario (its statics) in one mode.

    Build with :func:`make_interface` (cached per statics and mode). ``from_dict`` gives a
    declaration-only interface (for comparing a recorded one; it cannot encode).
    """

    def __init__(self, statics, mode: str = "slots") -> None:
        if mode not in _DECLARATIONS:
            raise ValueError(f"observation mode {mode!r}; known: {list(MODES)}")
        self.statics = statics
        self.mode = mode
        self.version = VERSIONS[mode]
        self.site_features, self.request_features = _DECLARATIONS[mode]
        self.max_sites = statics.max_sites
        self.batch_levels = tuple(int(b) for b in statics.batch_levels)
        self.vocabularies: dict[str, tuple[str, ...]] = {"slo_class": SLO_CLASSES}
        if mode == "slots":  # only the slots mode names the grid
            self.vocabularies["region"] = tuple(statics.region_names)
            self.vocabularies["model"] = tuple(statics.model_names)
        self._decl = self._declaration()
        self._build_encoder()

    def __reduce__(self):  # compiled code does not pickle: rebuild from the statics
        return (make_interface, (self.statics, self.mode))

    # -------------------------------------------------------------- declaration
    @property
    def n_site_features(self) -> int:
        return len(self.site_features)

    @property
    def request_size(self) -> int:
        return sum(len(self.vocabularies[f.vocab]) if f.vocab else 1 for f in self.request_features)

    @property
    def obs_size(self) -> int:
        return self.max_sites * self.n_site_features + self.request_size

    def _declaration(self) -> dict:
        slots = (list(self.statics.site_names) if self.mode == "slots" else [])
        return {
            "mode": self.mode,
            "version": self.version,
            "site_features": [asdict(f) for f in self.site_features],
            "request_features": [asdict(f) for f in self.request_features],
            "vocabularies": {k: list(v) for k, v in self.vocabularies.items()},
            "action": {
                "type": "MultiDiscrete",
                "nvec": [self.max_sites + 1, len(self.batch_levels)],
                "max_sites": self.max_sites,
                "site_slots": slots,
                "shed_index": self.max_sites,
                "batch_levels": list(self.batch_levels),
                "mask": "site slots (feasible flags; padding false), shed (true), batch levels (true)",
            },
            "obs_size": self.obs_size,
        }

    def to_dict(self) -> dict:
        """The declaration (JSON-ready); with :attr:`content_hash` it is what policies record."""
        return json.loads(_canonical(self._decl))

    @property
    def content_hash(self) -> str:
        """SHA-256 of the canonical JSON of :meth:`to_dict`."""
        return hashlib.sha256(_canonical(self._decl).encode()).hexdigest()

    def record(self) -> dict:
        """``{"version", "content_hash", "interface"}``: what a trained model or policy.json stores."""
        return {"version": self.version, "content_hash": self.content_hash, "interface": self.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "_RecordedInterface":
        return _RecordedInterface(d)

    def diff(self, other) -> list[str]:
        """What differs between `other` (the recorded one: an Interface or its dict) and this
        (the current one), one line each; empty when they are the same."""
        return diff_declarations(other if isinstance(other, dict) else other.to_dict(), self.to_dict())

    def feature_spec(self) -> list[dict]:
        """Every observation element in order: name, unit, scaling, source."""
        spec = []
        for slot in range(self.max_sites):
            for f in self.site_features:
                spec.append({"name": f"site[{slot}].{f.name}", "unit": f.unit, "scale": f.scaling,
                             "source": f.source})
        for f in self.request_features:
            if f.vocab:
                spec += [{"name": f"request.{f.name}={v}", "unit": "flag", "scale": "one-hot",
                          "source": f.source} for v in self.vocabularies[f.vocab]]
            else:
                spec.append({"name": f"request.{f.name}", "unit": f.unit, "scale": f.scaling, "source": f.source})
        return spec

    def __repr__(self) -> str:
        return f"Interface(mode={self.mode!r}, version={self.version!r}, obs_size={self.obs_size}, hash={self.content_hash[:12]})"

    # -------------------------------------------------------------- encoder
    def _build_encoder(self) -> None:
        """Compile the declarations into templates, scale rows and generated functions.

        Per decision the encoder copies the static template of the request's origin, gathers
        the signal rows in one conversion, scales and clips the site block in float64, and
        writes the request part with one generated function: a handful of numpy calls whatever
        the number of features (the encoder is on every decision's path)."""
        st = self.statics
        n, F = st.n_sites, self.n_site_features
        ns = dict(_NS, st=st)
        scale = np.ones((F, n))
        signal_rows: list[tuple[int, str]] = []
        request_rows: list[tuple[int, str]] = []
        request_div: list[tuple[int, str]] = []
        origin_rows: list[tuple[int, Any]] = []
        static = np.zeros((F, n))
        for i, f in enumerate(self.site_features):
            what = f"site feature {f.name!r}"
            code = _compile(f.source, what)
            if f.kind == "static":
                static[i] = np.broadcast_to(np.asarray(eval(code, ns), dtype=np.float64), (n,))
            elif f.kind == "origin":
                origin_rows.append((i, code))
            elif f.kind == "signal":
                attr = f.source.removeprefix("snap.")
                if attr == f.source or not attr.isidentifier():
                    raise ValueError(f"interface declaration {what}: a signal source is snap.<field>, got {f.source!r}")
                signal_rows.append((i, attr))
            elif f.kind == "request":
                request_rows.append((i, f.source))
            else:
                raise ValueError(f"interface declaration {what}: unknown kind {f.kind!r}")
            div = _compile(f.divide_by, f"{what} divide_by")
            if "req" in f.divide_by:
                request_div.append((i, f.divide_by))
            else:
                scale[i] = 1.0 / np.broadcast_to(np.asarray(eval(div, ns), dtype=np.float64), (n,))
        n_regions = len(st.region_names)
        template = np.repeat(static[None], n_regions, axis=0)
        for r in range(n_regions):
            req = _Origin(r)
            for i, code in origin_rows:
                template[r, i] = eval(code, dict(ns, req=req))
        self._template = template
        self._scale = scale
        # Signal rows: one generated function assigning each row from the snapshot (a row at a
        # time: converting a tuple of arrays of mixed dtypes at once costs several times more).
        gather = "def _gather(site, snap):\n" + "".join(f"    site[{i}] = snap.{a}\n" for i, a in signal_rows) + "    return site\n"
        # Per-request site rows (evaluated before scaling).
        if request_rows:
            body = [f"    site[{i}] = {src}" for i, src in request_rows]
            site_req = "def _site_request(site, snap, st, req):\n" + "\n".join(body) + "\n"
        else:
            site_req = ""
        # Per-request divisors: the scale matrix with those rows set to 1 / divisor (their static
        # scale is 1, so x * (1 / d) is what scaling then dividing gave), memoized per value.
        self._request_div_rows = [i for i, _ in request_div]
        if request_div:
            divisors = "def _divisors(snap, st, req):\n    return (" + "".join(f"{src}, " for _, src in request_div) + ")\n"
        else:
            divisors = ""
        self._scale_memo: dict = {}
        # The request part: scalars written in place, then one-hots at their offsets.
        lines = []
        sources: dict[str, str] = {}
        off = self.max_sites * F
        for f in self.request_features:
            if f.vocab:
                attr = f.source.removeprefix("req.")
                if attr == f.source or not attr.isidentifier():
                    raise ValueError(f"interface declaration request feature {f.name!r}: a one-hot source "
                                     f"is req.<field>, got {f.source!r}")
                lines.append(f"    out[{off} + req.{attr}] = 1.0")
                off += len(self.vocabularies[f.vocab])
            else:  # a source shared by several features (the local hour's sin and cos) is evaluated once
                if f.source not in sources:
                    sources[f.source] = f"x{len(sources)}"
                    lines.append(f"    {sources[f.source]} = {f.source}")
                lines.append(f"    x = {sources[f.source]}\n    out[{off}] = {f.transform}")
                off += 1
        request = "def _request(out, snap, st, req):\n" + "\n".join(lines or ["    pass"]) + "\n"
        env = dict(_NS)
        src = gather + site_req + divisors + request
        exec(compile(src, f"<interface {self.mode} encoder>", "exec"), env)
        self._gather = env["_gather"]
        self._site_request = env.get("_site_request")
        self._divisors = env.get("_divisors")
        self._request_fn = env["_request"]
        self._templates = [np.ascontiguousarray(t) for t in template]
        self._n_site_elems = n * F
        self._site_shape = (n, F)
        self._zero_obs = np.zeros(self.obs_size, dtype=np.float32)
        self._mask_template = action_mask(st, np.zeros(n, dtype=bool))
        self._n_sites = n

    def encode(self, snap, out: np.ndarray | None = None) -> np.ndarray:
        """The observation vector (float32) of a snapshot; `out` is reused when given."""
        req = snap.request
        st = snap.statics
        site = self._gather(self._templates[req.origin].copy(), snap)  # (features, sites), float64
        if self._site_request is not None:
            self._site_request(site, snap, st, req)
        site *= self._scale if self._divisors is None else self._request_scale(self._divisors(snap, st, req))
        _clip(site, 0.0, 1.0, out=site)
        if out is None:
            out = self._zero_obs.copy()
        else:
            out[:] = 0.0
        out[: self._n_site_elems].reshape(self._site_shape)[...] = site.T  # site by site, as float32
        self._request_fn(out, snap, st, req)
        return out

    def _request_scale(self, divisors: tuple) -> np.ndarray:
        """The scale matrix for a request's divisors (memoized when they are plain numbers)."""
        memo_ok = all(type(d) is float and d != 0.0 for d in divisors)
        if memo_ok:
            scale = self._scale_memo.get(divisors)
            if scale is not None:
                return scale
        scale = self._scale.copy()
        for i, d in zip(self._request_div_rows, divisors):
            scale[i] = 1.0 / d
        if memo_ok and len(self._scale_memo) < 1024:
            scale.flags.writeable = False
            self._scale_memo[divisors] = scale
        return scale

    def action_mask(self, snap) -> np.ndarray:
        """The flat action mask of a snapshot (see the ``action`` declaration)."""
        if snap.statics is not self.statics:
            return action_mask(snap.statics, snap.feasible)
        m = self._mask_template.copy()  # padding false, shed and batch levels true
        m[: self._n_sites] = snap.feasible
        return m


class _Origin:
    """A stand-in request for evaluating ``origin`` features per region."""

    __slots__ = ("origin",)

    def __init__(self, origin: int) -> None:
        self.origin = origin


class _RecordedInterface:
    """A declaration read back from a file: comparable, hashable, not an encoder."""

    def __init__(self, d: dict) -> None:
        if not isinstance(d, dict) or "mode" not in d or "version" not in d:
            raise InterfaceMismatchError(f"not an interface declaration: {str(d)[:80]}")
        self._d = json.loads(_canonical(d))
        self.mode, self.version = d["mode"], d["version"]

    def to_dict(self) -> dict:
        return json.loads(_canonical(self._d))

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(_canonical(self._d).encode()).hexdigest()

    def diff(self, other) -> list[str]:
        """As :meth:`Interface.diff`: `other` is taken as the recorded one."""
        return diff_declarations(other if isinstance(other, dict) else other.to_dict(), self._d)


def make_interface(statics, mode: str = "slots") -> Interface:
    """The interface of `statics` in `mode`, cached on the (frozen) statics object."""
    cache = statics.__dict__.get("_interfaces")
    if cache is None:
        cache = {}
        object.__setattr__(statics, "_interfaces", cache)
    iface = cache.get(mode)
    if iface is None:
        iface = cache[mode] = Interface(statics, mode)
    return iface


# ---------------------------------------------------------------------------- comparison
def _diff_features(kind: str, a: list, b: list) -> list[str]:
    out = []
    an, bn = [f.get("name") for f in a], [f.get("name") for f in b]
    for name in an:
        if name not in bn:
            out.append(f"{kind} {name!r} removed (recorded has it, current does not)")
    for name in bn:
        if name not in an:
            out.append(f"{kind} {name!r} added (current has it, recorded does not)")
    common = [n for n in an if n in bn]
    if [n for n in bn if n in an] != common:
        out.append(f"{kind} order differs: recorded {an}, current {bn}")
    for name in common:
        fa, fb = a[an.index(name)], b[bn.index(name)]
        for key in sorted(set(fa) | set(fb)):
            if fa.get(key) != fb.get(key):
                out.append(f"{kind} {name!r}: {key} recorded {fa.get(key)!r}, current {fb.get(key)!r}")
    return out


def diff_declarations(recorded: dict, current: dict) -> list[str]:
    """Human-readable differences between two interface declarations (empty: identical)."""
    out = []
    for key in ("mode", "version"):
        if recorded.get(key) != current.get(key):
            out.append(f"{key}: recorded {recorded.get(key)!r}, current {current.get(key)!r}")
    out += _diff_features("site feature", recorded.get("site_features", []), current.get("site_features", []))
    out += _diff_features("request feature", recorded.get("request_features", []), current.get("request_features", []))
    va, vb = recorded.get("vocabularies", {}), current.get("vocabularies", {})
    for name in sorted(set(va) | set(vb)):
        a, b = va.get(name), vb.get(name)
        if a == b:
            continue
        if a is None or b is None:
            out.append(f"vocabulary {name!r}: recorded {a!r}, current {b!r}")
            continue
        extra, missing = [v for v in b if v not in a], [v for v in a if v not in b]
        parts = []
        if missing:
            parts.append(f"entries {missing} only in recorded")
        if extra:
            parts.append(f"entries {extra} only in current")
        if not parts:
            parts.append(f"order recorded {a}, current {b}")
        out.append(f"vocabulary {name!r}: " + "; ".join(parts))
    aa, ab = recorded.get("action", {}), current.get("action", {})
    for key in sorted(set(aa) | set(ab)):
        if aa.get(key) != ab.get(key):
            out.append(f"action {key}: recorded {aa.get(key)!r}, current {ab.get(key)!r}")
    if recorded.get("obs_size") != current.get("obs_size"):
        out.append(f"obs_size: recorded {recorded.get('obs_size')}, current {current.get('obs_size')}")
    if not out and _canonical(recorded) != _canonical(current):
        out.append("declarations differ outside the compared sections")
    return out


def check_compatible(recorded: dict, current, what: str = "policy") -> None:
    """Raise :class:`InterfaceMismatchError` unless `recorded` (an :meth:`Interface.record`, or a
    bare declaration) is the `current` interface; the message names every difference."""
    if not isinstance(recorded, dict):
        raise InterfaceMismatchError(f"{what}: no interface record (expected an object, got {type(recorded).__name__})")
    decl = recorded.get("interface", recorded)
    if not isinstance(decl, dict):
        raise InterfaceMismatchError(f"{what}: interface record is malformed")
    want_hash = recorded.get("content_hash")
    cur = current.to_dict()
    diffs = diff_declarations(decl, cur)
    if not diffs and want_hash is not None and want_hash != current.content_hash:
        diffs = [f"content_hash recorded {str(want_hash)[:16]}..., the recorded declaration hashes to "
                 f"{current.content_hash[:16]}... (the record was edited)"]
    if diffs:
        raise InterfaceMismatchError(
            f"{what} was made for observation interface {decl.get('version')!r} "
            f"({str(want_hash or '?')[:12]}), the environment encodes {current.version!r} "
            f"({current.content_hash[:12]}): " + "; ".join(diffs))
