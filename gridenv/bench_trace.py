"""Peak memory and speed of a long Mooncake-format replay with prefix caching.

    python -m gridenv.bench_trace                       # one hour, synthetic Mooncake-format trace
    python -m gridenv.bench_trace --trace path/to/mooncake_trace.jsonl --hours 1

Runs in a fresh child process (so the peak RSS is the replay's own) on the ``centralized``
scenario (8 x H100, Llama-3-8B) with ``--hours`` of trace replay, prefix caching on, under a
random valid policy (a uniformly drawn feasible site, or shed when none is), and prints the
decisions, simulated hours, wall seconds, prefix hit rate and peak RSS.

Without ``--trace``, a synthetic trace in the Mooncake JSONL format is written to a temporary
file, with the published shape of Mooncake's one-hour trace (Qin et al., "Mooncake", FAST'25:
23,608 requests in an hour, mean input 7,590 and mean output 182 tokens, 512-token hash
blocks): Poisson arrivals; each request reads one of 2,000 shared documents (Zipf-popular, 2-20
blocks, mean 7,700 input tokens) followed by 1-8 blocks of its own.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["write_synthetic_mooncake", "replay", "main"]


def write_synthetic_mooncake(path: Path, hours: float, seed: int = 0) -> int:
    """Write a Mooncake-format JSONL trace of `hours` (see the module docstring); returns the
    number of requests."""
    rng = np.random.default_rng(seed)
    rate = 23_608 / 3600.0
    n = int(rng.poisson(rate * 3600.0 * hours))
    t_ms = np.sort(rng.uniform(0.0, 3600e3 * hours, size=n)).astype(np.int64)
    n_docs = 2000
    popularity = 1.0 / np.arange(1, n_docs + 1) ** 0.9
    doc = rng.choice(n_docs, size=n, p=popularity / popularity.sum())
    doc_blocks = np.random.default_rng(seed + 1).integers(2, 21, size=n_docs)
    own_blocks = rng.integers(1, 9, size=n)
    output = np.clip(np.rint(rng.lognormal(np.log(120.0), 0.9, size=n)), 1, 2000).astype(np.int64)
    next_id = 10_000_000
    with path.open("w") as f:
        for i in range(n):
            d = int(doc[i])
            shared = [d * 64 + b for b in range(int(doc_blocks[d]))]
            own = list(range(next_id, next_id + int(own_blocks[i])))
            next_id += int(own_blocks[i])
            n_blocks = len(shared) + len(own)
            length = n_blocks * 512 - int(rng.integers(0, 512))
            f.write(json.dumps({"timestamp": int(t_ms[i]), "input_length": length,
                                "output_length": int(output[i]), "hash_ids": shared + own}) + "\n")
    return n


def replay(trace: str, hours: float, scenario: str, seed: int) -> dict:
    """Run the replay in this process; returns the figures."""
    from gridenv.core.scenario import load_scenario
    from gridenv.core.simulator import SHED, GridSimulator

    import yaml

    raw = yaml.safe_load(scenario_yaml(scenario).read_text())
    w = raw["workload"]
    raw["horizon_s"] = 3600.0 * hours
    raw["workload"] = {  # the trace sets times and lengths; the rest of the workload stays
        "arrivals": "trace", "trace": {"path": trace, "format": "mooncake", "slo_class": "chat"},
        **{k: w[k] for k in ("classes", "models", "residency_share") if k in w}}
    sc = load_scenario(raw)
    start = time.perf_counter()
    sim = GridSimulator(sc)
    sim.reset(np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 12345)
    decisions = 0
    while not sim.done:
        feasible = np.flatnonzero(sim.snapshot().feasible)
        sim.decide(int(feasible[rng.integers(len(feasible))]) if len(feasible) else SHED)
        decisions += 1
    wall = time.perf_counter() - start
    s = sim.summary()
    return {
        "requests": s["arrived"], "decisions": decisions, "sim_hours": sim.now / 3600.0,
        "wall_s": wall, "decisions_per_s": decisions / wall,
        "prefix_hit_rate": s["prefix_hit_rate"], "completed": s["completed"],
        "over_context": s["over_context"], "timed_out": s["timed_out"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }


def scenario_yaml(spec: str) -> Path:
    """The YAML file of a scenario name, env id or path (the one resolver); ScenarioError names a bad one."""
    from gridenv.core.scenario import scenario_file
    from gridenv.envs.registration import resolve_scenario

    return scenario_file(resolve_scenario(spec).source)


def _replay_in_child(trace: str | None, hours: float, scenario: str, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        if trace is None:
            trace = str(Path(tmp) / "mooncake_synthetic.jsonl")
            write_synthetic_mooncake(Path(trace), hours, seed)
        return replay(trace, hours, scenario, seed)


def main(argv: list[str] | None = None) -> int:
    from gridenv.bench import run_in_child
    from gridenv.cli import OneLineParser

    parser = OneLineParser(prog="python -m gridenv.bench_trace", description=__doc__.split("\n")[0])
    parser.add_argument("--trace", default=None, help="a Mooncake JSONL file (default: a synthetic one)")
    parser.add_argument("--hours", type=float, default=1.0, help="simulated hours of replay (default 1)")
    parser.add_argument("--scenario", default="centralized",
                        help="scenario name, env id or YAML path whose grid replays the trace (default centralized)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout-s", type=float, default=3600.0,
                        help="give up on the replay's child process after this many wall seconds (default 3600)")
    args = parser.parse_args(argv)
    if not args.hours > 0:
        parser.error(f"--hours must be positive, got {args.hours}")
    if not args.timeout_s > 0:
        parser.error(f"--timeout-s must be positive, got {args.timeout_s}")
    if args.trace is not None and not Path(args.trace).is_file():
        parser.error(f"--trace: no such file {args.trace!r}")
    try:
        scenario_yaml(args.scenario)
    except ValueError as e:
        parser.error(f"--scenario: {e}")
    res, err = run_in_child(mp.get_context("spawn"), _replay_in_child,
                            (args.trace, args.hours, args.scenario, args.seed), args.timeout_s)
    if err is not None:
        print(f"python -m gridenv.bench_trace: the replay failed: {err}", file=sys.stderr)
        return 1
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
