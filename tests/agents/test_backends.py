"""agents/tasks.py (+ evaluation, campaign): local and Ray backends give the same numbers, retry
only what may not recur, name failures, and never leave the caller waiting.

The Ray tests share one local Ray with 2 CPUs (module fixture). Failures are provoked with the
policies of tests/agents/faulty_policies.py, loaded by ``file.py:Class`` spec: one raises, one
kills its worker process once per seed, one every time, one loses its connection once.
"""

from __future__ import annotations

import importlib.util
import json
import os
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from agents.campaign import load_sweep
from agents.evaluation import EpisodeSpec, Suite, evaluate, parse_policies, run_episodes
from agents.registry import load_policy
from agents.tasks import TaskFailures, run_tasks

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FAULTY = HERE / "faulty_policies.py"
CRASH_DIR_VAR = "GRIDENV_TEST_CRASH_DIR"
HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="ray is not installed (pip install -e '.[ray]')")
TINY = Suite("tiny", "test", ("metro",), (20000,), {"horizon_s": 20})


class evaluate_cli:  # noqa: N801 - the script run in this process (the Ray tests need that)
    @staticmethod
    def main(argv: list[str]) -> int:
        old = sys.argv
        sys.argv = ["evaluate.py", *argv]
        try:
            runpy.run_path(str(ROOT / "evaluate.py"), run_name="__main__")
        except SystemExit as e:
            return e.code
        finally:
            sys.argv = old
        raise AssertionError("evaluate.py did not exit")


class train_cli:  # noqa: N801 - what train.py does, in process, returning the result
    @staticmethod
    def main(argv: list[str]):
        from agents.arguments import TrainArgs, parse, run_main
        from agents.campaign import train_runs
        from agents.training import train

        args, explicit = parse(TrainArgs, argv, prog="train.py")
        command = shlex.join(["python", "train.py", *argv])
        multi = args.seeds or args.sweep or args.backend != "local"
        return run_main("train.py", args.debug,
                        lambda: train_runs(args, explicit, command) if multi else train(args, explicit, command))


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
    from agents.heuristics import HEURISTICS

    assert len(out["ray"]["episodes"]) == len(HEURISTICS) * 2 * 2  # every heuristic x 2 scenarios x 2 seeds
    assert out["ray"] == out["local"]


