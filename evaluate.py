#!/usr/bin/env python
"""Evaluate routing policies on a benchmark suite and write the leaderboard.

    python evaluate.py --suite smoke --policies random,jsq,slo-greedy --out /tmp/lb
    python evaluate.py --suite standard --policies ppo-metro=models/metro,jsq,llm-d
    python evaluate.py --suite smoke --scenarios path/to/my.yaml --policies jsq,llm-d
    python evaluate.py --report claims            # centralized vs distributed-edge, slo-greedy
    python evaluate.py --merge lb-metro/leaderboard.json lb-rag/leaderboard.json --out lb-all

Writes into --out: leaderboard.json (schema: python -m gridenv schemas leaderboard),
leaderboard.csv, leaderboard.md, reward_by_scenario.png, cost_vs_slo.png,
normalized_score_iqm.png, with --tb-logdir learning_curves.png, with --report claims also
claims.md and claims.json. Every policy runs on the same (scenario, seed) pairs; the numbers do
not depend on --workers or --backend. A trained policy runs only on the scenarios its
interface fits (observation size, site slots, batch levels); the others are listed as skipped.
An episode whose worker process died is retried twice; an episode that raises is not (it would
raise again). Failed episodes are listed by name; the leaderboard of the rest is still written,
and the exit status is 1. Bad input exits with status 2 and one line (--debug: the traceback).

--merge runs nothing: it merges the episodes of leaderboards evaluated piece by piece (one
scenario or policy per run) into one leaderboard, recomputed as if evaluated at once, and
writes the same files (agents/merge.py says what it refuses). It is a mode of this script, not
a command of its own, because its output, --out, --resamples, --report and the error
handling are this script's.
"""

import sys

from agents.arguments import EvalArgs, parse, run_main


def write_outputs(lb: dict, out, args: EvalArgs, claims_policies: list[str] | None) -> list:
    """The leaderboard files, the aggregate table on stdout and the --report claims; the paths."""
    import json

    from agents import report

    paths = report.write_leaderboard(lb, out)
    if args.tb_logdir:
        lc = report.plot_learning_curves(args.tb_logdir, out / "learning_curves.png")
        if lc:
            paths.append(lc)
    print(report.leaderboard_markdown(lb).split("\n## ")[0].rstrip())  # the aggregate table
    if args.report == "claims":
        text, data = report.claims_report(lb, claims_policies)
        (out / "claims.md").write_text("```\n" + text + "```\n")
        (out / "claims.json").write_text(json.dumps(data, indent=1) + "\n")
        paths += [out / "claims.md", out / "claims.json"]
        print()
        print(text, end="")
    return paths


def out_dir(path) -> "Path":
    """--out as a Path; ValueError (before any work) if it names an existing file."""
    from pathlib import Path

    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a directory")
    return out


def merge_main(args: EvalArgs) -> int:
    """--merge: one leaderboard from the episodes of several (agents.merge)."""
    from pathlib import Path

    from agents.merge import merge_leaderboards

    if args.tb_logdir and not Path(args.tb_logdir).is_dir():
        raise FileNotFoundError(f"--tb-logdir {args.tb_logdir}: no such directory")
    out = out_dir(args.out)
    lb, warnings = merge_leaderboards(args.merge, resamples=args.resamples)
    if args.report == "claims":
        missing = {"centralized", "distributed-edge"} - set(lb["suite"]["scenarios"])
        if missing:
            raise ValueError(f"--report claims needs scenarios {sorted(missing)} in the merged leaderboards")
    for w in warnings:
        print(f"evaluate.py: warning: {w}", file=sys.stderr)
    paths = write_outputs(lb, out, args, None)
    if not args.quiet:
        print(f"merged {len(args.merge)} leaderboards: {len(lb['episodes'])} episodes, "
              f"{len(lb['suite']['scenarios'])} scenarios, {len(lb['policies'])} policies; wrote "
              f"{', '.join(p.name for p in paths)} to {out}", file=sys.stderr)
    for f in lb["failures"]:  # failed in an input, and no other input has the episode
        print(f"evaluate.py: failed in its run, not merged: policy {f['policy']!r} on {f['scenario']} "
              f"seed {f['seed']}: {f['error']}", file=sys.stderr)
    return 1 if lb["failures"] else 0


