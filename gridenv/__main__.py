"""``python -m gridenv``: what is here (scenarios, heuristics, suites, commands) and the schemas.

    python -m gridenv                       # scenarios, heuristics, suites and commands
    python -m gridenv schemas               # the JSON Schema of every file format
    python -m gridenv schemas leaderboard   # one of them (names: see `python -m gridenv schemas --list`)

Heuristics and suites belong to the ``agents`` package; they are listed when it is importable
(the environment itself never needs it).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from gridenv.schemas import SCHEMAS, json_schema

COMMANDS = (
    ("python train.py", "train a PPO router (python train.py --help)"),
    ("python evaluate.py", "leaderboard of policies on a suite (python evaluate.py --help)"),
    ("python -m gridenv.bench", "simulator speed and memory per scenario"),
    ("python -m agents.export RUN_DIR --out DIR", "export a trained policy to ONNX + policy.json"),
    ("python -m gridenv.router serve --policy DIR", "HTTP routing service for an exported policy"),
    ("python -m gridenv.router.bench --policy DIR", "decision latency, in process and over HTTP"),
    ("python -m agents.bench_backends", "wall time of a suite on each backend"),
    ("python -m gridenv schemas [NAME]", "JSON Schemas of the file formats"),
)


def _optional(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def overview() -> str:
    from gridenv.core.scenario import load_scenario, scenario_names
    from gridenv.envs.registration import env_id, extra_scenario_ids, resolve_scenario

    lines = ["Scenarios (a name, an env id, or the path of a scenario YAML file works everywhere):"]
    for name in scenario_names():
        desc = load_scenario(name).description
        lines.append(f"  {name:<18} {env_id(name):<28} {desc}")
    for eid in extra_scenario_ids():  # registered scenario files outside configs/scenarios
        ref = resolve_scenario(eid)
        lines.append(f"  {ref.name:<18} {eid:<28} {load_scenario(ref.source).description} (not in standard)")
    heur = _optional("agents.heuristics")
    lines += ["", "Heuristic policies:"]
    lines += ([f"  {', '.join(heur.heuristic_names())}"] if heur else
              ["  (install the agents package: pip install -e .)"])
    ev = _optional("agents.evaluation")
    lines += ["", "Benchmark suites (configs/suites.yaml):"]
    if ev:
        for s in ev.load_suites().values():
            lines.append(f"  {s.name:<10} {len(s.scenarios)} scenarios x {len(s.seeds)} seeds: {s.description}")
    lines += ["", "Commands:"]
    lines += [f"  {cmd:<46} {what}" for cmd, what in COMMANDS]
    lines += ["", "File formats (python -m gridenv schemas NAME):"]
    lines += [f"  {n:<12} {e.files}" for n, e in SCHEMAS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gridenv", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    s = sub.add_parser("schemas", help="print JSON Schemas of the file formats")
    s.add_argument("name", nargs="?", help=f"one of: {', '.join(SCHEMAS)} (default: all)")
    s.add_argument("--list", action="store_true", help="only the names and the files they describe")
    args = ap.parse_args(argv)
    if args.cmd is None:
        print(overview())
        return 0
    if args.list:
        for n, e in SCHEMAS.items():
            print(f"{n:<12} {e.files}: {e.description}")
        return 0
    if args.name is not None and args.name not in SCHEMAS:
        print(f"python -m gridenv schemas: error: unknown schema {args.name!r}; "
              f"known: {', '.join(SCHEMAS)}", file=sys.stderr)
        return 2
    names = [args.name] if args.name else list(SCHEMAS)
    out = {}
    for n in names:
        try:
            out[n] = json_schema(n)
        except ImportError as err:
            print(f"python -m gridenv schemas: {n}: not available ({err})", file=sys.stderr)
            if args.name:
                return 2
    print(json.dumps(out[args.name] if args.name else out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
