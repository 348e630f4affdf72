"""Shared pieces of the bad-input suite: a small valid scenario (known line numbers) and a
command-line runner that turns a hang into a failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: A small valid scenario; `workload.rate_rps` is on line 15 (the tests check reported lines).
TINY_YAML = """\
name: tiny
horizon_s: 20
regions:
  - {name: north, population: 1.0}
  - {name: south, population: 0.5}
sites:
  - {name: edge, region: north, kind: edge, gpu: L4, replicas: 1, model: llama-3-8b, weight_dtype: fp8, gpu_usd_per_h: 0.45}
  - {name: core, region: south, kind: core, gpu: H100, replicas: 1, model: llama-3-8b, gpu_usd_per_h: 3.0}
network:
  rtt_ms:
    north: [5, 30]
    south: [30, 5]
workload:
  arrivals: poisson
  rate_rps: 5
  classes:
    chat:
      share: 0.7
      prompt_tokens: {median: 500}
      output_tokens: {median: 100}
    code:
      share: 0.3
      prompt_tokens: {median: 1000}
      output_tokens: {median: 20}
  models: {llama-3-8b: 1.0}
"""


@pytest.fixture
def tiny_yaml(tmp_path: Path):
    """Write TINY_YAML (optionally edited) to a file; returns a function text -> path."""

    def write(text: str = TINY_YAML, name: str = "tiny.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture
def run_cli():
    """Run ``python <args>`` from the repo root with this checkout first on the path; a hang
    becomes a TimeoutExpired failure instead of a stuck test run."""

    def run(*args: str, timeout: float = 120, cwd: Path = REPO) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                              timeout=timeout, cwd=cwd, env=env)

    return run


def _assert_usage_error(out: subprocess.CompletedProcess, *needles: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    for needle in needles:
        assert needle in out.stderr, (needle, out.stderr)


@pytest.fixture
def assert_usage_error():
    """``check(completed_process, *needles)``: exit status 2, no traceback, needles in stderr."""
    return _assert_usage_error


@pytest.fixture
def tiny_text() -> str:
    return TINY_YAML
