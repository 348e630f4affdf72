"""The base of every heuristic baseline: score helpers, tie-breaking and the admission gate.

Split from :mod:`agents.heuristics` so that the cache-aware routers
(:mod:`agents.cache_routers`) and the 2024-era ones (:mod:`agents.heuristics`) share one
base without an import circle; :mod:`agents.heuristics` holds the registry of both. The
conventions (scores in [0.1, 1] for feasible sites, ties by predicted TTFT then site index,
randomness seeded in ``reset``) are described in :mod:`agents.heuristics`.

Importing this module never imports torch.
"""

from __future__ import annotations

import numpy as np

from agents.admission import SATURATION_RULES, gateway_saturated
from agents.policy import Policy
from gridenv.core.snapshot import RouterSnapshot

__all__ = [
    "Heuristic", "SCORE_FLOOR", "headroom_s", "outstanding", "per_replica",
    "unit_scores", "rank_scores", "best_site",
]

#: Feasible sites score in [SCORE_FLOOR, 1]; infeasible ones score 0.
SCORE_FLOOR = 0.1
_POLICY_STREAM = 0x5EED


# ---------------------------------------------------------------------------- score helpers
def unit_scores(pref: np.ndarray, feasible: np.ndarray) -> np.ndarray:
    """Min-max rescale a higher-is-better preference over the feasible sites to [0.1, 1]."""
    out = np.zeros(len(feasible), dtype=np.float64)
    if not feasible.any():
        return out
    p = np.asarray(pref, dtype=np.float64)[feasible]
    lo, hi = float(p.min()), float(p.max())
    span = hi - lo
    out[feasible] = 1.0 if span <= 0.0 else SCORE_FLOOR + (1.0 - SCORE_FLOOR) * (p - lo) / span
    return np.clip(out, 0.0, 1.0, out=out)  # rounding may overshoot 1 by an ulp


def rank_scores(order: np.ndarray, n_sites: int) -> np.ndarray:
    """Scores from a preference order of feasible sites (best first): 1 down to 0.1 linearly."""
    out = np.zeros(n_sites, dtype=np.float64)
    k = len(order)
    if k == 1:
        out[order[0]] = 1.0
    elif k > 1:
        out[order] = 1.0 - (1.0 - SCORE_FLOOR) * np.arange(k) / (k - 1)
    return np.clip(out, 0.0, 1.0, out=out)


def best_site(key: np.ndarray, snap: RouterSnapshot, candidates: np.ndarray | None = None) -> int | None:
    """Index minimizing ``key`` among candidate sites (default: feasible), ties by TTFT then index."""
    cand = np.flatnonzero(snap.feasible if candidates is None else candidates)
    if len(cand) == 0:
        return None
    order = np.lexsort((cand, snap.ttft_pred_s[cand], np.asarray(key, dtype=np.float64)[cand]))
    return int(cand[order[0]])


def headroom_s(snap: RouterSnapshot) -> np.ndarray:
    """Predicted TTFT headroom per site, in seconds: ``ttft_slo_s - ttft_pred_s``."""
    return snap.request.ttft_slo_s - snap.ttft_pred_s


def outstanding(snap: RouterSnapshot) -> np.ndarray:
    """Outstanding requests per site: ``waiting + running``."""
    return snap.waiting + snap.running


def per_replica(snap: RouterSnapshot, x: np.ndarray) -> np.ndarray:
    """A site total as the mean per replica (what one engine pod of the site carries): pod-level
    thresholds of the production routers apply to these."""
    return np.asarray(x, dtype=np.float64) / np.asarray(snap.statics.replicas, dtype=np.float64)


# ---------------------------------------------------------------------------- base class
class Heuristic(Policy):
    """A snapshot-only routing rule: subclasses implement :meth:`choose` and :meth:`site_scores`.

    Args:
        level: batching level index to request at the chosen site; ``None`` (default) keeps the
            site's current level.
        core_level: the level index to request instead when the chosen site is a core site
            (``kind: core``); ``None`` (default): ``level`` everywhere.
        admission: put the saturation gate of :mod:`agents.admission` in front of the rule
            (shed, HTTP 429, when the pool is saturated); ``None`` takes the class default
            (``admission_default``: True for the ``+admit`` variants and ``llmd-precise``).
        saturation_rule: ``"all"`` (every candidate site saturated) or ``"mean"`` (mean
            saturation >= 1), see :func:`agents.admission.gateway_saturated`.
    """

    name = "heuristic"
    #: True for heuristics that draw random numbers.
    randomized = False
    #: Whether the saturation gate is on when the constructor does not say.
    admission_default = False
    #: True for rules that may shed while a site is still feasible (the gate, SLO admitters).
    may_shed = False

    def __init__(self, level: int | None = None, *, core_level: int | None = None,
                 admission: bool | None = None, saturation_rule: str = "all") -> None:
        self.level = level
        self.core_level = core_level
        self.admission = type(self).admission_default if admission is None else bool(admission)
        if saturation_rule not in SATURATION_RULES:
            raise ValueError(f"saturation_rule {saturation_rule!r}: expected one of {SATURATION_RULES}")
        self.saturation_rule = saturation_rule
        if self.admission:
            self.may_shed = True
        self._rng = np.random.default_rng([0, _POLICY_STREAM])

    def reset(self, seed: int | None = None) -> None:
        self._rng = np.random.default_rng(None if seed is None else [int(seed), _POLICY_STREAM])

    def choose(self, snap: RouterSnapshot) -> int | None:
        """The chosen site index, or ``None`` to shed. Must return a feasible site."""
        raise NotImplementedError

    def site_scores(self, snap: RouterSnapshot) -> np.ndarray:
        """Scores of the real sites (length ``n_sites``); :meth:`scores` pads them."""
        raise NotImplementedError

    def sheds(self, snap: RouterSnapshot) -> bool:
        """True when the admission gate (if on) rejects the request before routing."""
        return self.admission and gateway_saturated(snap, self.saturation_rule)

    def scores(self, obs: np.ndarray | None, snapshot: RouterSnapshot) -> np.ndarray:
        """A score in [0, 1] per site slot (``max_sites``), 0 for infeasible and padding slots."""
        out = np.zeros(snapshot.statics.max_sites, dtype=np.float64)
        out[: snapshot.statics.n_sites] = self.site_scores(snapshot)
        return out

    def act(self, obs: np.ndarray | None, snapshot: RouterSnapshot) -> np.ndarray:
        st = snapshot.statics
        site = None if self.sheds(snapshot) else self.choose(snapshot)
        if site is None or not snapshot.feasible[site]:  # the second is a bug guard: shed
            return np.array([st.max_sites, len(st.batch_levels) // 2], dtype=np.int64)
        if self.core_level is not None and not st.is_edge[site]:
            level = int(self.core_level)
        else:
            level = int(snapshot.batch_level[site]) if self.level is None else int(self.level)
        return np.array([site, level], dtype=np.int64)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, level={self.level!r}, "
                f"admission={self.admission!r})")
