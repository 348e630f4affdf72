"""agents/backends.py: local and Ray backends give the same numbers, retry, and name failures.

The Ray tests share one local Ray with 2 CPUs (module fixture). Failures are provoked with the
policies of tests/agents/faulty_policies.py, loaded by ``file.py:Class`` spec: one raises, one
kills its worker process once per seed, one every time.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from agents.backends import TaskFailures, load_sweep, run_episodes
from agents.evaluation import EpisodeSpec, Suite, evaluate, parse_policies
from agents.registry import load_policy

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FAULTY = HERE / "faulty_policies.py"
CRASH_DIR_VAR = "GRIDENV_TEST_CRASH_DIR"
HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="ray is not installed (pip install -e '.[ray]')")
TINY = Suite("tiny", "test", ("metro",), (20000,), {"horizon_s": 20})


def _load(script: str):
    spec = importlib.util.spec_from_file_location(f"_{Path(script).stem}_under_test", ROOT / script)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


evaluate_cli = _load("evaluate.py")
train_cli = _load("train.py")


def spec(cls: str) -> str:
    return f"{FAULTY}:{cls}"


def numbers(rec: dict) -> dict:
    """An episode record without its timing and its policy label."""
    return {k: v for k, v in rec.items() if k not in ("wall_s", "policy")}


@pytest.fixture(scope="module")
def crash_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("crash-markers")


@pytest.fixture(scope="module")
def ray_cluster(crash_dir):
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {CRASH_DIR_VAR: str(crash_dir)}})
    yield ray
    ray.shutdown()


# ---------------------------------------------------------------------------- same numbers
@needs_ray
def test_ray_smoke_leaderboard_equals_local(ray_cluster, tmp_path):
    """`evaluate.py --suite smoke` (every heuristic): --backend ray == --backend local."""
    out = {}
    for backend in ("local", "ray"):
        rc = evaluate_cli.main(["--suite", "smoke", "--backend", backend, "--workers", "2",
                                "--out", str(tmp_path / backend), "--quiet"])
        assert rc == 0
        lb = json.loads((tmp_path / backend / "leaderboard.json").read_text())
        lb.pop("created_utc")
        for e in lb["episodes"]:
            e.pop("wall_s")
        out[backend] = lb
    assert len(out["ray"]["episodes"]) == 36  # 9 heuristics x 2 scenarios x 2 seeds
    assert out["ray"] == out["local"]


# ---------------------------------------------------------------------------- failures, ray
@needs_ray
def test_ray_failing_episode_is_retried_then_reported_by_name(ray_cluster, tmp_path, capsys):
    rc = evaluate_cli.main(["--suite", "smoke", "--backend", "ray", "--seeds", "10000",
                            "--policies", f"jsq,boom={spec('RaisingPolicy')}",
                            "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1
    for sc in ("metro", "distributed-edge"):
        name = f"policy 'boom' on {sc} seed 10000"
        assert err.count(f"{name} failed, retrying: RuntimeError: deliberate failure") == 2, err
        assert f"{name}: RuntimeError: deliberate failure on seed 10000 (3 attempts)" in err
    assert "2 of 6 episodes failed" in err
    assert not (tmp_path / "leaderboard.json").exists()  # never a leaderboard with holes


@needs_ray
def test_ray_killed_worker_is_retried_by_ray(ray_cluster, crash_dir):
    """The first attempt of each `once` episode kills its worker (os._exit); Ray re-runs it."""
    lb = evaluate(TINY, parse_policies(f"jsq,once={spec('CrashOncePolicy')}"), backend="ray",
                  workers=2, resamples=50)
    assert (crash_dir / "crash-once-20000").exists()  # it did die once
    by = {e["policy"]: e for e in lb["episodes"]}
    assert numbers(by["once"]) == numbers(by["jsq"])  # the retry is the jsq episode


@needs_ray
def test_ray_worker_dying_every_time_is_reported_by_name(ray_cluster):
    with pytest.raises(TaskFailures) as exc:
        evaluate(TINY, parse_policies(f"jsq,always={spec('CrashAlwaysPolicy')}"), backend="ray",
                 workers=2, resamples=50)
    [f] = exc.value.failures
    assert f.name == "policy 'always' on metro seed 20000"
    assert "worker process died" in f.error and f.attempts == 3
    assert "policy 'always' on metro seed 20000" in str(exc.value)
    ok = [r for r in exc.value.results if r is not None]
    assert [r["policy"] for r in ok] == ["jsq", "random"]


# ---------------------------------------------------------------------------- failures, local
def test_local_crashed_worker_is_retried_and_reported_by_name(monkeypatch, tmp_path):
    """Worker processes that die break the pool: the culprit is found, retried, then named."""
    monkeypatch.setenv(CRASH_DIR_VAR, str(tmp_path))  # inherited by the spawned workers
    suite = Suite("t", "t", ("metro",), (20001,), {"horizon_s": 20})
    pols = parse_policies(f"jsq,once={spec('CrashOncePolicy')},always={spec('CrashAlwaysPolicy')}")
    events = []
    with pytest.raises(TaskFailures) as exc:
        evaluate(suite, pols, workers=2, resamples=50,
                 progress=lambda d, t, rec, st: events.append((st.event, st.name)))
    [f] = exc.value.failures
    assert (f.name, f.attempts) == ("policy 'always' on metro seed 20001", 3)
    assert f.error == "worker process died (BrokenProcessPool)"
    assert (tmp_path / "crash-once-20001").exists()
    res = {r["policy"]: r for r in exc.value.results if r is not None}
    assert set(res) == {"jsq", "once", "random"}
    assert numbers(res["once"]) == numbers(res["jsq"])
    assert events.count(("failed", f.name)) == 1 and events.count(("retry", f.name)) == 2
    assert sum(e == "done" for e, _ in events) == 3


def test_local_exception_is_retried_then_reported_by_name():
    eps = [EpisodeSpec("jsq", "jsq", "metro", 20002, {"horizon_s": 10}),
           EpisodeSpec("boom", spec("RaisingPolicy"), "metro", 20002, {"horizon_s": 10})]
    events = []
    with pytest.raises(TaskFailures) as exc:
        run_episodes(eps, "local", 1, progress=lambda d, t, rec, st: events.append(
            (st.event, d, t, st.failed, st.retries)))
    assert str(exc.value).splitlines() == [
        "1 of 2 episodes failed:",
        "  policy 'boom' on metro seed 20002: RuntimeError: deliberate failure on seed 20002 (3 attempts)"]
    assert exc.value.results[0]["policy"] == "jsq" and exc.value.results[1] is None
    assert events == [("done", 1, 2, 0, 0), ("retry", 1, 2, 0, 1), ("retry", 1, 2, 0, 2),
                      ("failed", 2, 2, 1, 2)]


def test_evaluate_cli_names_failed_episodes_and_exits_1(tmp_path):
    import subprocess

    proc = subprocess.run([sys.executable, "evaluate.py", "--suite", "smoke", "--seeds", "10000",
                           "--scenarios", "metro", "--policies", f"jsq,boom={spec('RaisingPolicy')}",
                           "--workers", "1", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "evaluate.py: 1 of 3 episodes failed:" in proc.stderr
    assert "policy 'boom' on metro seed 10000: RuntimeError: deliberate failure" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------- without ray
def test_ray_backend_without_ray_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert evaluate_cli.main(["--suite", "smoke", "--backend", "ray"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "pip install -e '.[ray]'" in lines[0], lines
    with pytest.raises(SystemExit) as exc:
        train_cli.main(["--backend", "ray", "--seeds", "0,1"])
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "pip install -e '.[ray]'" in lines[0], lines


# ---------------------------------------------------------------------------- training runs
TINY_HP = """
default:
  n_envs: 2
  n_steps: 64
  batch_size: 64
  n_epochs: 1
  gamma: 0.99
  net_arch: [32, 32]
  normalize: {obs: true, reward: true}
  eval_episodes: 1
  eval_seeds_start: 5000
