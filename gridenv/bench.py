"""Simulator speed and memory per registered scenario.

    python -m gridenv.bench                 # a table
    python -m gridenv.bench --json          # [{"scenario", "decisions_per_s", "sim_s_per_wall_s", "peak_rss_mb"}, ...]
    python -m gridenv.bench --scenarios gridenv/Metro-v1 --min-seconds 10

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
    """Run in the current process; returns the figures for one scenario."""
    import gymnasium as gym
    import numpy as np

    import gridenv  # noqa: F401

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
    queue.put(bench_scenario(env_id, min_seconds))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gridenv.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--scenarios", default=None, help="comma-separated env ids (default: all registered)")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="wall seconds per scenario (default 3)")
    args = parser.parse_args(argv)

    import gridenv

    ids = gridenv.ENV_IDS if args.scenarios is None else [s.strip() for s in args.scenarios.split(",")]
    unknown = [i for i in ids if i not in gridenv.ENV_IDS]
    if unknown:
        print(f"error: unknown scenario id(s) {unknown}; known: {gridenv.ENV_IDS}", file=sys.stderr)
        return 2
    if args.min_seconds <= 0:
        print("error: --min-seconds must be positive", file=sys.stderr)
        return 2

    ctx = mp.get_context("spawn")
    results = []
    for env_id in ids:
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(env_id, args.min_seconds, queue))
        proc.start()
        res = queue.get()
        proc.join()
        results.append(res)
        if not args.json:
            print(f"{env_id:<28} {res['decisions_per_s']:>12,.0f} decisions/s "
                  f"{res['sim_s_per_wall_s']:>10,.0f} sim s/wall s {res['peak_rss_mb']:>8.1f} MB peak RSS",
                  flush=True)
    if args.json:
        keys = ("scenario", "decisions_per_s", "sim_s_per_wall_s", "peak_rss_mb")
        print(json.dumps([{k: r[k] for k in keys} for r in results], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