def main(args: EvalArgs) -> int:
    import os
    import time
    from pathlib import Path

    if args.merge is not None:
        return merge_main(args)

    from agents.arguments import int_list
    from agents.evaluation import evaluate, get_suite, parse_policies, print_progress
    from agents.heuristics import heuristic_names
    from agents.registry import load_policy

    # 2. The suite, its scenarios and seeds, and the policies (each loaded once: a bad spec
    #    fails here, not in a worker).
    if args.backend == "ray":
        from agents.tasks import require_ray

        require_ray()  # BackendUnavailable (an ImportError) says how to install it
    suite_name = args.suite or ("claims" if args.report == "claims" else "standard")
    seeds = int_list(args.seeds, "--seeds") if args.seeds else None
    scenarios = None if args.scenarios is None else [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if scenarios == []:  # not the whole suite in silence
        raise ValueError(f"--scenarios: expected comma-separated scenarios, got {args.scenarios!r}")
    suite = get_suite(suite_name, args.suites_file, scenarios=scenarios, seeds=seeds)
    if args.report == "claims":
        missing = {"centralized", "distributed-edge"} - set(suite.scenarios)
        if missing:
            raise ValueError(f"--report claims needs scenarios {sorted(missing)} in the suite")
    default = "slo-greedy" if args.report == "claims" else heuristic_names()
    policies = parse_policies(default if args.policies is None else args.policies)
    for p in policies:
        load_policy(p.spec)
    if args.tb_logdir and not Path(args.tb_logdir).is_dir():
        raise FileNotFoundError(f"--tb-logdir {args.tb_logdir}: no such directory")
    out = out_dir(args.out or Path("leaderboards") / suite.name)

    # 3. Every episode, on local worker processes or Ray, with a progress line per episode.
    if not args.quiet:
        where = (f"Ray ({args.ray_address or os.environ.get('RAY_ADDRESS') or f'local, {args.workers} CPUs'})"
                 if args.backend == "ray" else f"{args.workers} worker(s)")
        n_pol = len(policies) + (not any(p.spec == "random" for p in policies))  # random: the reference
        print(f"suite {suite.name}: {len(suite.scenarios)} scenarios x {len(suite.seeds)} seeds, "
              f"{n_pol} policies (random included) on {where} -> {out}", file=sys.stderr)
    t0 = time.perf_counter()
    lb = evaluate(suite, policies, workers=args.workers, progress=None if args.quiet else print_progress,
                  resamples=args.resamples, backend=args.backend, ray_address=args.ray_address)
    elapsed = time.perf_counter() - t0

    # 4. The leaderboard files (also when some episodes failed: those are listed in them).
    paths = write_outputs(lb, out, args, [p.label for p in policies])
    for s in lb["skipped"]:
        print(f"evaluate.py: skipped {s['policy']} on {s['scenario']}: {s['reason']}", file=sys.stderr)
    if not args.quiet:
        print(f"{len(lb['episodes'])} episodes in {elapsed:.1f} s; wrote {', '.join(p.name for p in paths)} "
              f"to {out}", file=sys.stderr)
    if lb["failures"]:
        print(f"evaluate.py: {len(lb['failures'])} of {len(lb['failures']) + len(lb['episodes'])} "
              f"episodes failed (the leaderboard in {out} covers the others):", file=sys.stderr)
        for f in lb["failures"]:
            print(f"  policy {f['policy']!r} on {f['scenario']} seed {f['seed']}: {f['error']} "
                  f"({f['attempts']} attempt{'s' * (f['attempts'] > 1)})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # worker processes are spawned: they must not run this again
    # 1. Arguments (tyro, from agents.arguments.EvalArgs), checked before anything is loaded.
    args, _ = parse(EvalArgs, sys.argv[1:], prog="evaluate.py", description=__doc__.split("\n")[0])
    sys.exit(run_main("evaluate.py", args.debug, lambda: main(args)))
