"""Simulator speed and memory per registered scenario.

    python -m gridenv.bench                 # a table
    python -m gridenv.bench --json          # [{"scenario", "decisions_per_s", "sim_s_per_wall_s", "peak_rss_mb"}, ...]
    python -m gridenv.bench --scenarios gridenv/Metro-v1 --min-seconds 10
    python -m gridenv.bench --scenarios metro,configs/scenarios/bursty.yaml

``--scenarios`` takes env ids (``gridenv/Metro-v1``), scenario names (``metro``) and scenario
YAML paths. Bad flags are usage errors (one line, exit status 2). A scenario whose child process
fails or outlives ``--timeout-s`` is reported on stderr with its error; the others still run, and
the exit status is then 1.

Each scenario runs in a fresh child process pinned to one core (so peak RSS is that scenario's
own), through ``gym.make(id)`` with its default wrappers, under a random valid policy (a
uniformly drawn feasible site or shed, a random batch level). Episodes with seeds 0, 1, ... run
until ``--min-seconds`` of wall time have passed; the policy's own cost is included.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue as queue_mod
import resource
import sys
import time

from gridenv.cli import OneLineParser, positive_seconds

__all__ = ["bench_scenario", "run_in_child", "main"]


def bench_scenario(env_id: str, min_seconds: float = 3.0) -> dict:
    """Run in the current process; returns the figures for one scenario (a name, id or YAML path)."""
    import gymnasium as gym
    import numpy as np

    import gridenv  # noqa: F401
    from gridenv.envs.registration import register_scenario

    env_id = register_scenario(env_id)

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    env = gym.make(env_id)
    n_sites_plus_shed = env.unwrapped.max_sites + 1
    n_levels = env.unwrapped.n_levels
    rng = np.random.default_rng(12345)
    decisions = 0
    sim_s = 0.0
    seed = 0
    start = time.perf_counter()
    while True:
        obs, info = env.reset(seed=seed)
        done = False
        while not done:
            feasible = np.flatnonzero(info["action_mask"][:n_sites_plus_shed])
            action = (feasible[rng.integers(len(feasible))], rng.integers(n_levels))
            obs, reward, terminated, truncated, info = env.step(action)
            decisions += 1
            done = terminated or truncated
        sim_s += env.unwrapped.sim.now
        seed += 1
        wall = time.perf_counter() - start
        if wall >= min_seconds:
            break
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    return {
        "scenario": env_id,
        "decisions_per_s": decisions / wall,
        "sim_s_per_wall_s": sim_s / wall,
        "peak_rss_mb": peak_kb / 1024.0,
        "episodes": seed,
        "decisions": decisions,
    }


def _child_call(func, args: tuple, queue) -> None:
    try:
        queue.put(("ok", func(*args)))
    except BaseException as e:  # reported by the parent, which never waits on a dead child
        queue.put(("error", f"{type(e).__name__}: {e}"))


def run_in_child(ctx, func, args: tuple, timeout_s: float) -> tuple[dict | None, str | None]:
    """``func(*args)`` in a fresh child process (so its peak RSS is its own): (result, None) or
    (None, error); waits at most `timeout_s`, and never on a child that died without answering."""
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_call, args=(func, args, queue), daemon=True)
    proc.start()
    deadline = time.monotonic() + timeout_s
    answered = False
    try:
        while True:
            try:
                status, payload = queue.get(timeout=0.2)
                answered = True
                return (payload, None) if status == "ok" else (None, payload)
            except queue_mod.Empty:
                pass
            if not proc.is_alive():
                try:  # it may have put its answer just before exiting
                    status, payload = queue.get(timeout=1.0)
                    answered = True
                    return (payload, None) if status == "ok" else (None, payload)
                except queue_mod.Empty:
                    return None, f"child process exited with code {proc.exitcode} and no result"
            if time.monotonic() > deadline:
                return None, f"timed out after {timeout_s:g} s (--timeout-s); child stopped"
    finally:
        proc.join(timeout=5.0 if answered else 0.0)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=5.0)
        if proc.is_alive():
            proc.kill()
            proc.join()
        queue.close()


def _run_child(ctx, target: str, min_seconds: float, timeout_s: float) -> tuple[dict | None, str | None]:
    """(result, None) or (None, error) of one scenario's benchmark in a child process."""
    return run_in_child(ctx, bench_scenario, (target, min_seconds), timeout_s)


def resolve_targets(spec: str | None) -> list:
    """Scenario names / env ids / YAML paths -> ScenarioRefs (the one resolver); ValueError names the bad one."""
    import gridenv
    from gridenv.envs.registration import resolve_scenario

    if spec is None:
        return [resolve_scenario(i) for i in gridenv.ENV_IDS]
    items = [s.strip() for s in spec.split(",")]
    if not any(items):
        raise ValueError(f"--scenarios: expected comma-separated scenarios, got {spec!r}")
    out = []
    for item in items:
        if not item:
            raise ValueError(f"--scenarios: empty name in {spec!r}")
        try:
            out.append(resolve_scenario(item))
        except ValueError as e:  # ScenarioError included: a bad file is a usage error here
            raise ValueError(f"--scenarios {item}: {e}") from None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m gridenv.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--scenarios", default=None,
                        help="comma-separated env ids, scenario names or YAML paths (default: all registered)")
    parser.add_argument("--min-seconds", type=positive_seconds, default=3.0,
                        help="wall seconds per scenario (default 3)")
    parser.add_argument("--timeout-s", type=positive_seconds, default=None,
                        help="give up on a scenario's child process after this many wall seconds "
                             "(default: 120 + 10 x --min-seconds)")
    args = parser.parse_args(argv)
    try:
        targets = resolve_targets(args.scenarios)
    except ValueError as e:
        parser.error(str(e))
    timeout_s = args.timeout_s if args.timeout_s is not None else 120.0 + 10.0 * args.min_seconds

    ctx = mp.get_context("spawn")
    results, failures = [], []
    for ref in targets:
        target = f"{ref.source} ({ref.env_id})" if ref.is_file else ref.env_id
        res, err = _run_child(ctx, ref.source, args.min_seconds, timeout_s)
        if err is not None:
            failures.append(target)
            print(f"python -m gridenv.bench: scenario {target} failed: {err}", file=sys.stderr, flush=True)
            continue
        res["scenario"] = ref.env_id
        results.append(res)
        if not args.json:
            print(f"{target:<28} {res['decisions_per_s']:>12,.0f} decisions/s "
                  f"{res['sim_s_per_wall_s']:>10,.0f} sim s/wall s {res['peak_rss_mb']:>8.1f} MB peak RSS",
                  flush=True)
    if args.json:
        keys = ("scenario", "decisions_per_s", "sim_s_per_wall_s", "peak_rss_mb")
        print(json.dumps([{k: r[k] for k in keys} for r in results], indent=2))
    if failures:
        print(f"python -m gridenv.bench: {len(failures)} of {len(targets)} scenario(s) failed: "
              f"{', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
