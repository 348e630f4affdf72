"""The evaluation harness: the CLI end to end, the leaderboard schema, determinism, bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import yaml

from agents.evaluation import (
    RESULT_METRICS,
    SCHEMA_VERSION,
    Suite,
    evaluate,
    get_suite,
    load_suites,
    parse_policies,
)
from agents.heuristics import HEURISTICS
from gridenv.envs.registration import env_id
from agents.stats import bootstrap_ci, iqm, stratified_bootstrap_iqm

REPO = Path(__file__).resolve().parents[2]
TINY = Suite("tiny", "test", ("metro",), (3, 4), {"horizon_s": 20})


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "evaluate.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def _write_tb_events(logdir: Path) -> None:
    """A tiny TensorBoard run (tensorboard's own writer: no torch needed)."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    w = EventFileWriter(str(logdir / "PPO_1"))
    for i in range(5):
        value = Summary.Value(tag="rollout/ep_rew_mean", simple_value=float(i))
        w.add_event(Event(wall_time=time.time(), step=1000 * i, summary=Summary(value=[value])))
    w.close()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """`python evaluate.py --suite smoke` with every heuristic, 2 workers, a TensorBoard dir."""
    tmp = tmp_path_factory.mktemp("smoke")
    _write_tb_events(tmp / "tb")
    proc = run_cli("--suite", "smoke", "--out", str(tmp / "lb"), "--workers", "2",
                   "--tb-logdir", str(tmp / "tb"), timeout=900)  # 23 heuristics: ~3.5 min on 2 busy cores
    assert proc.returncode == 0, proc.stderr
    return tmp / "lb", proc


# ---------------------------------------------------------------------------- CLI end to end
def test_smoke_suite_writes_every_file(smoke):
    out, proc = smoke
    for name in ("leaderboard.json", "leaderboard.csv", "leaderboard.md", "reward_by_scenario.png",
                 "cost_vs_slo.png", "normalized_score_iqm.png", "learning_curves.png"):
        path = out / name
        assert path.is_file() and path.stat().st_size > 0, name
    for name in ("reward_by_scenario.png", "cost_vs_slo.png", "learning_curves.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| rank | policy |" in proc.stdout
    n = len(HEURISTICS) * 2 * 2  # every heuristic x 2 scenarios x 2 seeds
    assert f"[{n}/{n}]" in proc.stderr  # progress: a line per episode (stderr is not a TTY here)


def test_smoke_leaderboard_json_schema(smoke):
    lb = json.loads((smoke[0] / "leaderboard.json").read_text())
    assert lb["schema_version"] == SCHEMA_VERSION
    assert isinstance(lb["created_utc"], str) and isinstance(lb["gridenv_version"], str)
    suite = lb["suite"]
    assert suite["name"] == "smoke" and suite["overrides"] == {"horizon_s": 60}
    assert all(isinstance(s, str) for s in suite["scenarios"])
    assert all(isinstance(s, int) for s in suite["seeds"])
    assert lb["bootstrap"]["resamples"] == 2000 and lb["bootstrap"]["confidence"] == 0.95
    assert lb["crn_consistent"] is True and lb["complete"] is True
    assert lb["failures"] == [] and lb["skipped"] == []

    n_pol, n_sc, n_seed = len(HEURISTICS), len(suite["scenarios"]), len(suite["seeds"])
    assert set(lb["normalization"]) == set(suite["scenarios"])
    for ref in lb["normalization"].values():
        assert ref["best_heuristic"] in HEURISTICS
        assert ref["best_heuristic_reward"] >= ref["random_reward"]
        assert ref["used_in_score"] is True

    assert [p["rank"] for p in lb["policies"]] == list(range(1, n_pol + 1))
    assert {p["name"] for p in lb["policies"]} == set(HEURISTICS)
    for p in lb["policies"]:
        assert set(p) == {"rank", "name", "spec", "kind", "iqm_normalized_score", "iqm_ci95",
                          "mean_normalized_score", "mean_reward", "episodes"}
        assert p["kind"] == "heuristic" and p["episodes"] == n_sc * n_seed
        assert isinstance(p["iqm_normalized_score"], float)
        lo, hi = p["iqm_ci95"]
        assert lo <= p["iqm_normalized_score"] <= hi
    iqms = [p["iqm_normalized_score"] for p in lb["policies"]]
    assert iqms == sorted(iqms, reverse=True)
    rnd = next(p for p in lb["policies"] if p["name"] == "random")
    assert abs(rnd["mean_normalized_score"]) < 1e-9  # random is the 0 of the scale

    assert len(lb["results"]) == n_pol * n_sc
    for r in lb["results"]:
        assert set(r) == {"policy", "scenario", "episodes", "reward_mean", "reward_ci95",
                          "normalized_score_mean", *RESULT_METRICS}
        assert r["episodes"] == n_seed
        lo, hi = r["reward_ci95"]
        assert lo <= r["reward_mean"] <= hi
        for k in RESULT_METRICS:
            assert r[k] is None or isinstance(r[k], (int, float)), k
        assert 0 <= r["slo_attainment"] <= 1 and r["goodput_tokens_per_s"] > 0
        assert r["invalid_actions"] == 0

    assert len(lb["episodes"]) == n_pol * n_sc * n_seed
    for e in lb["episodes"]:
        assert set(e) == {"policy", "scenario", "seed", "reward", "decisions", "wall_s",
                          "reward_terms", "metrics"}
        assert isinstance(e["seed"], int) and isinstance(e["reward"], float)
        assert set(e["reward_terms"]) == {"goodput_value_usd", "energy_cost_usd", "gpu_cost_usd"}
        total = e["reward_terms"]["goodput_value_usd"] - e["reward_terms"]["energy_cost_usd"] \
            - e["reward_terms"]["gpu_cost_usd"]
        assert total == pytest.approx(e["reward"], rel=1e-9, abs=1e-9)


def test_smoke_csv_and_markdown(smoke):
    out = smoke[0]
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert len(rows) == len(HEURISTICS) * 2
    assert {"policy", "scenario", "reward_mean", "reward_ci95_low", "goodput_tokens_per_s",
            "slo_attainment", "ttft_p99_s", "tpot_p50_s", "energy_kwh", "cost_usd",
            "usd_per_mtok", "tokens_per_joule", "co2_kg"} <= set(rows[0])
    md = (out / "leaderboard.md").read_text()
    assert "## metro" in md and "## distributed-edge" in md
    assert md.count("| slo-greedy |") == 3  # aggregate table + one row per scenario


def test_same_seeds_for_every_policy(smoke):
    lb = json.loads((smoke[0] / "leaderboard.json").read_text())
    pairs = {}
    for e in lb["episodes"]:
        pairs.setdefault(e["policy"], set()).add((e["scenario"], e["seed"]))
        assert e["metrics"]["arrived"] > 0
    assert len({frozenset(v) for v in pairs.values()}) == 1


# ---------------------------------------------------------------------------- determinism
def _numbers(lb: dict) -> list:
    return [{k: v for k, v in e.items() if k != "wall_s"} for e in lb["episodes"]]


def test_worker_count_does_not_change_the_numbers():
    pols = parse_policies("p2c,jsq,slo-greedy")
    one = evaluate(TINY, pols, workers=1, resamples=200)
    two = evaluate(TINY, pols, workers=2, resamples=200)
    assert _numbers(one) == _numbers(two)
    assert one["results"] == two["results"]
    assert one["policies"] == two["policies"]


def test_heuristic_evaluation_never_imports_torch(tmp_path):
    code = (
        "import sys\n"
        "from agents.evaluation import Suite, evaluate, parse_policies\n"
        "from agents import report\n"
        "suite = Suite('t', 't', ('metro',), (1,), {'horizon_s': 10})\n"
        f"lb = evaluate(suite, parse_policies('jsq,p2c'), workers=1, resamples=50)\n"
        f"report.write_leaderboard(lb, {str(tmp_path)!r})\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("args, message", [
    (["--policies", "jsq,nonsense"], "unknown policy 'nonsense'"),
    (["--policies", "runs/nowhere/best_model.zip"], "no such file"),
    (["--suite", "nope"], "unknown suite 'nope'"),
    (["--scenarios", "atlantis"], "unknown scenario 'atlantis'"),
    (["--tb-logdir", "/nonexistent/tb"], "no such directory"),
    # were: a FileExistsError traceback after every episode had run; a leaderboard row named "";
    # every heuristic, and every scenario of the suite, in silence
    (["--out", "A_FILE", "--policies", "jsq", "--seeds", "0"], "--out A_FILE: exists and is not a directory"),
    (["--policies", "=models/metro"], "policy '=models/metro': empty label"),
    (["--policies", ""], "no policies given"),
    (["--policies", "jsq", "--scenarios", ",,"], "--scenarios: expected comma-separated scenarios, got ',,'"),
])
def test_bad_input_exits_2_with_one_clear_line(args, message, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    args = [str(a_file) if a == "A_FILE" else a for a in args]
    message = message.replace("A_FILE", str(a_file))
    proc = run_cli("--suite", "smoke", "--out", str(tmp_path), *args, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "leaderboard.json").exists()


def test_claims_report_prints_measured_and_claimed_figures(tmp_path):
    suites = tmp_path / "suites.yaml"  # the claims suite, shortened
    suites.write_text("claims:\n  scenarios: [centralized, distributed-edge]\n"
                      "  seeds: [10000]\n  overrides: {horizon_s: 40}\n")
    proc = run_cli("--report", "claims", "--suites-file", str(suites), "--out", str(tmp_path),
                   "--workers", "1", "--quiet")
    assert proc.returncode == 0, proc.stderr
    for text in ("mean network RTT (ms)", "TTFT p50 (ms)", "goodput tokens per $",
                 "goodput tokens per kWh", "45 -> 12 ms", "+30%", "policy slo-greedy"):
        assert text in proc.stdout
    data = json.loads((tmp_path / "claims.json").read_text())
    rtt = data["policies"]["slo-greedy"]["network_rtt_mean_ms"]
    assert rtt["distributed-edge"] < rtt["centralized"]


# ---------------------------------------------------------------------------- suites & stats
def test_suites_file():
    suites = load_suites()
    assert {"smoke", "standard", "claims"} <= set(suites)
    from gridenv.core.scenario import scenario_names

    assert sorted(suites["standard"].scenarios) == sorted(scenario_names())
    assert len(suites["standard"].seeds) == 10
    assert set(suites["claims"].scenarios) == {"centralized", "distributed-edge"}
    assert get_suite("smoke", scenarios=["gridenv/Metro-v1"]).scenarios == ("metro",)
    with pytest.raises(ValueError, match="known suites: .*smoke"):
        get_suite("nope")


def test_parse_policies():
    ps = parse_policies("jsq, ppo=runs/a/best_model.zip,runs/b/model.zip")
    assert [(p.label, p.spec, p.kind) for p in ps] == [
        ("jsq", "jsq", "heuristic"), ("ppo", "runs/a/best_model.zip", "file"),
        ("b/model", "runs/b/model.zip", "file")]
    with pytest.raises(ValueError, match="duplicate"):
        parse_policies("jsq,jsq")


def test_iqm_and_bootstrap():
    x = np.random.default_rng(0).normal(size=41)
    assert iqm(x) == pytest.approx(scipy.stats.trim_mean(x, 0.25))
    lo, hi = bootstrap_ci(x, resamples=500, seed=1)
    assert lo < x.mean() < hi
    assert bootstrap_ci(x, resamples=500, seed=1) == (lo, hi)  # seeded
    assert bootstrap_ci([2.0]) == (2.0, 2.0)
    # Stratified: runs are resampled within tasks, so constant tasks give a zero-width CI.
    point, lo, hi = stratified_bootstrap_iqm([[1.0] * 4, [5.0] * 4, [3.0] * 4], resamples=300)
    assert point == lo == hi == pytest.approx(3.0)
    point, lo, hi = stratified_bootstrap_iqm([x[:20], x[20:]], resamples=500)
    assert lo <= point <= hi and point == pytest.approx(iqm(x))


# ---------------------------------------------------------------------------- scenario files, run dirs
def _my_scenario(tmp_path: Path, name: str = "my-grid") -> Path:
    raw = yaml.safe_load((REPO / "configs" / "scenarios" / "metro.yaml").read_text())
    raw["name"] = name
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_scenario_yaml_path_works_in_evaluate(tmp_path):
    """`evaluate.py --scenarios path/to/my.yaml`: its name comes from the file, names and ids still work."""
    path = _my_scenario(tmp_path)
    suites = tmp_path / "suites.yaml"
    suites.write_text("quick:\n  scenarios: [metro]\n  seeds: [10000]\n  overrides: {horizon_s: 10}\n")
    proc = run_cli("--suites-file", str(suites), "--suite", "quick", "--scenarios",
                   f"{path},{env_id('metro')}", "--policies", "jsq", "--workers", "1", "--out",
                   str(tmp_path / "lb"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    lb = json.loads((tmp_path / "lb" / "leaderboard.json").read_text())
    assert lb["suite"]["scenarios"] == ["my-grid", "metro"]
    assert lb["suite"]["scenario_files"] == {"my-grid": str(path.resolve())}
    by = {(e["policy"], e["scenario"]): e for e in lb["episodes"]}
    # Same content as metro, same seed: the same episode.
    assert by[("jsq", "my-grid")]["reward"] == by[("jsq", "metro")]["reward"]


def test_a_scenario_file_named_like_a_builtin_is_refused(tmp_path):
    path = _my_scenario(tmp_path, "metro")
    proc = run_cli("--suite", "smoke", "--scenarios", str(path), "--out", str(tmp_path / "lb"))
    assert proc.returncode == 2 and "name 'metro' is the built-in scenario" in proc.stderr


def test_trained_policy_runs_only_where_its_interface_fits(tiny_metro_run, tmp_path):
    """A run directory as a policy: it runs on metro, is skipped (and said so) on continental."""
    suites = tmp_path / "suites.yaml"
    suites.write_text("quick:\n  scenarios: [metro, continental]\n  seeds: [10000]\n"
                      "  overrides: {horizon_s: 5}\n")
    proc = run_cli("--suites-file", str(suites), "--suite", "quick", "--policies",
                   f"ppo={tiny_metro_run},jsq", "--workers", "1", "--out", str(tmp_path / "lb"), "--quiet",
                   timeout=300)
    assert proc.returncode == 0, proc.stderr
    lb = json.loads((tmp_path / "lb" / "leaderboard.json").read_text())
    [skip] = lb["skipped"]
    assert (skip["policy"], skip["scenario"]) == ("ppo", "continental")
    import gymnasium as gym

    sizes = [gym.make(env_id(n)).observation_space.shape[0] for n in ("continental", "metro")]
    assert f"observation of {sizes[0]} elements, the policy takes {sizes[1]}" in skip["reason"]
    assert "evaluate.py: skipped ppo on continental: interface does not fit" in proc.stderr
    ran = {(e["policy"], e["scenario"]) for e in lb["episodes"]}
    assert ("ppo", "metro") in ran and ("ppo", "continental") not in ran
    assert ("jsq", "continental") in ran
    assert "Not run (the policy's interface does not fit" in (tmp_path / "lb" / "leaderboard.md").read_text()


def test_a_policy_that_fits_no_scenario_is_a_usage_error(tiny_metro_run, tmp_path):
    proc = run_cli("--suite", "smoke", "--scenarios", "continental", "--policies", f"ppo={tiny_metro_run}",
                   "--out", str(tmp_path / "lb"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("evaluate.py: error: ppo: fits none of the scenarios continental")


@pytest.mark.parametrize("args, flag", [
    (["--workers", "0"], "--workers must be at least 1, got 0"),
    (["--resamples", "0"], "--resamples must be at least 1"),
    (["--seeds", "1,x"], "--seeds: expected distinct comma-separated non-negative integers"),
    (["--seeds", "-1"], "--seeds"),
    (["--ray-address", "auto"], "--ray-address needs --backend ray"),
])
def test_bad_flags_exit_2_naming_the_flag(args, flag, tmp_path):
    proc = run_cli("--suite", "smoke", "--out", str(tmp_path), *args, timeout=60)
    assert proc.returncode == 2 and flag in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
