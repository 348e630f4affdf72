"""``python -m gridenv.fidelity``: replay public measured benchmarks through the engine.

Prints simulated vs measured throughput, TTFT and TPOT (median and mean) with % errors, fit and
held-out rows apart (``--json`` for the machine-readable form).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import tyro

from gridenv.fidelity.data import BENCHMARKS_PATH, load_benchmarks
from gridenv.fidelity.report import fidelity_table, format_markdown, format_table, summarize


@dataclass
class Args:
    """Replay measured serving benchmarks and compare."""

    stack: Optional[str] = None
    """Software stack (gridenv.core.perf.SOFTWARE_STACKS) the engine runs for every row
    (default: each row's own, its ``stack`` in the benchmark file)."""
    rows: list[str] = field(default_factory=list)
    """Row ids to replay (default: every row)."""
    json: bool = False
    """Print JSON (rows and summary) instead of the table."""
    markdown: bool = False
    """Print the README's markdown table instead."""
    benchmarks: Path = BENCHMARKS_PATH
    """Benchmark file."""


def main(argv: list[str] | None = None) -> int:
    args = tyro.cli(Args, args=argv)
    try:
        bench = load_benchmarks(args.benchmarks)
        table = fidelity_table(bench, args.stack, args.rows or None)
    except (KeyError, ValueError) as e:
        print(f"gridenv.fidelity: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    summary = summarize(table)
    if args.json:
        json.dump({"stack": args.stack, "rows": table, "summary": summary}, sys.stdout, indent=1)
        print()
    elif args.markdown:
        print(format_markdown(table, summary))
    else:
        print(f"software stack: {args.stack or 'each row its own (column stack)'}   benchmarks: {args.benchmarks.name}")
        print(format_table(table, summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
