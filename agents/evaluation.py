"""Evaluate policies on a benchmark suite and build the leaderboard (CompilerGym-style harness).

A *suite* (``configs/suites.yaml``) is a list of scenarios x seeds plus optional config
overrides. :func:`evaluate` runs every policy on every (scenario, seed) pair: the same seeds for
every policy, hence the same arrival sequences (common random numbers). Each episode is
independent (fresh env, ``env.reset(seed=seed)``, ``policy.reset(seed)``), so the numbers do not
depend on how episodes are spread over worker processes, nor on the backend that runs them
(:mod:`agents.backends`: ``local`` processes or ``ray`` tasks; a failed episode is retried, then
reported by name).

Statistics (see :mod:`agents.stats`):

* per policy x scenario: the mean of each metric over seeds, and for the episode reward a 95%
  percentile-bootstrap CI (``resamples`` = 2000 by default, ``numpy.random.default_rng(seed=0)``).
  Latency percentiles are per episode, then averaged over episodes.
* per policy: each episode's *normalized score* ``(R - R_random) / (R_best - R_random)``, where
  ``R_random`` and ``R_best`` are the mean rewards on that scenario of ``random`` and of the best
  heuristic *in this run* (``random`` is added to every run as the reference). Then the
  interquartile mean (IQM) over all scenarios x seeds, with a stratified bootstrap 95% CI
  (runs resampled within each scenario, as rliable does). Compare normalized scores only
  between runs with the same set of heuristics (the default run has all of them). A scenario
  where no heuristic beats random (``centralized`` has one site, so heuristics differ only in
  shedding, which does not pay there) has no normalized score (``used_in_score: false``) and
  is left out of the IQM.

Leaderboard JSON schema (``leaderboard.json``; ``null`` stands for a missing value or NaN)::

    {
      "schema_version": 1,                         # int
      "created_utc": "2025-01-01T00:00:00Z",       # str
      "gridenv_version": "0.1.0",                  # str
      "suite": {"name": str, "description": str, "scenarios": [str], "seeds": [int],
                "overrides": {...}},
      "bootstrap": {"resamples": int, "confidence": float, "seed": int,
                    "method": "percentile", "aggregate": "IQM, stratified bootstrap"},
      "normalization": {<scenario>: {"random_reward": float, "best_heuristic": str,
                                     "best_heuristic_reward": float, "used_in_score": bool}},
      "policies": [                                # ranked, best IQM first
        {"rank": int, "name": str, "spec": str, "kind": "heuristic" | "file",
         "iqm_normalized_score": float|null, "iqm_ci95": [float, float]|null,
         "mean_normalized_score": float|null, "mean_reward": float, "episodes": int}
      ],
      "results": [                                 # one row per policy x scenario
        {"policy": str, "scenario": str, "episodes": int,
         "reward_mean": float, "reward_ci95": [float, float],
         "normalized_score_mean": float|null,
         <each of RESULT_METRICS>: float|null}
      ],
      "episodes": [                                # one row per episode
        {"policy": str, "scenario": str, "seed": int, "reward": float, "decisions": int,
         "wall_s": float, "reward_terms": {"goodput_value_usd": float,
         "energy_cost_usd": float, "gpu_cost_usd": float}, "metrics": {str: float|int|null}}
      ],
      "crn_consistent": bool                       # every policy saw the same arrivals per seed
    }

This module imports neither torch nor matplotlib; policies given as files load their back end
in the worker processes only.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml

from agents.heuristics import HEURISTICS
from agents.registry import load_policy
from agents.stats import DEFAULT_RESAMPLES, bootstrap_ci, stratified_bootstrap_iqm

__all__ = [
    "Suite", "EpisodeSpec", "PolicyEntry", "load_suites", "get_suite", "resolve_scenario",
    "parse_policies", "run_episode", "run_episodes", "aggregate", "evaluate",
    "RESULT_METRICS", "SCHEMA_VERSION", "DEFAULT_SUITES_PATH", "REFERENCE_POLICY",
]

SCHEMA_VERSION = 1
DEFAULT_SUITES_PATH = Path(__file__).resolve().parents[1] / "configs" / "suites.yaml"
#: The policy every run includes, the 0 of the normalized score.
REFERENCE_POLICY = "random"
#: Scenarios where the best heuristic beats random by less than this ($) have no normalized score.
_MIN_SPAN = 1e-9

#: Per policy x scenario columns (means over episodes), name -> description with units.
RESULT_METRICS: dict[str, str] = {
    "goodput_tokens_per_s": "prompt + output tokens/s of requests that met both SLOs",
    "slo_attainment": "fraction of finished requests that met both SLOs",
    "ttft_p50_s": "median time to first token (s)",
    "ttft_p99_s": "99th percentile TTFT (s)",
    "tpot_p50_s": "median time per output token (s)",
    "tpot_p99_s": "99th percentile TPOT (s)",
    "network_rtt_mean_ms": "mean network RTT of served requests (ms)",
    "shed_frac": "shed requests / arrived requests",
    "energy_kwh": "total energy incl. idle and PUE (kWh)",
    "cost_usd": "energy + provisioned GPU cost ($)",
    "routing_cost_usd": "the reward's cost terms: dynamic energy + busy GPU time ($)",
    "usd_per_mtok": "cost per million served tokens ($/Mtok)",
    "tokens_per_joule": "served output tokens per joule",
    "co2_kg": "CO2 emitted (kg)",
    "goodput_tokens_per_usd": "goodput tokens per $ of cost",
    "goodput_tokens_per_kwh": "goodput tokens per kWh",
    "invalid_actions": "masked actions chosen (should be 0)",
}


# ---------------------------------------------------------------------------- suites
@dataclass(frozen=True)
class Suite:
    """A benchmark: scenarios x seeds, with config overrides applied to every scenario."""

    name: str
    description: str
    scenarios: tuple[str, ...]
    seeds: tuple[int, ...]
    overrides: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["scenarios"], d["seeds"] = list(self.scenarios), list(self.seeds)
        return d


def _seed_list(raw, where: str) -> tuple[int, ...]:
    if isinstance(raw, dict) and set(raw) == {"start", "count"}:
        return tuple(range(int(raw["start"]), int(raw["start"]) + int(raw["count"])))
    if isinstance(raw, list) and raw and all(isinstance(s, int) and s >= 0 for s in raw):
        return tuple(raw)
    raise ValueError(f"{where}: seeds must be a list of non-negative ints or {{start, count}}")


def resolve_scenario(name_or_id: str) -> str:
    """A scenario name from a name (``metro``) or a registered id (``gridenv/Metro-v1``)."""
    from gridenv.core.scenario import scenario_names
    from gridenv.envs.registration import env_id

    names = scenario_names()
    if name_or_id in names:
        return name_or_id
    for n in names:
        if env_id(n) == name_or_id or env_id(n).removeprefix("gridenv/") == name_or_id:
            return n
    raise ValueError(f"unknown scenario {name_or_id!r}; known: {', '.join(names)}")


def load_suites(path: str | os.PathLike | None = None) -> dict[str, Suite]:
    """All suites of a suites YAML file (default ``configs/suites.yaml``)."""
    path = Path(path) if path else DEFAULT_SUITES_PATH
    if not path.is_file():
        raise FileNotFoundError(f"suites file {path} not found")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: top level must map suite names to suites")
    suites = {}
    for name, d in raw.items():
        where = f"{path}: suite {name!r}"
        if not isinstance(d, dict) or not d.get("scenarios") or "seeds" not in d:
            raise ValueError(f"{where}: needs 'scenarios' and 'seeds'")
        unknown = set(d) - {"description", "scenarios", "seeds", "overrides"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        suites[name] = Suite(
            name=name, description=str(d.get("description", "")),
            scenarios=tuple(str(s) for s in d["scenarios"]),
            seeds=_seed_list(d["seeds"], where), overrides=dict(d.get("overrides") or {}),
        )
    return suites


def get_suite(
    name: str,
    path: str | os.PathLike | None = None,
    scenarios: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
) -> Suite:
    """Suite `name`, its scenarios validated, optionally restricted to other scenarios/seeds."""
    from gridenv.core.scenario import load_scenario

    suites = load_suites(path)
    if name not in suites:
        raise ValueError(f"unknown suite {name!r}; known suites: {', '.join(suites)}")
    s = suites[name]
    names = tuple(resolve_scenario(x) for x in (scenarios or s.scenarios))
    for n in names:  # fail early (and clearly) on overrides the schema rejects
        load_scenario(n, s.overrides)
    return Suite(s.name, s.description, names, tuple(seeds) if seeds else s.seeds, s.overrides)


# ---------------------------------------------------------------------------- policies
@dataclass(frozen=True)
class PolicyEntry:
    """A policy as the leaderboard names it: ``label`` (unique) and the ``spec`` to load it."""

    label: str
    spec: str

    @property
    def kind(self) -> str:
        return "heuristic" if self.spec in HEURISTICS else "file"


def parse_policies(text: str | Sequence[str]) -> list[PolicyEntry]:
    """``"random,jsq,ppo=runs/a/best_model.zip"`` -> entries (``label=spec`` names a file)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[PolicyEntry] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        label, sep, spec = item.partition("=")
        if not sep:
            label, spec = (item, item) if item in HEURISTICS else (_file_label(item), item)
        out.append(PolicyEntry(label.strip(), spec.strip()))
    if not out:
        raise ValueError("no policies given")
    labels = [p.label for p in out]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ValueError(f"duplicate policy names {dup}; name files with label=path")
    return out


