"""The saturation gate of a production gateway: shed (HTTP 429) when the pool is saturated.

Followed: llm-d's saturation detector and admission controller, with their defaults.

* ``"all"`` (default): the rule of the Gateway API Inference Extension's saturation detector
  that llm-d's inference scheduler runs (kubernetes-sigs/gateway-api-inference-extension,
  ``pkg/epp/saturationdetector/saturationdetector.go`` at commit 45e59d0, ``IsSaturated``):
  the pool is saturated when *no* candidate endpoint has "good capacity", that is
  ``WaitingQueueSize <= QueueDepthThreshold`` and ``KVCacheUsagePercent <=
  KVCacheUtilThreshold`` (defaults 5 requests and 0.8).
* ``"mean"``: the utilization detector of llm-d's own tree since mid-2026
  (llm-d/llm-d-inference-scheduler at 520af47, ``pkg/epp/framework/plugins/flowcontrol/
  saturationdetector/utilization/{config.go,detector.go}``): per endpoint
  ``max(queue / 5, kv / 0.8)``, averaged over the candidate endpoints, saturated at >= 1.0
  (``pkg/epp/requestcontrol/admission.go``, ``rejectIfSheddableAndSaturated``). One very
  loaded endpoint can push the mean past 1 while another still has room.

Mapping to gridenv (a site is a pool of ``replicas`` engines behind the site's own balancer):
an endpoint is a replica, whose queue is the site's ``waiting / replicas`` (requests sent and not
yet running, in transit included: what the gateway knows) and whose KV use is the site's
``kv_util``; the mean weighs each site by its replicas (an unweighted mean over endpoints). The
candidates are the sites that are up and serve the request's model (and its region, for a
residency-bound request); a down site has no endpoints (Kubernetes removes them), where llm-d
would count stale metrics as saturated.

Ambiguity and choice: llm-d rejects only *sheddable* requests (``InferenceObjective`` priority
< 0; the default priority 0 is never shed). gridenv has no priorities, so every request is
treated as sheddable: otherwise the gate never acts. The llm-d defaults also include a 200 ms
metrics staleness threshold; gridenv's snapshot is always fresh.

Importing this module never imports torch.
"""

from __future__ import annotations

import numpy as np

from gridenv.core.snapshot import RouterSnapshot

__all__ = ["QUEUE_DEPTH_THRESHOLD", "KV_CACHE_UTIL_THRESHOLD", "SATURATION_RULES",
           "candidate_sites", "endpoint_saturation", "gateway_saturated"]

#: llm-d / GIE saturation detector defaults (``DefaultQueueDepthThreshold``,
#: ``DefaultKVCacheUtilThreshold``).
QUEUE_DEPTH_THRESHOLD = 5
KV_CACHE_UTIL_THRESHOLD = 0.8
SATURATION_RULES = ("all", "mean")


def candidate_sites(snap: RouterSnapshot) -> np.ndarray:
    """Sites whose endpoints could serve the request: up, the request's model, its region if
    residency-bound (a full queue does not remove a site: it is saturated, not absent)."""
    st = snap.statics
    req = snap.request
    cand = snap.up & (np.asarray(st.site_model) == req.model)
    if req.residency:
        cand &= np.asarray(st.site_region) == req.origin
    return cand


def endpoint_saturation(snap: RouterSnapshot,
                        queue_threshold: float = QUEUE_DEPTH_THRESHOLD,
                        kv_threshold: float = KV_CACHE_UTIL_THRESHOLD) -> np.ndarray:
    """Per site, the utilization detector's roofline ``max(queue / 5, kv / 0.8)`` of its replicas."""
    queue = snap.waiting / np.asarray(snap.statics.replicas, dtype=np.float64)
    return np.maximum(queue / queue_threshold, snap.kv_util / kv_threshold)


def gateway_saturated(snap: RouterSnapshot, rule: str = "all",
                      queue_threshold: float = QUEUE_DEPTH_THRESHOLD,
                      kv_threshold: float = KV_CACHE_UTIL_THRESHOLD) -> bool:
    """True when the pool is saturated for this request (see the module doc for the rules)."""
    cand = candidate_sites(snap)
    if not cand.any():
        return True  # no endpoints: no capacity (both detectors say so)
    if rule == "all":
        queue = snap.waiting / np.asarray(snap.statics.replicas, dtype=np.float64)
        good = (queue <= queue_threshold) & (snap.kv_util <= kv_threshold)
        return not bool((good & cand).any())
    if rule == "mean":
        w = np.asarray(snap.statics.replicas, dtype=np.float64)[cand]
        sat = endpoint_saturation(snap, queue_threshold, kv_threshold)[cand]
        return bool(float(np.dot(w, sat)) / float(w.sum()) >= 1.0)
    raise ValueError(f"saturation rule {rule!r}: expected one of {SATURATION_RULES}")
