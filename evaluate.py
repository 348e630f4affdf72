#!/usr/bin/env python
"""Evaluate routing policies on a benchmark suite and write the leaderboard.

    python evaluate.py --suite smoke --policies random,jsq,slo-greedy --out /tmp/lb
    python evaluate.py --suite standard --policies ppo=runs/metro/best_model.zip,jsq,slo-greedy
    python evaluate.py --report claims            # centralized vs distributed-edge, slo-greedy

Writes into --out: leaderboard.json (schema: agents/evaluation.py), leaderboard.csv,
leaderboard.md, reward_by_scenario.png, cost_vs_slo.png, normalized_score_iqm.png, and with
--tb-logdir learning_curves.png; with --report claims also claims.md and claims.json.
Every policy runs on the same (scenario, seed) pairs; the numbers do not depend on --workers
or --backend. --backend ray runs each episode as a Ray task, on the cluster at --ray-address
(auto, ray://host:10001) or on a local Ray with --workers CPUs (pip install -e '.[ray]'). An
episode that fails is retried twice; if it still fails, the run exits with status 1 and lists
each failed episode (policy, scenario, seed, error).

--report claims runs the `claims` suite (centralized vs distributed-edge: same 8 H100s, demand
and prices) and prints mean network RTT, TTFT p50 and efficiency (goodput tokens per $ and per
kWh) beside the brief's "45 ms -> 12 ms" and "+30%". Its default policy is slo-greedy: it routes
on predicted TTFT, RTT included, so on distributed-edge requests stay at their local edge unless
it is congested, which is the premise of the brief's figures (jsq ignores RTT and spreads
requests over remote edges too). Pass --policies to report others as well.
Bad input (unknown policy, suite or scenario, missing file) exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


def _arg(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class Args:
    suite: str | None = _arg(None, "benchmark suite in the suites file (default: standard; "
                                   "claims with --report claims)")
    policies: str | None = _arg(None, "comma-separated policies: heuristic names, SB3 .zip or ONNX "
                                      "paths, optionally label=path (default: every heuristic; "
                                      "slo-greedy with --report claims)")
    out: str | None = _arg(None, "output directory (default: leaderboards/<suite>)")
    workers: int = _arg(min(2, os.cpu_count() or 1), "worker processes running episodes (--backend "
                                                      "ray without --ray-address: CPUs of the local Ray)")
    backend: str = _arg("local", "where episodes run: local (worker processes on this machine) or "
                                 "ray (a Ray task each)", choices=["local", "ray"])
    ray_address: str | None = _arg(None, "Ray cluster for --backend ray: auto, ray://host:10001 "
                                         "(default: $RAY_ADDRESS, else a local Ray for the run)")
    scenarios: str | None = _arg(None, "comma-separated scenarios replacing the suite's")
    seeds: str | None = _arg(None, "comma-separated seeds replacing the suite's")
    report: str | None = _arg(None, "extra report: 'claims' checks the brief's edge figures",
                              choices=["claims"])
    tb_logdir: str | None = _arg(None, "TensorBoard log directory of a training run: plot its "
                                       "learning curves")
    suites_file: str | None = _arg(None, "suites YAML (default: configs/suites.yaml)")
    resamples: int = _arg(2000, "bootstrap resamples for the 95%% confidence intervals")
    quiet: bool = _arg(False, "no progress output")


def parse_args(argv=None) -> Args:
    summary, _, details = __doc__.partition("\n\n")
    p = argparse.ArgumentParser(description=summary, epilog=details,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(Args):
        flag = "--" + f.name.replace("_", "-")
        meta = dict(f.metadata)
        if f.type in (bool, "bool"):
            p.add_argument(flag, action="store_true", help=meta["help"])
        else:
            typ = int if f.type in (int, "int") else str
            p.add_argument(flag, type=typ, default=f.default, **meta)
    return Args(**vars(p.parse_args(argv)))


def _int_list(text: str, flag: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        vals = []
    if not vals or min(vals) < 0:
        raise ValueError(f"{flag}: expected comma-separated non-negative integers, got {text!r}")
    return vals


def fail(msg: str) -> int:
    """Bad input: one line on stderr, exit status 2."""
    print(f"evaluate.py: error: {msg}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    args = parse_args(argv)
    # Imported after argument parsing so --help is instant.
    from agents.evaluation import evaluate, get_suite, parse_policies
    from agents.registry import load_policy

    suite_name = args.suite or ("claims" if args.report == "claims" else "standard")
    default_policies = "slo-greedy" if args.report == "claims" else None
    try:
        if args.workers < 1:
            raise ValueError("--workers must be at least 1")
        if args.resamples < 1:
            raise ValueError("--resamples must be at least 1")
        if args.ray_address and args.backend != "ray":
            raise ValueError("--ray-address needs --backend ray")
        if args.backend == "ray":
            from agents.backends import require_ray

            require_ray()  # BackendUnavailable (an ImportError) says how to install it
        seeds = _int_list(args.seeds, "--seeds") if args.seeds else None
        scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()] if args.scenarios else None
        suite = get_suite(suite_name, args.suites_file, scenarios=scenarios, seeds=seeds)
        if args.report == "claims":
            missing = {"centralized", "distributed-edge"} - set(suite.scenarios)
            if missing:
                raise ValueError(f"--report claims needs scenarios {sorted(missing)} in the suite")
        if args.policies:
            policies = parse_policies(args.policies)
        else:
            from agents.heuristics import heuristic_names

            policies = parse_policies(default_policies or heuristic_names())
        for p in policies:
            load_policy(p.spec)  # fail now, not in a worker
        if args.tb_logdir and not Path(args.tb_logdir).is_dir():
            raise FileNotFoundError(f"--tb-logdir {args.tb_logdir}: no such directory")
    except (ValueError, FileNotFoundError, ImportError) as e:
        return fail(str(e))

    out = Path(args.out or Path("leaderboards") / suite.name)
    n_eps = (len(policies) + (not any(p.spec == "random" for p in policies))) \
        * len(suite.scenarios) * len(suite.seeds)
    if not args.quiet:
        where = (f"Ray ({args.ray_address or os.environ.get('RAY_ADDRESS') or f'local, {args.workers} CPUs'})"
                 if args.backend == "ray" else f"{args.workers} worker(s)")
        print(f"suite {suite.name}: {len(suite.scenarios)} scenarios x {len(suite.seeds)} seeds, "
              f"{n_eps} episodes on {where} -> {out}", file=sys.stderr)
    progress, bar = _progress(args.quiet, n_eps)
    t0 = time.perf_counter()
    try:
        lb = evaluate(suite, policies, workers=args.workers, progress=progress,
                      resamples=args.resamples, backend=args.backend, ray_address=args.ray_address)
    except RuntimeError as e:  # episodes failed on every attempt: agents.backends.TaskFailures
        print(f"evaluate.py: {e}", file=sys.stderr)
        return 1
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - t0

    from agents import report

    paths = report.write_leaderboard(lb, out)
    if args.tb_logdir:
        lc = report.plot_learning_curves(args.tb_logdir, out / "learning_curves.png")
        if lc:
            paths.append(lc)
    md = report.leaderboard_markdown(lb)
    print(md.split("\n## ")[0].rstrip())  # the aggregate table
    if args.report == "claims":
        text, data = report.claims_report(lb, [p.label for p in policies])
        (out / "claims.md").write_text("```\n" + text + "```\n")
        (out / "claims.json").write_text(json.dumps(data, indent=1) + "\n")
        paths += [out / "claims.md", out / "claims.json"]
        print()
        print(text, end="")
    if not args.quiet:
        print(f"{n_eps} episodes in {elapsed:.1f} s; wrote {', '.join(p.name for p in paths)} "
              f"to {out}", file=sys.stderr)
    return 0


def _progress(quiet: bool, total: int):
    """A tqdm bar on a terminal, else one line per finished episode (both on stderr)."""
    if quiet:
        return None, None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, unit="ep", file=sys.stderr)

        def update(done, total, rec, status):
            if status.event != "done":  # a failure or a retry: its own line above the bar
                bar.write(f"{status.name} {'FAILED' if status.event == 'failed' else 'failed, retrying'}: "
                          f"{status.error}", file=sys.stderr)
            fails = f"{status.failed} failed, " if status.failed else ""
            bar.set_postfix_str(f"{fails}{status.name}")
            if status.event != "retry":
                bar.update(1)

        return update, bar
    from agents.evaluation import print_progress

    return print_progress, None


if __name__ == "__main__":
    sys.exit(main())
