"""`python -m gridenv.bench`: its JSON output and its refusal of bad flags."""

from __future__ import annotations

import json
import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gridenv.bench", *args],
                          capture_output=True, text=True, timeout=300)


def test_json_output_has_the_documented_keys() -> None:
    out = run("--json", "--scenarios", "gridenv/Metro-v1", "--min-seconds", "0.3")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["scenario"] for r in rows] == ["gridenv/Metro-v1"]
    assert set(rows[0]) == {"scenario", "decisions_per_s", "sim_s_per_wall_s", "peak_rss_mb"}
    assert rows[0]["decisions_per_s"] > 0 and rows[0]["sim_s_per_wall_s"] > 0
    assert 10 < rows[0]["peak_rss_mb"] < 4096


def test_bad_flags_get_one_clear_line() -> None:
    out = run("--scenarios", "gridenv/Atlantis-v1")
    assert out.returncode == 2 and "unknown scenario id" in out.stderr and "Atlantis" in out.stderr
    out = run("--min-seconds", "-1")
    assert out.returncode == 2 and "--min-seconds: must be a finite number of seconds > 0" in out.stderr
