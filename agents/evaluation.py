"""Evaluate policies on a benchmark suite and build the leaderboard (CompilerGym-style harness).

A *suite* (``configs/suites.yaml``) is a list of scenarios x seeds plus optional config
overrides. :func:`evaluate` runs every policy on every (scenario, seed) pair: the same seeds for
every policy, hence the same arrival sequences (common random numbers). Each episode is
independent (fresh env, ``env.reset(seed=seed)``, ``policy.reset(seed)``), so the numbers do not
depend on how episodes are spread over worker processes, nor on the backend that runs them
(:mod:`agents.tasks`: ``local`` processes or ``ray`` tasks; an episode whose worker died is
retried, one that raises is reported by name at once, since it would raise again).

A policy runs only on the scenarios whose interface it fits (a trained policy records the
observation size and action layout it was trained on; :func:`interface_mismatch`); the others
are listed in ``skipped`` with the reason. Episodes that fail are listed in ``failures``; the
leaderboard of the episodes that finished is still built (``complete: false``).

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

The leaderboard JSON (``leaderboard.json``) follows :class:`agents.schemas.LeaderboardFile`
(``python -m gridenv schemas leaderboard`` prints its JSON Schema); ``null`` stands for a
missing value or NaN.

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

from agents import schemas
from agents.heuristics import HEURISTICS
from agents.registry import load_policy
from agents.stats import DEFAULT_RESAMPLES, bootstrap_ci, stratified_bootstrap_iqm
from agents.tasks import DEFAULT_RETRIES, Failure, TaskFailures, run_tasks
from gridenv.envs.registration import resolve_scenario

__all__ = [
    "Suite", "EpisodeSpec", "PolicyEntry", "load_suites", "get_suite", "parse_policies",
    "run_episode", "run_episodes", "episode_name", "aggregate", "evaluate", "interface_mismatch",
    "RESULT_METRICS", "SCHEMA_VERSION", "DEFAULT_SUITES_PATH", "REFERENCE_POLICY",
]

SCHEMA_VERSION = 2
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
    """A benchmark: scenarios x seeds, with config overrides applied to every scenario.

    ``scenarios`` are scenario names; ``scenario_files`` maps the name of a scenario given as a
    YAML path to that path (built-in scenarios are not in it).
    """

    name: str
    description: str
    scenarios: tuple[str, ...]
    seeds: tuple[int, ...]
    overrides: dict = field(default_factory=dict)
    scenario_files: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["scenarios"], d["seeds"] = list(self.scenarios), list(self.seeds)
        return d

    def source(self, scenario: str) -> str:
        """What ``GridEnv(scenario=...)`` loads for `scenario`: its name or its YAML path."""
        return self.scenario_files.get(scenario, scenario)


def load_suites(path: str | os.PathLike | None = None) -> dict[str, Suite]:
    """All suites of a suites YAML file (default ``configs/suites.yaml``), as written
    (:class:`agents.schemas.SuitesFile`; scenarios are resolved by :func:`get_suite`)."""
    path = Path(path) if path else DEFAULT_SUITES_PATH
    data = schemas.load(schemas.SuitesFile, path).root
    return {name: Suite(name, s.description, tuple(s.scenarios), tuple(s.seed_list()), dict(s.overrides))
            for name, s in data.items()}


def get_suite(
    name: str,
    path: str | os.PathLike | None = None,
    scenarios: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
) -> Suite:
    """Suite `name`, its scenarios resolved and validated, optionally restricted to other
    scenarios (names, env ids or YAML paths) and seeds."""
    from gridenv.core.scenario import load_scenario

    suites = load_suites(path)
    if name not in suites:
        raise ValueError(f"unknown suite {name!r}; known suites: {', '.join(suites)}")
    s = suites[name]
    refs = [resolve_scenario(x) for x in (scenarios or s.scenarios)]
    names = tuple(r.name for r in refs)
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"scenario {dup[0]!r} is given twice")
    files = {r.name: r.source for r in refs if r.is_file}
    for r in refs:  # fail early (and clearly) on overrides the schema rejects
        load_scenario(r.source, s.overrides)
    return Suite(s.name, s.description, names, tuple(seeds) if seeds else s.seeds, s.overrides, files)


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
        if sep and not label.strip():  # a leaderboard row without a name
            raise ValueError(f"policy {item!r}: empty label; write label=spec")
        if not sep:
            label, spec = (item, item) if item in HEURISTICS else (_file_label(item), item)
        out.append(PolicyEntry(label.strip(), spec.strip()))
    if not out:
        raise ValueError(f"no policies given (got {text!r})")
    labels = [p.label for p in out]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ValueError(f"duplicate policy names {dup}; name files with label=path")
    return out


def _file_label(spec: str) -> str:
    p = Path(spec)
    if p.is_dir() or not p.suffix:  # a run directory or an exported policy directory
        return p.name or str(p)
    return f"{p.parent.name}/{p.stem}" if p.parent.name else p.stem


# ---------------------------------------------------------------------------- episodes
@dataclass(frozen=True)
class EpisodeSpec:
    """One episode to run: everything its numbers depend on."""

    policy: str  # label
    spec: str
    scenario: str  # name
    seed: int
    overrides: dict = field(default_factory=dict, hash=False)
    source: str | None = None  # the scenario's YAML path, if it is a file (default: the name)


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


def _make_env(source: str, overrides: dict):
    import gymnasium as gym

    import gridenv  # noqa: F401  (registers the ids, also in spawned workers)
    from gridenv.envs.registration import register_scenario

    return gym.make(register_scenario(source), config=dict(overrides))


def run_episode(ep: EpisodeSpec) -> dict:
    """Run one episode to truncation; the per-episode record of the leaderboard JSON."""
    policy = _policy(ep.spec)
    env = _make_env(ep.source or ep.scenario, ep.overrides)
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


def interface_mismatch(policy, source: str, overrides: dict | None = None) -> str | None:
    """Why `policy` cannot act on the scenario (None if it can).

    A trained policy records the interface it was trained for (observation size and layout,
    site slots, batch levels); a heuristic reads the snapshot and fits every scenario. The sizes
    are compared first, then the policy's own check (its recorded interface against the
    environment's) on the first decision of an episode.
    """
    obs_shape = getattr(policy, "obs_shape", None)
    router = getattr(policy, "router", None)
    if obs_shape is None and router is not None:
        obs_shape = (int(router.obs_size),)
    sizes = {"max_sites": getattr(policy, "max_sites", None), "n_levels": getattr(policy, "n_levels", None)}
    if obs_shape is None and sizes["max_sites"] is None:
        return None
    env = _make_env(source, overrides or {})
    try:
        shape = tuple(env.observation_space.shape)
        nvec = [int(x) for x in env.action_space.nvec]
        if obs_shape is not None and tuple(obs_shape) != shape:
            return f"observation of {shape[0]} elements, the policy takes {tuple(obs_shape)[0]}"
        if sizes["max_sites"] is not None and sizes["max_sites"] != nvec[0] - 1:
            return f"{nvec[0] - 1} site slots, the policy has {sizes['max_sites']}"
        if sizes["n_levels"] is not None and sizes["n_levels"] != nvec[1]:
            return f"{nvec[1]} batch levels, the policy has {sizes['n_levels']}"
        obs, info = env.reset(seed=0)
        snap = info.get("snapshot")  # the router-visible snapshot travels in info
        if snap is not None:
            try:  # the policy's own interface check (recorded interface vs this environment's)
                policy.act(obs, snap)
            except ValueError as err:
                return f"interface the policy was not made for ({err})"
    finally:
        env.close()
    return None


#: ``progress(done, total, record, status)``: after every finished episode (``record`` is None
#: if it failed for good) and every retry; ``status`` is an :class:`agents.tasks.Status`.
ProgressFn = Callable[[int, int, "dict | None", object], None]


def episode_name(ep: EpisodeSpec) -> str:
    """How failures and progress name an episode: policy, scenario, seed."""
    return f"policy {ep.policy!r} on {ep.scenario} seed {ep.seed}"


def run_episodes(
    episodes: Sequence[EpisodeSpec],
    workers: int = 1,
    progress: ProgressFn | None = None,
    backend: str = "local",
    ray_address: str | None = None,
    retries: int = DEFAULT_RETRIES,
) -> list[dict]:
    """Run episodes on `backend` (``workers`` > 1: spawned processes); records in input order.

    Raises :class:`agents.tasks.TaskFailures` (a RuntimeError naming each failed episode,
    with the records that finished) if some episode failed.
    """
    episodes = list(episodes)
    return run_tasks(run_episode, episodes, [episode_name(ep) for ep in episodes], backend, workers,
                     ray_address, progress, retries, what="episode")


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
    failures: Sequence[dict] = (),
    skipped: Sequence[dict] = (),
) -> dict:
    """The leaderboard dict (:class:`agents.schemas.LeaderboardFile`) from per-episode records.

    Cells (policy x scenario) without records, because the policy was skipped there or all
    its episodes failed, have no result row; a policy's aggregate covers the episodes it has.
    """
    by_ps: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        by_ps.setdefault((r["policy"], r["scenario"]), []).append(r)
    for eps in by_ps.values():
        eps.sort(key=lambda r: r["seed"])
    labels = [p.label for p in policies]

    def mean_reward(label, sc):
        eps = by_ps.get((label, sc))
        return float(np.mean([r["reward"] for r in eps])) if eps else None

    # Reference rewards per scenario for the normalized score.
    ref_label = next((p.label for p in policies if p.spec == REFERENCE_POLICY), None)
    normalization = {}
    for sc in suite.scenarios:
        heuristics = [p.label for p in policies if p.kind == "heuristic" and (p.label, sc) in by_ps]
        r_rand = mean_reward(ref_label, sc) if ref_label else None
        if r_rand is None or not heuristics:
            continue
        best = max(heuristics, key=lambda h: mean_reward(h, sc))
        r_best = mean_reward(best, sc)
        normalization[sc] = {
            "random_reward": r_rand,
            "best_heuristic": best,
            "best_heuristic_reward": r_best,
            "used_in_score": abs(r_best - r_rand) >= _MIN_SPAN,
        }

    def normalized(r: dict) -> float | None:
        ref = normalization.get(r["scenario"])
        if ref is None or not ref["used_in_score"]:
            return None
        span = ref["best_heuristic_reward"] - ref["random_reward"]
        return (r["reward"] - ref["random_reward"]) / span

    results = []
    for label in labels:
        for sc in suite.scenarios:
            eps = by_ps.get((label, sc))
            if not eps:
                continue
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
        mine = [by_ps.get((p.label, sc), []) for sc in suite.scenarios]
        per_task = [[x if (x := normalized(r)) is not None else np.nan for r in eps] for eps in mine]
        point, lo, hi = stratified_bootstrap_iqm(per_task, resamples, confidence, seed)
        flat = [x for t in per_task for x in t]
        rewards = [r["reward"] for eps in mine for r in eps]
        ranking.append({
            "name": p.label, "spec": p.spec, "kind": p.kind,
            "iqm_normalized_score": _clean(point),
            "iqm_ci95": [lo, hi] if math.isfinite(point) else None,
            "mean_normalized_score": _mean(flat),
            "mean_reward": float(np.mean(rewards)) if rewards else None,
            "episodes": len(rewards),
        })
    ranking.sort(key=lambda d: (d["iqm_normalized_score"] is None, -(d["iqm_normalized_score"] or 0.0),
                                d["mean_reward"] is None, -(d["mean_reward"] or 0.0)))
    ranking = [{"rank": i, **d} for i, d in enumerate(ranking, 1)]

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
        "complete": not failures,
        "failures": list(failures),
        "skipped": list(skipped),
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
    retries: int = DEFAULT_RETRIES,
) -> dict:
    """Run `policies` on `suite` and return the leaderboard dict.

    `backend` (``local`` or ``ray``), `workers` and `ray_address`: see :mod:`agents.tasks`.
    With `add_reference`, ``random`` is added when missing (the normalized score needs it).
    Policy specs are loaded once here first, so a bad spec fails before any episode runs; a
    policy runs only on the scenarios it fits (:func:`interface_mismatch`; the others are in
    ``skipped``). Failed episodes are in ``failures`` (``complete`` is false); the statistics
    cover the episodes that finished. Raises ValueError if no policy fits any scenario.
    """
    policies = list(policies)
    if add_reference and not any(p.spec == REFERENCE_POLICY for p in policies):
        if any(p.label == REFERENCE_POLICY for p in policies):
            raise ValueError(f"the label {REFERENCE_POLICY!r} is reserved for the random heuristic")
        policies.append(PolicyEntry(REFERENCE_POLICY, REFERENCE_POLICY))
    skipped = []
    runs: list[tuple[PolicyEntry, str]] = []
    for p in policies:
        policy = load_policy(p.spec)
        for sc in suite.scenarios:
            why = interface_mismatch(policy, suite.source(sc), suite.overrides)
            if why is None:
                runs.append((p, sc))
            else:
                skipped.append({"policy": p.label, "scenario": sc,
                                "reason": f"interface does not fit: {sc} has an {why}"})
    if not any(p.kind == "file" for p, _ in runs) and any(p.kind == "file" for p in policies):
        names = ", ".join(p.label for p in policies if p.kind == "file")
        raise ValueError(f"{names}: fits none of the scenarios {', '.join(suite.scenarios)} "
                         f"({skipped[0]['reason']})")
    episodes = [
        EpisodeSpec(p.label, p.spec, sc, seed, suite.overrides, suite.scenario_files.get(sc))
        for p, sc in runs for seed in suite.seeds
    ]
    failures: list[Failure] = []
    try:
        records = run_episodes(episodes, workers, progress, backend, ray_address, retries)
    except TaskFailures as e:
        records, failures = [r for r in e.results if r is not None], e.failures
    failed = [{"policy": episodes[f.index].policy, "scenario": episodes[f.index].scenario,
               "seed": episodes[f.index].seed, "error": f.error, "attempts": f.attempts}
              for f in failures]
    return aggregate(records, policies, suite, resamples=resamples, failures=failed, skipped=skipped)


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
