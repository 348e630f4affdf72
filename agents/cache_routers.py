"""Cache-aware baselines: the prefix-cache routers that production deployments run in 2026.

Each class follows its router's own source at a stated commit (cited in its docstring), with
that router's defaults, and maps the router's per-pod signals to what gridenv's
:class:`~gridenv.core.snapshot.RouterSnapshot` offers per site:

* **prefix match, precise** (the router reads the engines' KV events): ``prefix_cached_frac``,
  the fraction of the prompt cached at the replica the site's balancer would use;
* **prefix match, approximate** (the router remembers which prefixes it sent where: hash tables,
  radix trees, hash tries): ``prefix_indexed_frac``, from gridenv's bounded LRU index of routed
  prompts (:mod:`gridenv.core.prefix_index`);
* **a pod's load** (in-flight requests the gateway counts, a replica's queue length): the site's
  ``waiting + running`` divided by its replicas, so that the routers' per-pod thresholds
  (64, 10, 8 requests ...) keep their meaning on sites of different sizes
  (:func:`~agents.heuristic_base.per_replica`);
* **waiting queue** (vLLM's ``num_requests_waiting``): ``waiting / replicas``; **KV
  utilization**: ``kv_util``; **active prefill tokens**: ``queued_prompt_tokens / replicas``.

A site stands for one endpoint of the router: the routers pick a pod, gridenv's router picks a
site whose balancer then picks the replica (the one whose cache the precise signal reads).
"Ready"/"healthy" endpoints are the feasible sites. Where a router breaks ties at random, these
classes break them like the other heuristics (smaller predicted TTFT, then lower index), so a
decision is a function of the snapshot, except where the randomness is the rule itself
(vLLM production-stack's choice among equal matches, Ray's power-of-two fallback, Dynamo's
softmax at a temperature > 0); those draw from the generator seeded in ``reset(seed)``.

Importing this module never imports torch.
"""

from __future__ import annotations

import math

import numpy as np

from agents.heuristic_base import (
    Heuristic,
    best_site,
    outstanding,
    per_replica,
    rank_scores,
    unit_scores,
)
from gridenv.core.snapshot import RouterSnapshot

__all__ = [
    "CACHE_ROUTERS", "LlmdPrecise", "LlmdApprox", "DynamoKv", "SglangCacheAware",
    "VllmPsPrefix", "RayPrefix", "AibrixPrefix",
]


def _pod_load(snap: RouterSnapshot) -> np.ndarray:
    """In-flight requests per replica (a gateway's per-pod request count)."""
    return per_replica(snap, outstanding(snap))


def _cache_footprint_tokens(snap: RouterSnapshot) -> np.ndarray:
    """Stand-in for the size of a worker's entry in a router's approximate prefix tree: tokens
    a replica holds in KV plus the prompt tokens queued for it or in transit. Like the tree, it
    grows the moment the router sends a prompt (``kv_util`` alone lags by the transit and the
    queue, and following it herds requests onto one site)."""
    cap = np.asarray(snap.statics.kv_capacity_tokens, dtype=np.float64)
    return snap.kv_util * cap + per_replica(snap, snap.queued_prompt_tokens)


def _order(snap: RouterSnapshot, *keys: np.ndarray, among: np.ndarray | None = None) -> np.ndarray:
    """Sites of `among` (default: feasible) sorted by `keys` (first key most significant, each
    ascending), then by predicted TTFT, then index."""
    cand = np.flatnonzero(snap.feasible if among is None else among)
    cols = [cand, snap.ttft_pred_s[cand]] + [np.asarray(k, dtype=np.float64)[cand] for k in reversed(keys)]
    return cand[np.lexsort(cols)]


