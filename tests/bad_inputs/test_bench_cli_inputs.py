"""``python -m gridenv.bench``: bad flags are usage errors (exit 2, one line, no traceback); a
failing or stuck child process is reported by name and never leaves the parent waiting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gridenv.envs.registration import env_id

METRO = env_id("metro")
ATLANTIS = env_id("atlantis")
BENCH = ("-m", "gridenv.bench")
REPO = Path(__file__).resolve().parents[2]

# (id, flags, fragments of the one-line error)
CASES = [
    ("min-seconds-nan", ["--min-seconds", "nan"], ["--min-seconds", "'nan'", "finite"]),
    ("min-seconds-inf", ["--min-seconds", "inf"], ["--min-seconds", "'inf'"]),
    ("min-seconds-minus-inf", ["--min-seconds=-inf"], ["--min-seconds", "'-inf'"]),
    ("min-seconds-zero", ["--min-seconds", "0"], ["--min-seconds", "'0'", "> 0"]),
    ("min-seconds-negative", ["--min-seconds=-1"], ["--min-seconds", "'-1'"]),
    ("min-seconds-text", ["--min-seconds", "soon"], ["--min-seconds", "'soon'"]),
    ("timeout-zero", ["--timeout-s", "0"], ["--timeout-s", "'0'"]),
    ("timeout-nan", ["--timeout-s", "NaN"], ["--timeout-s", "'NaN'"]),
    ("unknown-scenario", ["--scenarios", "atlantis"], ["'atlantis'", "metro", "env id", "YAML"]),
    ("unknown-id", ["--scenarios", ATLANTIS], [f"'{ATLANTIS}'"]),
    ("empty-scenario-list", ["--scenarios", ","], ["--scenarios", "','"]),
    ("missing-yaml", ["--scenarios", "nowhere/x.yaml"], ["nowhere/x.yaml", "not found"]),
    ("unknown-flag", ["--min-secs", "3"], ["--min-secs"]),
]


@pytest.fixture(scope="module")
def usage_runs() -> dict[str, subprocess.CompletedProcess]:
    """Every usage-error case run at once (each start-up imports gymnasium: seconds each)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = {cid: (flags, subprocess.Popen([sys.executable, *BENCH, *flags], cwd=REPO, env=env, text=True,
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE))
             for cid, flags, _ in CASES}
    runs = {}
    try:
        for cid, (flags, p) in procs.items():
            stdout, stderr = p.communicate(timeout=180)  # a hang fails the test instead of blocking it
            runs[cid] = subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)
    finally:
        for _, p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    return runs


@pytest.mark.parametrize("case_id, fragments", [(c[0], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_flag_is_a_one_line_usage_error(usage_runs, assert_usage_error, case_id, fragments) -> None:
    out = usage_runs[case_id]
    assert_usage_error(out, "error", *fragments)
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stdout == ""


def test_bad_scenario_yaml_is_a_usage_error(run_cli, assert_usage_error, tiny_yaml, tiny_text) -> None:
    path = tiny_yaml(tiny_text + "horizon_s: 40\n")
    out = run_cli(*BENCH, "--scenarios", str(path), timeout=120)
    assert_usage_error(out, str(path), "duplicate key 'horizon_s'", "line 26")


def test_failing_child_is_reported_and_the_others_still_run(run_cli, tiny_yaml, tiny_text) -> None:
    """A scenario that validates but cannot be built (70B model on one L4) fails in its child."""
    bad = tiny_yaml(tiny_text.replace("gpu: L4, replicas: 1, model: llama-3-8b, weight_dtype: fp8",
                                      "gpu: L4, replicas: 1, model: llama-3-70b, weight_dtype: fp8")
                    .replace("{llama-3-8b: 1.0}", "{llama-3-8b: 1.0, llama-3-70b: 0.0}")
                    .replace("name: tiny", "name: nofit"), name="nofit.yaml")
    good = tiny_yaml()
    out = run_cli(*BENCH, "--json", "--scenarios", f"{bad},{good}", "--min-seconds", "0.2", timeout=240)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert f"scenario {bad} (" in out.stderr and "does not fit on 1 x L4" in out.stderr
    assert '"decisions_per_s"' in out.stdout  # the good one still ran


def test_stuck_child_times_out(run_cli) -> None:
    out = run_cli(*BENCH, "--scenarios", "metro", "--min-seconds", "60", "--timeout-s", "1", timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"scenario {METRO} failed: timed out after 1 s" in out.stderr