"""


@needs_ray
def test_train_ray_seeds_make_two_runs_and_one_leaderboard(ray_cluster, tmp_path, capsys):
    hp = tmp_path / "hp.yaml"
    hp.write_text(TINY_HP)
    res = train_cli.main([
        "--backend", "ray", "--seeds", "0,1", "--run-dir", str(tmp_path / "runs"),
        "--hyperparams", str(hp), "--total-timesteps", "256", "--eval-freq", "128",
        "--checkpoint-freq", "128", "--env-config", '{"horizon_s": 20}', "--no-progress-bar",
        "--leaderboard-suite", "smoke", "--leaderboard-seeds", "1", "--verbose", "0"])
    names = ["metro_maskable_ppo_s0", "metro_maskable_ppo_s1"]
    for name in names:
        d = tmp_path / "runs" / name
        assert (d / "best_model" / "best_model.zip").is_file() and (d / "model.zip").is_file()
        assert list((d / "tb").rglob("events.out.tfevents*")) and list((d / "checkpoints").glob("*.zip"))
        record = json.loads((d / "args.json").read_text())
        assert record["args"]["seed"] == int(name[-1]) and record["args"]["backend"] == "local"
        assert f"--seed {name[-1]}" in record["commands"][-1]
    out = tmp_path / "runs" / "leaderboard_metro_maskable_ppo"
    assert res["leaderboard"] == str(out / "leaderboard.json")
    lb = json.loads((out / "leaderboard.json").read_text())
    pols = {p["name"]: p for p in lb["policies"]}
    assert set(names) <= set(pols) and "jsq" in pols and "random" in pols
    assert all(pols[n]["kind"] == "file" and pols[n]["episodes"] == 1 for n in names)
    runs = json.loads((out / "runs.json").read_text())
    assert [r["name"] for r in runs["runs"]] == names and runs["failures"] == []
    assert all(r["timesteps"] == 256 for r in runs["runs"])
    assert "| rank | policy |" in capsys.readouterr().out


def test_train_multi_run_refuses_existing_runs_and_bad_sweeps(tmp_path, capsys):
    (tmp_path / "metro_maskable_ppo_s1").mkdir()
    (tmp_path / "metro_maskable_ppo_s1" / "args.json").write_text("{}")
    with pytest.raises(SystemExit) as exc:
        train_cli.main(["--seeds", "0,1", "--run-dir", str(tmp_path)])
    assert exc.value.code == 2 and "already holds a run" in capsys.readouterr().err
    sweep = tmp_path / "bad.yaml"
    sweep.write_text("grid:\n  learnin_rate: [0.1]\n")
    with pytest.raises(SystemExit) as exc:
        train_cli.main(["--sweep", str(sweep), "--run-dir", str(tmp_path / "x")])
    assert exc.value.code == 2 and "unknown hyperparameter 'learnin_rate'" in capsys.readouterr().err


# ---------------------------------------------------------------------------- sweeps, specs
def test_load_sweep(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("grid:\n  learning_rate: [1.0e-4, 3.0e-4]\n  ent_coef: [0.0, 0.01]\n")
    vs = load_sweep(f)
    assert [v.name for v in vs] == ["learning_rate0.0001_ent_coef0", "learning_rate0.0001_ent_coef0.01",
                                    "learning_rate0.0003_ent_coef0", "learning_rate0.0003_ent_coef0.01"]
    assert vs[1].overrides == {"learning_rate": 1e-4, "ent_coef": 0.01}
    f.write_text("variants:\n  - {name: wide, net_arch: [256, 256]}\n  - {gamma: 0.99}\n"
                 "grid:\n  ent_coef: [0.0, 0.01]\n")
    assert [v.name for v in load_sweep(f)] == ["wide_ent_coef0", "wide_ent_coef0.01",
                                               "gamma0.99_ent_coef0", "gamma0.99_ent_coef0.01"]
    for text, msg in [("grid: {lr: 1}\n", "non-empty lists"), ("foo: 1\n", "'variants' and/or 'grid'"),
                      ("variants:\n  - {name: a}\n  - {name: a}\n", "duplicate variant names")]:
        f.write_text(text)
        with pytest.raises(ValueError, match=msg):
            load_sweep(f)
    assert len(load_sweep(ROOT / "configs" / "sweeps" / "ppo_lr_ent.yaml")) == 6


def test_class_policy_specs():
    from agents.heuristics import JoinShortestQueue

    assert isinstance(load_policy("agents.heuristics:JoinShortestQueue"), JoinShortestQueue)
    assert type(load_policy(spec("CrashOncePolicy"))).__name__ == "CrashOncePolicy"
    with pytest.raises(ValueError, match="no Policy subclass named 'Nope'"):
        load_policy("agents.heuristics:Nope")
    with pytest.raises(ValueError, match="cannot import module"):
        load_policy("agents.nowhere:Thing")
    with pytest.raises(FileNotFoundError):
        load_policy("/nonexistent/p.py:Thing")