def _file_label(spec: str) -> str:
    p = Path(spec)
    return f"{p.parent.name}/{p.stem}" if p.parent.name else p.stem


# ---------------------------------------------------------------------------- episodes
@dataclass(frozen=True)
class EpisodeSpec:
    """One episode to run: everything its numbers depend on."""

    policy: str  # label
    spec: str
    scenario: str
    seed: int
    overrides: dict = field(default_factory=dict, hash=False)


_POLICY_CACHE: dict[str, object] = {}


def _policy(spec: str):
    if spec not in _POLICY_CACHE:
        _POLICY_CACHE[spec] = load_policy(spec)
    return _POLICY_CACHE[spec]


def _clean(v):
    """JSON-safe scalar: numpy -> python, NaN/inf -> None."""
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return v if math.isfinite(v) else None
    return v


def run_episode(ep: EpisodeSpec) -> dict:
    """Run one episode to truncation; the per-episode record of the leaderboard JSON."""
    import gymnasium as gym

    import gridenv  # noqa: F401  (registers the ids, also in spawned workers)
    from gridenv.envs.registration import env_id

    policy = _policy(ep.spec)
    env = gym.make(env_id(ep.scenario), config=dict(ep.overrides))
    t0 = time.perf_counter()
    obs, info = env.reset(seed=ep.seed)
    policy.reset(ep.seed)
    reward, decisions = 0.0, 0
    terms = {"goodput_value_usd": 0.0, "energy_cost_usd": 0.0, "gpu_cost_usd": 0.0}
    shed = np.array([int(env.action_space.nvec[0]) - 1, 0])
    while True:
        snap = info["snapshot"]  # the router-visible snapshot travels in info
        action = shed if snap is None else policy.act(obs, snap)
        obs, r, terminated, truncated, info = env.step(action)
        reward += r
        decisions += 1
        for k in terms:
            terms[k] += info["rewards"][k]
        if terminated or truncated:
            break
    env.close()
    m = {k: _clean(v) for k, v in info["episode_metrics"].items()}
    m["shed_frac"] = _clean(m["shed"] / m["arrived"]) if m.get("arrived") else None
    m["routing_cost_usd"] = terms["energy_cost_usd"] + terms["gpu_cost_usd"]
    return {
        "policy": ep.policy, "scenario": ep.scenario, "seed": int(ep.seed),
        "reward": float(reward), "decisions": decisions,
        "wall_s": round(time.perf_counter() - t0, 4),
        "reward_terms": terms, "metrics": m,
    }


