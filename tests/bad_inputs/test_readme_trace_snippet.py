"""The README's trace-replay snippet runs as written from the repo root: its relative
``../shared/...`` path resolves against the working directory, not ``configs/scenarios/``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TRACE_REL = "../shared/data/traces/azure_llm_2023/AzureLLMInferenceTrace_conv.csv"


def readme_snippet() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    matching = [b for b in blocks if TRACE_REL in b]
    assert len(matching) == 1, "the README's trace-replay snippet moved or changed its path"
    return matching[0]


RUNNER = """
import gymnasium as gym
import numpy as np
import gridenv
{snippet}
obs, info = env.reset(seed=0)
trace = env.unwrapped.scenario.workload.trace
print("TRACE", trace.path)
print("ARRIVALS", len(env.unwrapped.sim.arrivals))
obs, reward, *_ = env.step(np.array([env.unwrapped.max_sites, 0]))
assert np.isfinite(obs).all() and np.isfinite(reward)
"""


def run_snippet(cwd: Path) -> subprocess.CompletedProcess:
    code = RUNNER.format(snippet=readme_snippet())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_readme_snippet_from_the_repo_root() -> None:
    trace = (REPO / TRACE_REL).resolve()
    if not trace.is_file():
        pytest.skip(f"{trace} not found (a checkout without ../shared beside it)")
    out = run_snippet(REPO)
    assert out.returncode == 0, out.stderr
    assert f"TRACE {trace}" in out.stdout


def test_readme_snippet_resolves_against_the_working_directory(tmp_path: Path) -> None:
    """Same snippet in a layout made for the test (a small trace at ../shared/... of the cwd),
    so the path rule is checked on any checkout."""
    repo = tmp_path / "repo"
    repo.mkdir()
    trace = (repo / TRACE_REL).resolve()
    trace.parent.mkdir(parents=True)
    rows = [f"2023-11-16 18:{m:02d}:{s:02d}.0000000,{100 + s},{10 + m}" for m in range(2) for s in range(0, 60, 3)]
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(rows) + "\n")
    shutil.copy(REPO / "README.md", repo / "README.md")
    out = run_snippet(repo)
    assert out.returncode == 0, out.stderr
    assert f"TRACE {trace}" in out.stdout
    assert "ARRIVALS 40" in out.stdout  # 40 rows, 2 simulated minutes / rate_scale 4 < 900 s
