"""``evaluate.py --merge``: leaderboards evaluated piece by piece merge into the one a single run makes."""

from __future__ import annotations

import copy
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from agents.evaluation import Suite, evaluate, parse_policies
from agents.merge import MergeError, merge_leaderboards
from agents.schemas import LeaderboardFile

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = ("metro", "distributed-edge")
SEEDS = (3, 4)
OVERRIDES = {"horizon_s": 20}
POLICIES = "random,jsq,slo-greedy"
RESAMPLES = 200


def tiny_suite(*scenarios: str) -> Suite:
    return Suite("tiny", "test", tuple(scenarios), SEEDS, dict(OVERRIDES))


def write_json(lb: dict, path: Path) -> Path:
    """leaderboard.json as evaluate.py writes it (validated on the way)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = LeaderboardFile.model_validate(lb).model_dump(mode="json")
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def merge_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "evaluate.py", "--merge", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Both scenarios in one run; each scenario alone; metro again with another policy (random
    again: an identical duplicate). The leaderboard dicts and their leaderboard.json paths."""
    tmp = tmp_path_factory.mktemp("merge")
    pols = parse_policies(POLICIES)
    lbs = {
        "both": evaluate(tiny_suite(*SCENARIOS), pols, workers=1, resamples=RESAMPLES),
        "metro": evaluate(tiny_suite("metro"), pols, workers=1, resamples=RESAMPLES),
        "edge": evaluate(tiny_suite("distributed-edge"), pols, workers=1, resamples=RESAMPLES),
        "metro-p2c": evaluate(tiny_suite("metro"), parse_policies("random,p2c"), workers=1,
                              resamples=RESAMPLES),
        "metro-jsq": evaluate(tiny_suite("metro"), parse_policies("jsq"), workers=1, resamples=RESAMPLES),
        "metro-slo": evaluate(tiny_suite("metro"), parse_policies("slo-greedy"), workers=1,
                              resamples=RESAMPLES),
    }
    # inputs are read in sorted path order (the command-line order does not matter): the
    # numbered directories put metro first, as in the single run
    paths = {k: write_json(lb, tmp / f"{i}-{k}" / "leaderboard.json")
             for i, (k, lb) in enumerate(lbs.items())}
    return lbs, paths, tmp


def _numbers(lb: dict) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "wall_s"} for e in lb["episodes"]]


def _edited(lb: dict, path: Path, edit) -> Path:
    lb = copy.deepcopy(lb)
    edit(lb)
    return write_json(lb, path)


def _refused(proc: subprocess.CompletedProcess, *parts: str) -> str:
    """The one error line of an exit-2 refusal, which must contain every part."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evaluate.py: error: "), proc.stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


# ---------------------------------------------------------------------------- the merge
def test_merging_two_single_scenario_runs_equals_one_run(runs, tmp_path):
    lbs, paths, _ = runs
    proc = merge_cli(str(paths["metro"]), str(paths["edge"]), "--out", str(tmp_path / "m"),
                     "--resamples", str(RESAMPLES))
    assert proc.returncode == 0, proc.stderr
    for name in ("leaderboard.json", "leaderboard.csv", "leaderboard.md", "reward_by_scenario.png",
                 "cost_vs_slo.png", "normalized_score_iqm.png"):
        assert (tmp_path / "m" / name).stat().st_size > 0, name
    merged = json.loads((tmp_path / "m" / "leaderboard.json").read_text())
    one = LeaderboardFile.model_validate(lbs["both"]).model_dump(mode="json")
    for key in ("normalization", "results", "policies", "bootstrap", "crn_consistent", "complete",
                "failures", "skipped", "schema_version"):
        assert merged[key] == one[key], key
    assert _numbers(merged) == _numbers(one)
    for key in ("scenarios", "seeds", "overrides", "scenario_files"):
        assert merged["suite"][key] == one["suite"][key], key
    desc = merged["suite"]["description"]
    assert str(paths["metro"]) in desc and str(paths["edge"]) in desc and "merge" in desc
    # the same table as evaluate.py prints, and the markdown has a section per scenario
    md = (tmp_path / "m" / "leaderboard.md").read_text()
    assert all(f"## {sc}" in md for sc in SCENARIOS)
    assert "| 1 | slo-greedy |" in proc.stdout or "| 1 | jsq |" in proc.stdout


def test_merging_one_policy_per_run_equals_one_run(runs):
    """jsq and slo-greedy evaluated apart (each run adds random) merge into the run of both."""
    lbs, paths, _ = runs
    lb, warnings = merge_leaderboards([paths["metro-slo"], paths["metro-jsq"]], resamples=RESAMPLES)
    assert not warnings
    merged = LeaderboardFile.model_validate(lb).model_dump(mode="json")
    one = LeaderboardFile.model_validate(lbs["metro"]).model_dump(mode="json")
    by_key = lambda rows: {(r["policy"], r["scenario"]): r for r in rows}  # noqa: E731
    assert by_key(merged["results"]) == by_key(one["results"])  # each run listed random last
    assert merged["normalization"] == one["normalization"]
    assert merged["policies"] == one["policies"]
    assert sorted(map(str, _numbers(merged))) == sorted(map(str, _numbers(one)))


def test_best_heuristic_is_of_the_merged_set(runs):
    """p2c, run only in the second metro file, takes part in metro's normalization."""
    lbs, paths, _ = runs
    lb, _ = merge_leaderboards([paths["metro"], paths["metro-p2c"]], resamples=RESAMPLES)
    rewards = {r["policy"]: r["reward_mean"] for r in lb["results"] if r["scenario"] == "metro"}
    assert set(rewards) == {"random", "jsq", "slo-greedy", "p2c"}
    best = max((p for p in rewards if p != "random"), key=rewards.get)
    assert lb["normalization"]["metro"]["best_heuristic"] == best
    assert lb["normalization"]["metro"]["best_heuristic_reward"] == rewards[best]
    assert lb["normalization"]["metro"]["random_reward"] == rewards["random"]