# ---------------------------------------------------------------------------- llm-d
class _LlmdWeighted(Heuristic):
    """llm-d's weighted scorers and max-score picker (shared by the precise and approximate
    profiles); see the subclasses for the weights and the prefix signal."""

    PREFIX_WEIGHT = 0.0
    KV_WEIGHT = 0.0
    QUEUE_WEIGHT = 0.0

    def prefix_match(self, snap: RouterSnapshot) -> np.ndarray:
        raise NotImplementedError

    def raw_scores(self, snap: RouterSnapshot) -> np.ndarray:
        """``w_prefix * prefix + w_kv * (1 - kv_util) + w_queue * queue_score`` per site, with
        ``queue_score = (maxQ - Q) / (maxQ - minQ)`` over the feasible sites (1 when all equal)."""
        f = snap.feasible
        q = per_replica(snap, snap.waiting)
        queue_score = np.ones(len(q))
        if f.any():
            qmax, qmin = float(q[f].max()), float(q[f].min())
            if qmax > qmin:
                queue_score = (qmax - q) / (qmax - qmin)
        return (self.PREFIX_WEIGHT * self.prefix_match(snap) + self.KV_WEIGHT * (1.0 - snap.kv_util)
                + self.QUEUE_WEIGHT * queue_score)

    def choose(self, snap):
        return best_site(-self.raw_scores(snap), snap)

    def site_scores(self, snapshot):
        total = self.PREFIX_WEIGHT + self.KV_WEIGHT + self.QUEUE_WEIGHT
        s = np.clip(self.raw_scores(snapshot) / total, 0.0, 1.0)
        return np.where(snapshot.feasible, 0.1 + 0.9 * s, 0.0)


class LlmdPrecise(_LlmdWeighted):
    """llm-d inference scheduler, precise prefix-cache profile, with its saturation admission.

    Source: llm-d/llm-d-inference-scheduler, tag v0.8.0 (05c91f0) and main at 520af47:
    ``deploy/config/epp-precise-prefix-cache-config.yaml`` (profile ``default``:
    ``precise-prefix-cache-scorer`` weight 2.0, ``kv-cache-utilization-scorer`` 1.0,
    ``queue-scorer`` 1.0, ``max-score-picker``); the scorers in
    ``pkg/epp/framework/plugins/scheduling/scorer/``: ``preciseprefixcache/utils.go``
    (``absoluteScoredPods``: matched blocks / request blocks, clipped to [0, 1], from the KV
    events of the engines), ``kvcacheutilization`` (``1 - KVCacheUsagePercent``),
    ``queuedepth/queue.go`` (``(maxQ - Q) / (maxQ - minQ)`` over the candidates, 1 when equal).

    gridenv: prefix = ``prefix_cached_frac`` (precise), Q = ``waiting / replicas``, KV =
    ``kv_util``; the decode filter has nothing to filter (no P/D split). Admission: on by
    default, :mod:`agents.admission` (llm-d's saturation detector defaults: queue 5, KV 0.8;
    every request treated as sheddable). Ambiguous: the max-score picker breaks ties at random;
    here by predicted TTFT then index. The 2026 "sticky until saturated" profile of the llm-d
    blog is not in the stored source, so the weighted profile of the shipped config is followed.
    """

    name = "llmd-precise"
    PREFIX_WEIGHT = 2.0
    KV_WEIGHT = 1.0
    QUEUE_WEIGHT = 1.0
    admission_default = True

    def prefix_match(self, snap):
        return snap.prefix_cached_frac


