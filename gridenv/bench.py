"""Simulator speed and memory per registered scenario.

    python -m gridenv.bench                 # a table
    python -m gridenv.bench --json          # [{"scenario", "decisions_per_s", "sim_s_per_wall_s", "peak_rss_mb"}, ...]
    python -m gridenv.bench --scenarios gridenv/Metro-v1 --min-seconds 10
    python -m gridenv.bench --scenarios metro,path/to/my.yaml     # names, ids or YAML paths

Each scenario runs in a fresh child process pinned to one core (so peak RSS is that scenario's
own), through ``gym.make(id)`` with its default wrappers, under a random valid policy (a
uniformly drawn feasible site or shed, a random batch level). Episodes with seeds 0, 1, ... run
until ``--min-seconds`` of wall time have passed; the policy's own cost is included.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import time

__all__ = ["bench_scenario", "main"]


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


def _child(env_id: str, min_seconds: float, queue) -> None:
    try:
        queue.put(bench_scenario(env_id, min_seconds))
    except Exception as err:  # noqa: BLE001 - reported by the parent, which must not wait forever
        queue.put({"error": f"{type(err).__name__}: {err}"})


def _wait(proc, queue, env_id: str) -> dict:
    """The child's result; an error dict if it raised or died without one (never blocks forever)."""
    import queue as queue_mod

    while True:
        try:
            return queue.get(timeout=1.0)
        except queue_mod.Empty:
            if not proc.is_alive():
                try:  # it may have put its result just before exiting
                    return queue.get(timeout=1.0)
                except queue_mod.Empty:
                    return {"error": f"the benchmark process for {env_id} died (exit code {proc.exitcode})"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gridenv.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--scenarios", default=None, help="comma-separated env ids (default: all registered)")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="wall seconds per scenario (default 3)")
    args = parser.parse_args(argv)

    import gridenv

    from gridenv.envs.registration import resolve_scenario

    specs = gridenv.ENV_IDS if args.scenarios is None else [s.strip() for s in args.scenarios.split(",") if s.strip()]
    try:  # names, ids and YAML paths, as everywhere
        refs = [resolve_scenario(s) for s in specs]
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    ids = [r.env_id for r in refs]
    if args.min_seconds <= 0:
        print("error: --min-seconds must be positive", file=sys.stderr)
        return 2

    ctx = mp.get_context("spawn")
    results = []
    failed = False
    for ref in refs:
        env_id = ref.env_id
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(ref.source, args.min_seconds, queue))
        proc.start()
        res = _wait(proc, queue, env_id)
        proc.join()
        if "error" in res:
            print(f"error: {env_id}: {res['error']}", file=sys.stderr, flush=True)
            failed = True
            continue
        res["scenario"] = env_id
        results.append(res)
        if not args.json:
            print(f"{env_id:<28} {res['decisions_per_s']:>12,.0f} decisions/s "
                  f"{res['sim_s_per_wall_s']:>10,.0f} sim s/wall s {res['peak_rss_mb']:>8.1f} MB peak RSS",
                  flush=True)
    if args.json:
        keys = ("scenario", "decisions_per_s", "sim_s_per_wall_s", "peak_rss_mb")
        print(json.dumps([{k: r[k] for k in keys} for r in results], indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