def test_identical_duplicates_are_kept_once(runs):
    lbs, paths, _ = runs
    lb, _ = merge_leaderboards([paths["metro"], paths["metro-p2c"]], resamples=RESAMPLES)
    keys = [(e["policy"], e["scenario"], e["seed"]) for e in lb["episodes"]]
    assert len(keys) == len(set(keys)) == 4 * len(SEEDS)  # random once, jsq, slo-greedy, p2c
    assert next(r for r in lb["results"] if r["policy"] == "random")["episodes"] == len(SEEDS)


def test_same_inputs_in_any_order_give_the_same_leaderboard(runs):
    _, paths, _ = runs
    inputs = [paths["metro"], paths["edge"], paths["metro-p2c"]]
    seen = []
    for order in itertools.permutations(inputs):
        lb, _ = merge_leaderboards(order, resamples=RESAMPLES)
        data = LeaderboardFile.model_validate(lb).model_dump(mode="json")
        data.pop("created_utc")
        seen.append(json.dumps(data, sort_keys=True))
    assert len(set(seen)) == 1
    assert json.loads(seen[0])["suite"]["scenarios"] == list(SCENARIOS)  # sorted path order: metro first


# ---------------------------------------------------------------------------- refusals
def test_missing_file_is_refused(runs, tmp_path):
    _, paths, _ = runs
    _refused(merge_cli(str(paths["metro"]), str(tmp_path / "nowhere.json"), "--out", str(tmp_path / "m")),
             f"{tmp_path / 'nowhere.json'}: no such file")
    assert not (tmp_path / "m").exists()


def test_a_file_that_is_not_json_is_refused(runs, tmp_path):
    _, paths, _ = runs
    bad = tmp_path / "leaderboard.json"
    bad.write_text("suite: smoke\n")
    _refused(merge_cli(str(paths["metro"]), str(bad), "--out", str(tmp_path / "m")),
             f"{bad}: invalid JSON")


def test_a_file_that_is_not_a_leaderboard_is_refused_naming_the_field(runs, tmp_path):
    lbs, paths, _ = runs
    bad = _edited(lbs["edge"], tmp_path / "x.json", lambda lb: None)
    data = json.loads(bad.read_text())
    del data["normalization"]
    data["episodes"][0]["reward"] = "high"
    bad.write_text(json.dumps(data))
    line = _refused(merge_cli(str(paths["metro"]), str(bad), "--out", str(tmp_path / "m")),
                    f"{bad}: ", "normalization: Field required", "episodes.0.reward")
    assert "Field required" in line


def test_the_same_episode_with_different_rewards_is_refused(runs, tmp_path):
    lbs, paths, _ = runs

    def edit(lb):
        ep = next(e for e in lb["episodes"] if e["policy"] == "random" and e["seed"] == SEEDS[1])
        ep["reward"] += 0.5

    other = _edited(lbs["metro-p2c"], tmp_path / "other" / "leaderboard.json", edit)
    _refused(merge_cli(str(paths["metro"]), str(other), "--out", str(tmp_path / "m")),
             f"policy 'random' on metro seed {SEEDS[1]}", str(paths["metro"]), str(other))


def test_policies_with_different_seeds_in_a_scenario_are_refused(runs, tmp_path):
    lbs, paths, _ = runs

    def edit(lb):  # jsq's second episode on metro failed
        lb["episodes"] = [e for e in lb["episodes"]
                          if not (e["policy"] == "jsq" and e["seed"] == SEEDS[1])]
        lb["failures"] = [{"policy": "jsq", "scenario": "metro", "seed": SEEDS[1],
                           "error": "RuntimeError: boom", "attempts": 1}]
        lb["complete"] = False

    partial = _edited(lbs["metro"], tmp_path / "partial" / "leaderboard.json", edit)
    _refused(merge_cli(str(partial), str(paths["edge"]), "--out", str(tmp_path / "m")),
             "scenario metro", "policy 'jsq'", f"lacks seeds [{SEEDS[1]}]", "'random', 'slo-greedy' have",
             f"failed in {partial}")