# ---------------------------------------------------------------------------- failures, ray
@needs_ray
def test_ray_failing_episode_is_reported_not_retried_and_the_rest_kept(ray_cluster, tmp_path, capsys):
    rc = evaluate_cli.main(["--suite", "smoke", "--backend", "ray", "--seeds", "10000",
                            "--policies", f"jsq,boom={spec('RaisingPolicy')}",
                            "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1
    for sc in ("metro", "distributed-edge"):
        name = f"policy 'boom' on {sc} seed 10000"
        assert "failed, retrying" not in err  # a deterministic error would fail again
        assert f"{name}: RuntimeError: deliberate failure on seed 10000 (1 attempt)" in err
    assert "2 of 6 episodes failed" in err
    lb = json.loads((tmp_path / "leaderboard.json").read_text())  # the partial leaderboard
    assert lb["complete"] is False and len(lb["episodes"]) == 4 and len(lb["failures"]) == 2


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
    lb = evaluate(TINY, parse_policies(f"jsq,always={spec('CrashAlwaysPolicy')}"), backend="ray",
                  workers=2, resamples=50)
    [f] = lb["failures"]
    assert (f["policy"], f["scenario"], f["seed"]) == ("always", "metro", 20000)
    assert "worker process died" in f["error"] and f["attempts"] == 3
    assert [r["policy"] for r in lb["episodes"]] == ["jsq", "random"]


# ---------------------------------------------------------------------------- failures, local
def test_local_crashed_worker_is_retried_and_reported_by_name(monkeypatch, tmp_path):
    """Worker processes that die break the pool: the culprit is found, retried, then named."""
    monkeypatch.setenv(CRASH_DIR_VAR, str(tmp_path))  # inherited by the spawned workers
    suite = Suite("t", "t", ("metro",), (20001,), {"horizon_s": 20})
    pols = parse_policies(f"jsq,once={spec('CrashOncePolicy')},always={spec('CrashAlwaysPolicy')}")
    events = []
    lb = evaluate(suite, pols, workers=2, resamples=50,
                  progress=lambda d, t, rec, st: events.append((st.event, st.name)))
    [f] = lb["failures"]
    assert (f["policy"], f["scenario"], f["seed"], f["attempts"]) == ("always", "metro", 20001, 3)
    assert f["error"] == "worker process died (BrokenProcessPool)"
    assert (tmp_path / "crash-once-20001").exists()
    res = {r["policy"]: r for r in lb["episodes"]}
    assert set(res) == {"jsq", "once", "random"} and lb["complete"] is False
    assert numbers(res["once"]) == numbers(res["jsq"])
    name = "policy 'always' on metro seed 20001"
    assert events.count(("failed", name)) == 1 and events.count(("retry", name)) == 2
    assert sum(e == "done" for e, _ in events) == 3


def test_local_exception_is_reported_after_one_attempt():
    eps = [EpisodeSpec("jsq", "jsq", "metro", 20002, {"horizon_s": 10}),
           EpisodeSpec("boom", spec("RaisingPolicy"), "metro", 20002, {"horizon_s": 10})]
    events = []
    with pytest.raises(TaskFailures) as exc:
        run_episodes(eps, 1, progress=lambda d, t, rec, st: events.append(
            (st.event, d, t, st.failed, st.retries)))
    assert str(exc.value).splitlines() == [
        "1 of 2 episodes failed:",
        "  policy 'boom' on metro seed 20002: RuntimeError: deliberate failure on seed 20002 (1 attempt)"]
    assert exc.value.results[0]["policy"] == "jsq" and exc.value.results[1] is None
    assert events == [("done", 1, 2, 0, 0), ("failed", 2, 2, 1, 0)]


def test_transient_error_is_retried(monkeypatch, tmp_path):
    """A lost connection may not recur: retried (the second attempt succeeds)."""
    monkeypatch.setenv(CRASH_DIR_VAR, str(tmp_path))
    eps = [EpisodeSpec("flaky", spec("FlakyPolicy"), "metro", 20003, {"horizon_s": 10})]
    events = []
    [rec] = run_episodes(eps, 1, progress=lambda d, t, rec, st: events.append((st.event, st.error)))
    assert rec["policy"] == "flaky" and rec["decisions"] > 0
    assert events == [("retry", "ConnectionError: deliberate lost connection on seed 20003"), ("done", None)]


# Jobs for run_tasks in worker processes (module level: spawned workers import them).
ATTEMPTS_VAR = "GRIDENV_TEST_ATTEMPTS_DIR"


def _count_attempt(name: str) -> int:
    d = Path(os.environ[ATTEMPTS_VAR])
    n = len(list(d.glob(f"{name}-*"))) + 1
    (d / f"{name}-{n}").touch()
    return n


def job_value_error(_):
    _count_attempt("value")
    raise ValueError("observation of shape (74,), the model takes (109,)")


def job_connection_error(_):
    _count_attempt("conn")
    raise ConnectionError("connection reset")


def job_exit(x):
    if x == 0:
        _count_attempt("exit")
        os._exit(3)
    return x


def job_ok(x):
    return 2 * x


@pytest.mark.parametrize("workers", [1, 2])
def test_only_failures_that_may_not_recur_are_retried(monkeypatch, tmp_path, workers):
    monkeypatch.setenv(ATTEMPTS_VAR, str(tmp_path))
    fns = [job_value_error, job_connection_error, job_ok]
    for fn in fns:  # run_tasks takes one function: one call per kind
        jobs = [1, 2] if fn is job_ok else [1]
        try:
            out = run_tasks(fn, jobs, workers=workers, retries=2)
        except TaskFailures as e:
            [f] = e.failures
            out = f
        if fn is job_ok:
            assert out == [2, 4]
        elif fn is job_value_error:
            assert out.attempts == 1 and "ValueError: observation of shape" in out.error
        else:
            assert out.attempts == 3 and out.error == "ConnectionError: connection reset"
    assert len(list(tmp_path.glob("value-*"))) == 1  # counted in the worker processes too
    assert len(list(tmp_path.glob("conn-*"))) == 3


def test_a_dying_child_is_reported_and_never_hangs(tmp_path):
    """A worker process that exits at once: reported by name with its attempts, in bounded time."""
    code = (
        "import sys; sys.path.insert(0, {here!r})\n"
        "from test_backends import job_exit\n"
        "from agents.tasks import run_tasks, TaskFailures\n"
        "try:\n"
        "    run_tasks(job_exit, [0, 1], names=['the-job', 'other'], workers=2, retries=1)\n"
        "except TaskFailures as e:\n"
        "    print(e)\n"
    ).format(here=str(HERE))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180,
                          env={**os.environ, ATTEMPTS_VAR: str(tmp_path), "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "1 of 2 tasks failed:", "  the-job: worker process died (BrokenProcessPool) (2 attempts)"]
    assert len(list(tmp_path.glob("exit-*"))) == 2


def test_evaluate_cli_writes_a_partial_leaderboard_and_exits_1(tmp_path):
    proc = subprocess.run([sys.executable, "evaluate.py", "--suite", "smoke", "--seeds", "10000",
                           "--scenarios", "metro", "--policies", f"jsq,boom={spec('RaisingPolicy')}",
                           "--workers", "1", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "evaluate.py: 1 of 3 episodes failed" in proc.stderr
    assert "policy 'boom' on metro seed 10000: RuntimeError: deliberate failure" in proc.stderr
    assert "Traceback" not in proc.stderr
    lb = json.loads((tmp_path / "leaderboard.json").read_text())
    assert lb["complete"] is False
    assert [(f["policy"], f["scenario"], f["seed"], f["attempts"]) for f in lb["failures"]] == [
        ("boom", "metro", 10000, 1)]
    assert {e["policy"] for e in lb["episodes"]} == {"jsq", "random"}
    assert "Incomplete: 1 episode(s) failed" in (tmp_path / "leaderboard.md").read_text()
    assert "| rank | policy |" in proc.stdout


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
    assert exc.value.code == 2 and "grid: unknown hyperparameter 'learnin_rate'" in capsys.readouterr().err


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
    for text, msg in [("grid: {ent_coef: 1}\n", "grid.ent_coef: Input should be a valid list"),
                      ("grid: {ent_coef: []}\n", "grid.ent_coef: List should have at least 1 item"),
                      ("grid: {gamma: [0.9, true]}\n", "grid.gamma: gamma: Input should be a valid number"),
                      ("foo: 1\n", "foo: unknown key"),
                      ("description: x\n", "expected 'variants' and/or 'grid'"),
                      ("variants:\n  - {nme: a}\n", "variants.0: unknown hyperparameter 'nme'"),
                      ("grid: {ent_coef: [0.0]}\ngrid: {ent_coef: [0.1]}\n", "line 2: duplicate key 'grid'"),
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
