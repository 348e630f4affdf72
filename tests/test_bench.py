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
    assert out.returncode == 2 and "unknown scenario 'gridenv/Atlantis-v1'" in out.stderr
    out = run("--min-seconds", "-1")
    assert out.returncode == 2 and "--min-seconds: must be a finite number of seconds > 0" in out.stderr


def test_names_and_yaml_paths_are_accepted(tmp_path) -> None:
    import yaml

    raw = yaml.safe_load(open("configs/scenarios/metro.yaml"))
    raw["name"] = "bench-grid"
    path = tmp_path / "bench-grid.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = run("--json", "--scenarios", f"metro,{path}", "--min-seconds", "0.2")
    assert out.returncode == 0, out.stderr
    from gridenv.envs.registration import env_id

    assert [r["scenario"] for r in json.loads(out.stdout)] == [env_id("metro"), env_id("bench-grid")]


def test_a_failing_child_is_reported_not_waited_for(tmp_path) -> None:
    """The child process cannot load its scenario: reported with the id, exit 1, no hang."""
    code = ("import sys, gridenv.bench as b, gridenv.envs.registration as r\n"
            "real = r.resolve_scenario\n"
            "def gone(spec):\n"
            "    ref = real(spec)\n"
            "    return r.ScenarioRef(ref.name, ref.env_id, '/nonexistent/gone.yaml', True)\n"
            "r.resolve_scenario = gone\n"
            "sys.exit(b.main(['--scenarios', 'metro', '--min-seconds', '0.2']))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    from gridenv.envs.registration import env_id

    assert (f"scenario /nonexistent/gone.yaml ({env_id('metro')}) failed: ScenarioError: "
            "scenario file /nonexistent/gone.yaml not found" in out.stderr)