#: ``progress(done, total, record, status)``: after every finished episode (``record`` is None
#: if it failed for good) and every retry; ``status`` is an :class:`agents.backends.Status`.
ProgressFn = Callable[[int, int, "dict | None", object], None]


def run_episodes(
    episodes: Sequence[EpisodeSpec],
    workers: int = 1,
    progress: ProgressFn | None = None,
    backend: str = "local",
    ray_address: str | None = None,
) -> list[dict]:
    """Run episodes on `backend` (``workers`` > 1: spawned processes); results in input order.

    See :mod:`agents.backends`; raises :class:`agents.backends.TaskFailures` (a RuntimeError
    naming each failed episode) if some episode failed on every attempt.
    """
    from agents.backends import run_episodes as _run

    return _run(episodes, backend, workers, ray_address, progress)


# ---------------------------------------------------------------------------- aggregation
def _mean(xs) -> float | None:
    a = np.asarray([x for x in xs if x is not None], dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else None


def aggregate(
    records: Sequence[dict],
    policies: Sequence[PolicyEntry],
    suite: Suite,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """The leaderboard dict (schema in the module docstring) from per-episode records."""
    by_ps: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        by_ps.setdefault((r["policy"], r["scenario"]), []).append(r)
    for eps in by_ps.values():
        eps.sort(key=lambda r: r["seed"])
    labels = [p.label for p in policies]
    heuristics = [p.label for p in policies if p.kind == "heuristic"]

    # Reference rewards per scenario for the normalized score.
    def mean_reward(label, sc):
        return float(np.mean([r["reward"] for r in by_ps[(label, sc)]]))

    ref_label = next((p.label for p in policies if p.spec == REFERENCE_POLICY), None)
    normalization = {}
    for sc in suite.scenarios:
        if ref_label is None or not heuristics:
            continue
        best = max(heuristics, key=lambda h: mean_reward(h, sc))
        r_rand, r_best = mean_reward(ref_label, sc), mean_reward(best, sc)
        normalization[sc] = {
            "random_reward": r_rand,
            "best_heuristic": best,
            "best_heuristic_reward": r_best,
            "used_in_score": abs(r_best - r_rand) >= _MIN_SPAN,
        }

    def normalized(r: dict) -> float | None:
        ref = normalization.get(r["scenario"])
        if ref is None:
            return None
        if not ref["used_in_score"]:
            return None
        span = ref["best_heuristic_reward"] - ref["random_reward"]
        return (r["reward"] - ref["random_reward"]) / span

    results = []
    for label in labels:
        for sc in suite.scenarios:
            eps = by_ps[(label, sc)]
            rewards = [r["reward"] for r in eps]
            lo, hi = bootstrap_ci(rewards, resamples, confidence, seed)
            row = {
                "policy": label, "scenario": sc, "episodes": len(eps),
                "reward_mean": float(np.mean(rewards)), "reward_ci95": [lo, hi],
                "normalized_score_mean": _mean(normalized(r) for r in eps),
            }
            for k in RESULT_METRICS:
                row[k] = _mean(r["metrics"].get(k) for r in eps)
            results.append(row)

    ranking = []
    for p in policies:
        per_task = [
            [x if (x := normalized(r)) is not None else np.nan for r in by_ps[(p.label, sc)]]
            for sc in suite.scenarios
        ]
        point, lo, hi = stratified_bootstrap_iqm(per_task, resamples, confidence, seed)
        flat = [x for t in per_task for x in t]
        ranking.append({
            "name": p.label, "spec": p.spec, "kind": p.kind,
            "iqm_normalized_score": _clean(point),
            "iqm_ci95": [lo, hi] if math.isfinite(point) else None,
            "mean_normalized_score": _mean(flat),
            "mean_reward": float(np.mean([r["reward"] for sc in suite.scenarios
                                          for r in by_ps[(p.label, sc)]])),
            "episodes": sum(len(by_ps[(p.label, sc)]) for sc in suite.scenarios),
        })
    ranking.sort(key=lambda d: (d["iqm_normalized_score"] is None,
                                -(d["iqm_normalized_score"] or 0.0), -d["mean_reward"]))
    for i, d in enumerate(ranking, 1):
        d["rank"] = i
    ranking = [{"rank": d.pop("rank"), **d} for d in ranking]

    arrivals: dict[tuple[str, int], set] = {}
    for r in records:
        arrivals.setdefault((r["scenario"], r["seed"]), set()).add(r["metrics"].get("arrived"))

    from gridenv import __version__

    return {
        "schema_version": SCHEMA_VERSION,
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "gridenv_version": __version__,
        "suite": suite.to_dict(),
        "bootstrap": {"resamples": int(resamples), "confidence": float(confidence),
                      "seed": int(seed), "method": "percentile",
                      "aggregate": "IQM, stratified bootstrap"},
        "normalization": normalization,
        "policies": ranking,
        "results": results,
        "episodes": sorted(records, key=lambda r: (labels.index(r["policy"]),
                                                   suite.scenarios.index(r["scenario"]), r["seed"])),
        "crn_consistent": all(len(v) == 1 for v in arrivals.values()),
    }


def evaluate(
    suite: Suite,
    policies: Sequence[PolicyEntry],
    workers: int = 1,
    progress: ProgressFn | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    add_reference: bool = True,
    backend: str = "local",
    ray_address: str | None = None,
) -> dict:
    """Run `policies` on `suite` and return the leaderboard dict.

    `backend` (``local`` or ``ray``), `workers` and `ray_address`: see :mod:`agents.backends`.

    With `add_reference`, ``random`` is added when missing (the normalized score needs it).
    Policy specs are loaded once here first, so a bad spec fails before any episode runs.
    """
    policies = list(policies)
    if add_reference and not any(p.spec == REFERENCE_POLICY for p in policies):
        if any(p.label == REFERENCE_POLICY for p in policies):
            raise ValueError(f"the label {REFERENCE_POLICY!r} is reserved for the random heuristic")
        policies.append(PolicyEntry(REFERENCE_POLICY, REFERENCE_POLICY))
    for p in policies:
        load_policy(p.spec)
    episodes = [
        EpisodeSpec(p.label, p.spec, sc, seed, suite.overrides)
        for p in policies for sc in suite.scenarios for seed in suite.seeds
    ]
    records = run_episodes(episodes, workers, progress, backend, ray_address)
    return aggregate(records, policies, suite, resamples=resamples)


def print_progress(done: int, total: int, rec: dict | None, status=None) -> None:
    """A line per finished, failed or retried episode on stderr (with failures and time left)."""
    head = f"[{done:>{len(str(total))}}/{total}]"
    if rec is None:  # status.event is "failed" or "retry"
        what = "FAILED" if status.event == "failed" else "failed, retrying"
        print(f"{head} {status.name} {what}: {status.error}", file=sys.stderr, flush=True)
        return
    m = rec["metrics"]
    slo = m.get("slo_attainment")
    extra = status.summary() if status is not None else ""
    print(f"{head} {rec['policy']:<12} {rec['scenario']:<17} "
          f"seed={rec['seed']:<6} reward=${rec['reward']:9.3f} "
          f"slo={'n/a' if slo is None else f'{slo:.3f}'} ({rec['wall_s']:.1f} s)"
          + (f"  [{extra}]" if extra else ""),
          file=sys.stderr, flush=True)