class LlmdApprox(_LlmdWeighted):
    """llm-d inference scheduler, the built-in default profile with its approximate prefix scorer.

    Source: llm-d/llm-d-inference-scheduler at 520af47, ``pkg/epp/config/loader/defaults.go``
    (the profile used when the config names none: ``queue-scorer`` weight 2,
    ``kv-cache-utilization-scorer`` 2, ``prefix-cache-scorer`` 3, max-score picker) and
    ``pkg/epp/framework/plugins/scheduling/scorer/prefix/plugin.go`` (score = matched blocks /
    total blocks of the request, from the scheduler's own LRU index of where it sent which
    block hashes). This is the ``llm-d`` heuristic plus its prefix term.

    gridenv: prefix = ``prefix_indexed_frac`` (approximate), Q = ``waiting / replicas`` (the
    cache-blind ``llm-d`` heuristic keeps the site total), KV = ``kv_util``. No admission by
    default (the saturation detector is a separate plugin; ``admission=True`` adds it).
    """

    name = "llmd-approx"
    PREFIX_WEIGHT = 3.0
    KV_WEIGHT = 2.0
    QUEUE_WEIGHT = 2.0

    def prefix_match(self, snap):
        return snap.prefix_indexed_frac


# ---------------------------------------------------------------------------- Dynamo
class DynamoKv(Heuristic):
    """NVIDIA Dynamo's KV router: the least KV cost, or softmax sampling at a temperature.

    Source: ai-dynamo/dynamo, ``lib/kv-router/src/scheduling/selector/default.rs`` (07a6c9c,
    ``worker_logit``, ``softmax_sample_index``) and ``lib/kv-router/src/scheduling/config.rs``
    (0243c51, ``KvRouterConfig::default``: ``overlap_score_credit`` 1.0,
    ``prefill_load_scale`` 1.0, ``router_temperature`` 0.0, ``use_kv_events`` true,
    ``router_track_prefill_tokens`` true; ``overlap_score_credit_decay`` and
    ``decode_active_request_weight`` default to 0, per docs/router configuration). The cost of a
    worker, in KV blocks of ``B`` tokens::

        raw_prefill = (active_prefill_tokens + ISL) / B
        cost = prefill_load_scale * max(0, raw_prefill - overlap_score_credit * cached_blocks)
             + active_decode_blocks + request_blocks

    (the older releases' ``overlap_score_weight * prefill_blocks + decode_blocks``, the same with
    weight 1). Temperature 0: the least cost. Temperature T > 0: sample with probability
    proportional to ``exp(-(cost - min) / ((max - min) * T))`` (Dynamo normalizes the costs by
    their range; uniform when all are equal).

    gridenv: ``active_prefill_tokens`` = ``queued_prompt_tokens / replicas`` (prompt tokens sent
    to the site and not yet in a batch), ``cached_blocks`` = ``prefix_cached_frac * ISL / B``
    (precise: KV events), ``active_decode_blocks`` = ``kv_util * kv_capacity_tokens / B`` of a
    replica, ``request_blocks`` = ``ISL / B``. ``B`` = 16 (vLLM's block size); the argmin and
    the range-normalized softmax do not depend on it. Ambiguous: Dynamo breaks exact ties at
    random; here by predicted TTFT then index. Dynamo's router-side queue
    (``router_queue_threshold``) delays requests, it never sheds: no admission by default.

    Args:
        temperature: the router temperature (default 0.0, Dynamo's default).
    """

    name = "dynamo-kv"
    BLOCK_TOKENS = 16
    OVERLAP_SCORE_CREDIT = 1.0
    PREFILL_LOAD_SCALE = 1.0

    def __init__(self, level: int | None = None, temperature: float = 0.0, **gate) -> None:
        super().__init__(level, **gate)
        if not (temperature >= 0.0 and math.isfinite(temperature)):
            raise ValueError(f"dynamo-kv: temperature must be a finite number >= 0, got {temperature!r}")
        self.temperature = float(temperature)
        self.randomized = self.temperature > 0.0

    def cost_blocks(self, snap: RouterSnapshot) -> np.ndarray:
        """The KV cost of each site, in blocks (lower is better)."""
        b = float(self.BLOCK_TOKENS)
        isl = float(snap.request.prompt_tokens)
        raw_prefill = (per_replica(snap, snap.queued_prompt_tokens) + isl) / b
        cached_blocks = snap.prefix_cached_frac * isl / b
        prefill = self.PREFILL_LOAD_SCALE * np.maximum(raw_prefill - self.OVERLAP_SCORE_CREDIT * cached_blocks, 0.0)
        decode = snap.kv_util * np.asarray(snap.statics.kv_capacity_tokens, dtype=np.float64) / b + isl / b
        return prefill + decode

    def probabilities(self, snap: RouterSnapshot) -> np.ndarray:
        """Pick probability per site at the router temperature (0 for infeasible sites)."""
        p = np.zeros(snap.statics.n_sites)
        cand = np.flatnonzero(snap.feasible)
        if len(cand) == 0:
            return p
        if self.temperature <= 0.0:
            p[self.choose(snap)] = 1.0
            return p
        c = self.cost_blocks(snap)[cand]
        lo, hi = float(c.min()), float(c.max())
        if hi <= lo:
            p[cand] = 1.0 / len(cand)
            return p
        w = np.exp(-(c - lo) / ((hi - lo) * self.temperature))
        p[cand] = w / w.sum()
        return p

    def choose(self, snap):
        if self.temperature <= 0.0:
            return best_site(self.cost_blocks(snap), snap)
        cand = np.flatnonzero(snap.feasible)
        if len(cand) == 0:
            return None
        p = self.probabilities(snap)[cand]
        return int(self._rng.choice(cand, p=p))

    def site_scores(self, snapshot):
        return unit_scores(-self.cost_blocks(snapshot), snapshot.feasible)


