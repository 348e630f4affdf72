"""Wall time of a heuristic benchmark suite on each backend (agents/tasks.py).

    python -m agents.bench_backends                    # standard suite: 1 process, local x2, ray x2
    python -m agents.bench_backends --suite smoke      # a quick look
    python -m agents.bench_backends --ray-address auto --modes ray   # on a running cluster

Runs every heuristic on every (scenario, seed) of the suite, the leaderboard's episodes without
the statistics, once per mode:

* ``single``: ``--backend local --workers 1``, one episode after another in this process;
* ``local``: ``--backend local --workers N``, N spawned worker processes;
* ``ray``: ``--backend ray``, a Ray task per episode, on a local Ray with N CPUs (started before
  the clock starts; its start-up time is printed apart) or on the cluster at ``--ray-address``.

Prints wall time, episodes/s and speed-up over ``single`` per mode, and checks that every mode
produced the same numbers (every field of every episode record except ``wall_s``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

MODES = ("single", "local", "ray")


def _numbers(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in records]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="standard", help="suite of configs/suites.yaml (default: standard)")
    p.add_argument("--policies", default=None, help="comma-separated heuristics (default: all)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="worker processes of `local`, CPUs of the local Ray (default: 2)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {', '.join(MODES)}")
    p.add_argument("--ray-address", default=None, help="Ray cluster (auto, ray://host:10001) for `ray`")
    p.add_argument("--suites-file", default=None, help="suites YAML (default: configs/suites.yaml)")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error(f"--workers must be at least 1, got {args.workers}")

    from agents.evaluation import REFERENCE_POLICY, EpisodeSpec, get_suite, parse_policies, run_episodes
    from agents.tasks import BackendUnavailable, ray_session
    from agents.heuristics import heuristic_names

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        p.error(f"--modes: unknown {bad}; choose from {', '.join(MODES)}")
    try:
        suite = get_suite(args.suite, args.suites_file)
        policies = parse_policies(args.policies or heuristic_names())
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    if not any(x.spec == REFERENCE_POLICY for x in policies):
        policies.append(parse_policies(REFERENCE_POLICY)[0])
    episodes = [EpisodeSpec(x.label, x.spec, sc, seed, suite.overrides, suite.scenario_files.get(sc))
                for x in policies for sc in suite.scenarios for seed in suite.seeds]
    print(f"suite {suite.name}: {len(policies)} policies x {len(suite.scenarios)} scenarios x "
          f"{len(suite.seeds)} seeds = {len(episodes)} episodes; {os.cpu_count()} CPUs here", flush=True)

    rows, reference = [], None
    for mode in modes:
        startup = None
        try:
            if mode == "ray":
                t0 = time.perf_counter()
                with ray_session(args.workers, args.ray_address) as ray:
                    startup = time.perf_counter() - t0
                    cpus = int(ray.cluster_resources().get("CPU", 0))
                    t0 = time.perf_counter()
                    records = run_episodes(episodes, args.workers, backend="ray", ray_address=args.ray_address)
                    wall = time.perf_counter() - t0
                label = f"ray ({cpus} CPUs{', ' + args.ray_address if args.ray_address else ''})"
            else:
                n = 1 if mode == "single" else args.workers
                t0 = time.perf_counter()
                records = run_episodes(episodes, n)
                wall = time.perf_counter() - t0
                label = "single process" if mode == "single" else f"local ({n} workers)"
        except BackendUnavailable as e:
            print(f"{mode}: skipped: {e}", file=sys.stderr)
            continue
        same = None
        if reference is None:
            reference = _numbers(records)
        else:
            same = _numbers(records) == reference
        rows.append((mode, label, wall, startup, same))
        print(f"  {label}: {wall:.1f} s", flush=True)

    base = next((w for m, _, w, _, _ in rows if m == "single"), None)
    print()
    print("| mode | wall time (s) | episodes/s | speed-up vs single | start-up (s) | same numbers |")
    print("|---|---:|---:|---:|---:|---|")
    for mode, label, wall, startup, same in rows:
        speed = f"{base / wall:.2f}x" if base else "n/a"
        print(f"| {label} | {wall:.1f} | {len(episodes) / wall:.1f} | {speed} | "
              f"{'' if startup is None else f'{startup:.1f}'} | "
              f"{'(reference)' if same is None else ('yes' if same else 'NO')} |")
    return 0 if all(s is not False for *_, s in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