def test_a_scenario_without_random_is_refused(runs, tmp_path):
    lbs, paths, _ = runs

    def edit(lb):
        lb["episodes"] = [e for e in lb["episodes"] if e["policy"] != "random"]
        lb["results"] = [r for r in lb["results"] if r["policy"] != "random"]
        lb["policies"] = [p for p in lb["policies"] if p["name"] != "random"]

    norandom = _edited(lbs["edge"], tmp_path / "norandom" / "leaderboard.json", edit)
    _refused(merge_cli(str(paths["metro"]), str(norandom), "--out", str(tmp_path / "m")),
             "scenario distributed-edge", f"no 'random' episodes in {norandom} (")


@pytest.mark.parametrize("what, edit, message", [
    ("overrides", lambda lb: lb["suite"].update(overrides={"horizon_s": 60}), "differ in suite overrides"),
    ("spec", lambda lb: lb["policies"][0].update(spec="runs/x"), "label one of them differently"),
])
def test_inputs_of_different_benchmarks_are_refused(runs, tmp_path, what, edit, message):
    lbs, paths, _ = runs
    other = _edited(lbs["edge"], tmp_path / what / "leaderboard.json", edit)
    _refused(merge_cli(str(paths["metro"]), str(other), "--out", str(tmp_path / "m")),
             message, str(other))


@pytest.mark.parametrize("flags, message", [
    (["--suite", "smoke"], "--suite does not apply to --merge"),
    (["--policies", "jsq"], "--policies does not apply to --merge"),
    ([], "--merge needs --out"),
    (["--report", "claims"],
     "--report claims needs scenarios ['centralized', 'distributed-edge'] in the merged"),
])
def test_run_flags_with_merge_are_usage_errors(runs, tmp_path, flags, message):
    _, paths, _ = runs
    out = [] if message.endswith("--out") else ["--out", str(tmp_path / "m")]
    _refused(merge_cli(str(paths["metro"]), *flags, *out), message)
    assert not (tmp_path / "m").exists()


def test_different_gridenv_versions_merge_with_a_warning(runs, tmp_path):
    lbs, paths, _ = runs
    old = _edited(lbs["edge"], tmp_path / "old" / "leaderboard.json",
                  lambda lb: lb.update(gridenv_version="0.0.1"))
    proc = merge_cli(str(paths["metro"]), str(old), "--out", str(tmp_path / "m"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    warning = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert len(warning) == 1 and "0.0.1" in warning[0] and lbs["metro"]["gridenv_version"] in warning[0]
    merged = json.loads((tmp_path / "m" / "leaderboard.json").read_text())
    assert merged["suite"]["scenarios"] == list(SCENARIOS)


def test_merge_error_is_a_value_error_naming_the_file(runs):
    """In-process callers get the same message (MergeError is a ValueError, a user error)."""
    _, paths, _ = runs
    with pytest.raises(MergeError, match="given twice"):
        merge_leaderboards([paths["metro"], paths["metro"].parent])


def test_one_scenario_from_two_yaml_files_is_refused(runs, tmp_path):
    lbs, _, _ = runs
    def from_file(path):
        return lambda lb: lb["suite"].update(scenario_files={"metro": path})

    a = _edited(lbs["metro"], tmp_path / "a.json", from_file("a/metro.yaml"))
    b = _edited(lbs["metro-p2c"], tmp_path / "b.json", from_file("b/metro.yaml"))
    with pytest.raises(MergeError, match=f"scenario metro is the file a/metro.yaml in {a} "
                                         f"but b/metro.yaml in {b}"):
        merge_leaderboards([b, a])


def _all_failed_on_seed(lb: dict, seed: int) -> None:
    """Every policy's episode of `seed` failed (so the seed sets still agree)."""
    gone = [e for e in lb["episodes"] if e["seed"] == seed]
    lb["episodes"] = [e for e in lb["episodes"] if e["seed"] != seed]
    lb["failures"] = [{"policy": e["policy"], "scenario": e["scenario"], "seed": seed,
                       "error": "RuntimeError: boom", "attempts": 1} for e in gone]
    lb["complete"] = False


def test_failures_no_input_makes_up_for_stay_listed_and_exit_1(runs, tmp_path):
    lbs, paths, _ = runs
    failed = _edited(lbs["metro"], tmp_path / "failed" / "leaderboard.json",
                     lambda lb: _all_failed_on_seed(lb, SEEDS[1]))
    proc = merge_cli(str(failed), str(paths["edge"]), "--out", str(tmp_path / "m"), "--quiet")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("failed in its run, not merged") == 3
    lb = json.loads((tmp_path / "m" / "leaderboard.json").read_text())
    assert not lb["complete"] and len(lb["failures"]) == 3
    assert {f["seed"] for f in lb["failures"]} == {SEEDS[1]}


def test_a_failure_another_input_has_the_episode_of_is_dropped(runs, tmp_path):
    lbs, paths, _ = runs
    failed = _edited(lbs["metro"], tmp_path / "failed.json", lambda lb: _all_failed_on_seed(lb, SEEDS[1]))
    lb, _ = merge_leaderboards([failed, paths["metro"]], resamples=RESAMPLES)
    assert lb["complete"] and not lb["failures"]
    assert lb["results"] == LeaderboardFile.model_validate(lbs["metro"]).model_dump(mode="json")["results"]