# ---------------------------------------------------------------------------- SGLang
class SglangCacheAware(Heuristic):
    """SGLang model gateway (sgl-router), ``cache_aware`` policy.

    Source: sgl-project/sglang, ``sgl-router/src/policies/cache_aware.rs`` (026f853,
    ``select_worker``) with the defaults of the router's launcher,
    ``sgl-model-gateway/bindings/python/src/sglang_router/router_args.py``
    (``cache_threshold`` 0.3, ``balance_abs_threshold`` 64, ``balance_rel_threshold`` 1.5).
    The rule: the load is imbalanced when ``max - min > 64`` and ``max > 1.5 * min`` (loads =
    the router's in-flight requests per worker); then the least loaded worker. Otherwise the
    worker with the longest prefix match in the router's approximate radix tree, when the match
    rate exceeds 0.3; below it the worker with the smallest tree.

    gridenv: load = ``(waiting + running) / replicas``; match = ``prefix_indexed_frac``
    (approximate). Ambiguous or missing: (1) the Rust library's own ``CacheAwareConfig::default``
    says 0.5 / 32 / 1.1; the launcher's values are the ones a deployment gets, so those are
    used. (2) The tree size per worker is not in the snapshot; the smallest cache footprint per
    replica (tokens in KV plus prompt tokens queued or in transit, which grows as soon as a prompt
    is sent, like the tree) stands in for it. (3) SGLang takes the loads of all workers and
    falls back to the first healthy one when the best match is unhealthy; here loads and
    matches are taken over the feasible sites only.
    """

    name = "sglang-cache"
    CACHE_THRESHOLD = 0.3
    BALANCE_ABS_THRESHOLD = 64
    BALANCE_REL_THRESHOLD = 1.5

    def imbalanced(self, snap: RouterSnapshot) -> bool:
        f = snap.feasible
        if not f.any():
            return False
        load = _pod_load(snap)[f]
        hi, lo = float(load.max()), float(load.min())
        return hi - lo > self.BALANCE_ABS_THRESHOLD and hi > lo * self.BALANCE_REL_THRESHOLD

    def _order(self, snap):
        if self.imbalanced(snap):
            return _order(snap, _pod_load(snap))
        match = snap.prefix_indexed_frac
        f = snap.feasible
        if f.any() and float(match[f].max()) > self.CACHE_THRESHOLD:
            return _order(snap, -match)
        return _order(snap, _cache_footprint_tokens(snap))

    def choose(self, snap):
        order = self._order(snap)
        return int(order[0]) if len(order) else None

    def site_scores(self, snapshot):
        return rank_scores(self._order(snapshot), snapshot.statics.n_sites)


