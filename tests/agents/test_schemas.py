"""One schema per file format (agents/schemas.py, gridenv/schemas.py): round trips and strictness."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agents import schemas
from agents.evaluation import Suite, aggregate, load_suites, parse_policies
from gridenv.schemas import SCHEMAS, json_schema

ROOT = Path(__file__).resolve().parents[2]


def _roundtrip_yaml(model, path: Path, tmp_path: Path):
    """Read `path` with the schema, write it back with the schema, read again: same model."""
    first = schemas.load(model, path)
    out = tmp_path / path.name
    out.write_text(yaml.safe_dump(first.model_dump(exclude_unset=True), sort_keys=False))
    second = schemas.load(model, out)
    assert second == first
    return first


@pytest.mark.parametrize("model, path", [
    (schemas.SuitesFile, "configs/suites.yaml"),
    (schemas.HyperparamsFile, "configs/ppo.yaml"),
    (schemas.HyperparamsFile, "configs/ppo_lin.yaml"),
    (schemas.SweepFile, "configs/sweeps/ppo_lr_ent.yaml"),
])
def test_shipped_yaml_files_round_trip(model, path, tmp_path):
    _roundtrip_yaml(model, ROOT / path, tmp_path)


@pytest.mark.parametrize("path", ["models/metro/args.json", "models/continental/args.json"])
def test_run_records_round_trip(path, tmp_path):
    rec = schemas.load(schemas.RunRecord, ROOT / path)
    out = tmp_path / "args.json"
    out.write_text(rec.model_dump_json(indent=2))
    assert schemas.load(schemas.RunRecord, out) == rec


def test_leaderboard_round_trip(tmp_path):
    from agents import report

    pols = parse_policies("jsq,random")
    suite = Suite("t", "t", ("metro",), (1, 2), {"horizon_s": 5})
    recs = [{"policy": p.label, "scenario": "metro", "seed": s, "reward": 1.0 + s + (p.label == "jsq"),
             "decisions": 10, "wall_s": 0.1, "reward_terms": {"goodput_value_usd": 2.0, "energy_cost_usd": 0.5,
                                                             "gpu_cost_usd": 0.5},
             "metrics": {"arrived": 10, "slo_attainment": 0.5, "shed_frac": None}}
            for p in pols for s in (1, 2)]
    lb = aggregate(recs, pols, suite, resamples=20,
                   failures=[{"policy": "x", "scenario": "metro", "seed": 3, "error": "E: e", "attempts": 1}])
    report.write_leaderboard(lb, tmp_path)
    back = report.read_leaderboard(tmp_path)
    assert back == json.loads(json.dumps(lb))  # what was written is what is read
    assert back["complete"] is False and back["failures"][0]["seed"] == 3
    bad = dict(lb, unexpected=1)
    with pytest.raises(ValueError, match="unexpected"):
        report.write_leaderboard(bad, tmp_path / "bad")  # the schema guards the writer too


@pytest.mark.parametrize("text, message", [
    ("smoke:\n  scenarios: [metro]\n  seeds: [1]\n  sedes: [2]\n", "smoke.sedes: unknown key"),
    ("smoke:\n  scenarios: [metro]\n  seeds: [1, true]\n", "smoke.seeds"),
    ("smoke:\n  scenarios: [metro]\n  seeds: {start: 1, count: 0}\n", "smoke.seeds.SeedRange.count: Input should be greater than 0"),
    ("smoke:\n  scenarios: [metro]\n  seeds: [1, 1]\n", "seeds must be distinct"),
    ("smoke:\n  scenarios: []\n  seeds: [1]\n", "smoke.scenarios: List should have at least 1 item"),
    ("smoke:\n  scenarios: [metro]\n  seeds: [1]\nsmoke:\n  scenarios: [metro]\n  seeds: [2]\n",
     "line 4: duplicate key 'smoke' .first given on line 1"),
])
def test_bad_suites_files_name_file_and_key(text, message, tmp_path):
    f = tmp_path / "suites.yaml"
    f.write_text(text)
    with pytest.raises(ValueError, match=message) as exc:
        load_suites(f)
    assert str(f) in str(exc.value)


@pytest.mark.parametrize("name", ["suites.yaml", "leaderboard.json"])
def test_a_file_that_is_not_utf8_names_the_file(name, tmp_path):
    """A binary suites/hyperparameter/leaderboard file was a bare "'utf-8' codec can't decode
    byte ..." naming no file."""
    f = tmp_path / name
    f.write_bytes(b"smoke:\n  scenarios: [metro]\n  seeds: [\xff]\n")
    with pytest.raises(ValueError) as exc:
        schemas.load(schemas.SuitesFile, f)
    assert f"{f} line 3: not UTF-8" in str(exc.value)


def test_every_registered_schema_prints(tmp_path):
    for name in SCHEMAS:
        schema = json_schema(name)
        assert schema["type"] == "object" and name in schema["$comment"]
    proc = subprocess.run([sys.executable, "-m", "gridenv", "schemas"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(proc.stdout)) == set(SCHEMAS)
    one = subprocess.run([sys.executable, "-m", "gridenv", "schemas", "leaderboard"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert "crn_consistent" in json.loads(one.stdout)["properties"]
    bad = subprocess.run([sys.executable, "-m", "gridenv", "schemas", "nope"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown schema 'nope'" in bad.stderr


def test_python_m_gridenv_lists_scenarios_heuristics_suites_and_commands():
    proc = subprocess.run([sys.executable, "-m", "gridenv"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    from gridenv.envs.registration import env_id

    for text in (env_id("metro"), "distributed-edge", "gridenv/MooncakeReplay-v1", "slo-greedy", "cost-greedy", "smoke", "standard",
                 "python train.py", "python evaluate.py", "python -m gridenv.bench", "python -m gridenv schemas"):
        assert text in out, text