# ---------------------------------------------------------------------------- vLLM production-stack
class VllmPsPrefix(Heuristic):
    """vLLM production-stack router, ``prefixaware`` routing logic.

    Source: vllm-project/production-stack at a6c01db (vllm-stack-0.1.12-14),
    ``src/vllm_router/routers/routing_logic.py`` (``PrefixAwareRouter.route_request``) and
    ``src/vllm_router/prefix/hashtrie.py`` (``longest_prefix_match``): the longest prefix match
    in a hash trie of the prompts the router has sent, among the available endpoints, then a
    uniformly random endpoint among those sharing that longest match (every endpoint when
    nothing matches). ``prefix_min_match_length`` defaults to 0, so the QPS fallback never runs.

    gridenv: match = ``prefix_indexed_frac`` (approximate). Differences: the source's trie never
    evicts, gridenv's index is a bounded LRU. ``shared/reference/routers.md`` summarizes this
    router as "match - beta x relative load"; the source at that commit has no load term (the
    code was followed).
    """

    name = "vllm-ps-prefix"
    randomized = True

    def _best_matches(self, snap) -> np.ndarray:
        cand = np.flatnonzero(snap.feasible)
        if len(cand) == 0:
            return cand
        m = snap.prefix_indexed_frac[cand]
        return cand[m == m.max()]

    def choose(self, snap):
        best = self._best_matches(snap)
        return int(self._rng.choice(best)) if len(best) else None

    def site_scores(self, snapshot):
        return unit_scores(snapshot.prefix_indexed_frac, snapshot.feasible)


# ---------------------------------------------------------------------------- Ray Serve
class RayPrefix(Heuristic):
    """Ray Serve LLM ``PrefixCacheAffinityRouter``.

    Source: ray-project/ray at ef82d1d,
    ``python/ray/llm/_internal/serve/routing_policies/prefix_aware/prefix_aware_router.py``
    (``initialize_state`` defaults ``imbalanced_threshold`` 10, ``match_rate_threshold`` 0.1;
    ``_prefix_match_best_replicas``, ``choose_replicas``): when the replicas' queue lengths
    differ by more than 10, the power-of-two-choices fallback (two random replicas, the shorter
    queue); otherwise the replicas with the highest prefix match rate when it is at least 0.1,
    else the "smallest tenants" ("replicas with smallest KV cache usage"), and among the chosen
    replicas the one with the shortest queue.

    gridenv: queue length = ``(waiting + running) / replicas``; match = ``prefix_indexed_frac``
    (the router's approximate prefix tree); smallest tenants = the sites with the smallest cache
    footprint per replica (tokens in KV plus prompt tokens queued or in transit: the tree size is
    not in the snapshot; the source's docstring describes it as "smallest KV cache usage"). Left out: the locality and multiplex tiers applied before the prefix match
    (``apply_locality_routing`` prefers same-node / same-zone replicas); gridenv's locality
    heuristics cover that separately.
    """

    name = "ray-prefix"
    randomized = True
    IMBALANCED_THRESHOLD = 10
    MATCH_RATE_THRESHOLD = 0.1

    def imbalanced(self, snap) -> bool:
        f = snap.feasible
        if not f.any():
            return False
        q = _pod_load(snap)[f]
        return float(q.max()) - float(q.min()) > self.IMBALANCED_THRESHOLD

    def _chosen(self, snap) -> np.ndarray:
        """The balanced branch's candidate sites (highest match, or least KV use)."""
        f = snap.feasible
        m = snap.prefix_indexed_frac
        if float(m[f].max()) >= self.MATCH_RATE_THRESHOLD:
            return f & (m == m[f].max())
        size = _cache_footprint_tokens(snap)
        return f & (size == size[f].min())

    def choose(self, snap):
        cand = np.flatnonzero(snap.feasible)
        if len(cand) == 0:
            return None
        load = _pod_load(snap)
        if self.imbalanced(snap):
            if len(cand) == 1:
                return int(cand[0])
            a, b = self._rng.choice(cand, size=2, replace=False)
            return int(b) if load[b] < load[a] else int(a)
        return best_site(load, snap, self._chosen(snap))

    def site_scores(self, snapshot):
        if not snapshot.feasible.any() or self.imbalanced(snapshot):
            return unit_scores(-_pod_load(snapshot), snapshot.feasible)
        chosen = self._chosen(snapshot)
        order = _order(snapshot, ~chosen, _pod_load(snapshot))
        return rank_scores(order, snapshot.statics.n_sites)


# ---------------------------------------------------------------------------- AIBrix
class AibrixPrefix(Heuristic):
    """AIBrix gateway ``prefix-cache`` routing algorithm.

    Source: vllm-project/aibrix at e3e10f9 (v0.7.0-156),
    ``pkg/plugins/gateway/algorithms/prefix_cache.go`` (``routeOriginal``,
    ``getTargetPodListOnLoadImbalance``, ``getTargetPodFromMatchedPods``; defaults
    ``defaultPodRunningRequestImbalanceAbsCount`` 8, ``defaultStandardDeviationFactor`` 1) and
    ``least_request.go``. The rule: when the pods' running requests differ by more than 8 (max -
    min), only the least loaded pods are considered. Among the considered pods, those with a
    prefix match are sorted by match percent (descending), then running requests (ascending);
    the first whose running requests are at most ``mean + 1 * std`` of all ready pods wins.
    Otherwise (no match, or none within the bound) the least-request pod.

    gridenv: running requests = the gateway's in-flight count, ``(waiting + running) /
    replicas``; match percent = ``floor(100 * prefix_indexed_frac)`` (approximate: the
    gateway's prefix hash table of routed prompts; the KV-event sync mode is off by default).
    Ambiguous: ``prefix_cache_readme.md`` at the same commit documents defaults 16 and 2; the
    code's 8 and 1 are used. AIBrix shuffles equal candidates at random; here ties go by
    predicted TTFT then index. Pods with a 0 % match (a match below 1 %) count as unmatched.
    """

    name = "aibrix-prefix"
    IMBALANCE_ABS_COUNT = 8
    STANDARD_DEVIATION_FACTOR = 1

    def _order(self, snap) -> np.ndarray:
        f = snap.feasible
        if not f.any():
            return np.flatnonzero(f)
        load = _pod_load(snap)
        considered = f.copy()
        lo = float(load[f].min())
        if float(load[f].max()) - lo > self.IMBALANCE_ABS_COUNT:
            considered &= load == lo
        pct = np.floor(100.0 * snap.prefix_indexed_frac + 1e-9)
        matched = considered & (pct > 0)
        bound = float(load[f].mean()) + self.STANDARD_DEVIATION_FACTOR * float(load[f].std())
        winners = _order(snap, -pct, load, among=matched & (load <= bound))
        if len(winners) == 0:
            return _order(snap, load)  # least-request fallback
        rest = f.copy()
        rest[winners[0]] = False
        return np.concatenate([winners[:1], _order(snap, load, among=rest)])

    def choose(self, snap):
        order = self._order(snap)
        return int(order[0]) if len(order) else None

    def site_scores(self, snapshot):
        return rank_scores(self._order(snapshot), snapshot.statics.n_sites)


#: The cache-aware routers, in leaderboard order.
CACHE_ROUTERS: tuple[type[Heuristic], ...] = (
    LlmdPrecise, LlmdApprox, DynamoKv, SglangCacheAware, VllmPsPrefix, RayPrefix, AibrixPrefix,
)
