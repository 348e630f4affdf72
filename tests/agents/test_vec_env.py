"""The SB3 adapter (agents/vec_env.py): same data as the DummyVecEnv path, MaskablePPO, workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sb3_contrib")

from sb3_contrib.common.maskable.utils import get_action_masks, is_masking_supported  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv  # noqa: E402

import gridenv  # noqa: E402,F401
from gridenv.envs.registration import env_id  # noqa: E402
from agents import training as T  # noqa: E402
from agents.vec_env import GridVecEnv, VecEnvWorkerError, split_envs  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
METRO = env_id("metro")
SHORT = {"horizon_s": 6.0}  # ~150 decisions per episode


def random_actions(masks: np.ndarray, max_sites: int, rng: np.random.Generator) -> np.ndarray:
    acts = np.zeros((len(masks), 2), dtype=np.int64)
    for i, m in enumerate(masks):
        sites = np.flatnonzero(m[: max_sites + 1])
        acts[i] = sites[rng.integers(len(sites))], rng.integers(2)
    return acts


def dummy_path(n: int, seed: int, monitor_dir=None) -> DummyVecEnv:
    """The old training envs: DummyVecEnv([Monitor(EpisodeMetricsInfo(gym.make(id)))] * n)."""
    thunks = [T.make_env(METRO, SHORT, None if monitor_dir is None else str(Path(monitor_dir) / f"train_{i}"))
              for i in range(n)]
    venv = DummyVecEnv(thunks)
    venv.seed(seed)
    return venv


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not reaped) counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_split_envs_covers_every_env_once():
    assert [list(r) for r in split_envs(5, 2)] == [[0, 1, 2], [3, 4]]
    assert [len(r) for r in split_envs(64, 2)] == [32, 32]
    with pytest.raises(ValueError, match="workers"):
        split_envs(1, 2)


@pytest.mark.parametrize("backend", ["native", "subproc", "hybrid"])
def test_same_data_as_the_dummy_vec_env_path(backend, tmp_path):
    n, seed, steps = 3, 21, 330  # >= 2 episode ends per env
    old = dummy_path(n, seed, tmp_path / "old")
    new = GridVecEnv(METRO, n, SHORT, backend=backend, n_workers=2, info_keywords=T.EPISODE_METRICS,
                     monitor_dir=tmp_path / "new")
    try:
        new.seed(seed)
        o_old, o_new = old.reset(), new.reset()
        assert np.array_equal(o_old, o_new) and o_new.dtype == np.float32
        rng = np.random.default_rng(0)
        max_sites = new.max_sites
        ends = 0
        for t in range(steps):
            m_old, m_new = get_action_masks(old), get_action_masks(new)
            assert np.array_equal(m_old, m_new), t
            acts = random_actions(m_new, max_sites, rng)
            o_old, r_old, d_old, i_old = old.step(acts)
            o_new, r_new, d_new, i_new = new.step(acts)
            assert np.array_equal(o_old, o_new), t
            assert np.array_equal(r_old, r_new) and r_new.dtype == r_old.dtype, t
            assert np.array_equal(d_old, d_new), t
            for i in np.flatnonzero(d_new):
                ends += 1
                a, b = i_old[i], i_new[i]
                assert b["TimeLimit.truncated"] is True and a["TimeLimit.truncated"] is True
                assert np.array_equal(a["terminal_observation"], b["terminal_observation"])
                ea, eb = a["episode"], b["episode"]
                assert ea["r"] == eb["r"] and ea["l"] == eb["l"]
                for key in T.EPISODE_METRICS:
                    assert ea[key] == eb[key] or (np.isnan(ea[key]) and np.isnan(eb[key])), key
    finally:
        old.close()
        new.close()
    assert ends >= 2 * n
    # the monitor CSVs: one per env, same columns and rows as Monitor's (bar the time column)
    for i in range(n):
        a = (tmp_path / "old" / f"train_{i}.monitor.csv").read_text().splitlines()
        b = (tmp_path / "new" / f"train_{i}.monitor.csv").read_text().splitlines()
        assert a[1] == b[1] and len(a) == len(b) >= 4
        strip_t = lambda line: line.split(",")[:2] + line.split(",")[3:]  # noqa: E731
        assert [strip_t(x) for x in a[2:]] == [strip_t(x) for x in b[2:]]


def test_masks_through_vec_normalize_and_unsupported_calls():
    venv = T.make_vec_env(METRO, 2, 0, 0.99, {"obs": False}, SHORT, backend="native")
    try:
        assert isinstance(venv.venv, GridVecEnv)
        venv.reset()
        assert is_masking_supported(venv)
        masks = get_action_masks(venv)
        assert masks.shape == (2, venv.venv.max_sites + 1 + venv.venv.n_levels) and masks.dtype == bool
        assert np.array_equal(masks, venv.venv.action_masks())
        assert masks[:, venv.venv.max_sites].all()  # shed is always allowed
        with pytest.raises(AttributeError, match="action_masks"):
            venv.env_method("restart_seed_cycle")
        assert venv.get_attr("render_mode") == [None, None]
        with pytest.raises(AttributeError, match="available"):
            venv.get_attr("sim")
    finally:
        venv.close()
    with pytest.raises(T.HyperparamError, match="vec_backend"):
        T.make_vec_env(METRO, 2, 0, 0.99, {}, SHORT, backend="threads")


@pytest.mark.parametrize("backend", ["native", "hybrid"])
def test_maskable_ppo_learns_a_few_hundred_steps(backend):
    from sb3_contrib import MaskablePPO

    from agents.site_policy import MaskableSiteScoringPolicy

    venv = T.make_vec_env(METRO, 4, 0, 0.99, {"obs": False}, {"horizon_s": 3.0}, backend=backend)
    try:
        model = MaskablePPO(MaskableSiteScoringPolicy, venv, n_steps=64, batch_size=128, n_epochs=1,
                            seed=0, device="cpu", policy_kwargs={"site_hidden": [16], "critic_hidden": [16]})
        model.learn(512, callback=T.EpisodeMetricsCallback())
        assert model.num_timesteps == 512
        eps = list(model.ep_info_buffer)
        assert eps and all(e["l"] > 0 and "slo_attainment" in e for e in eps)
    finally:
        venv.close()


def test_worker_errors_are_clear_and_close_leaves_no_process():
    venv = GridVecEnv(METRO, 4, SHORT, backend="subproc", n_workers=2)
    pids = venv.worker_pids()
    try:
        assert len(pids) == 2 and all(pid_alive(p) for p in pids)
        venv.reset()
        # 1. an exception inside a worker comes back with its traceback ...
        acts = np.zeros((4, 2), dtype=np.int64)
        acts[3, 0] = venv.max_sites + 7  # out of range: GridVectorEnv raises in worker 1
        with pytest.raises(VecEnvWorkerError, match=r"(?s)worker 1 .*failed during step.*InvalidActionError"):
            venv.step(acts)
        # ... and the workers stay usable (every pending reply was read)
        venv.step(random_actions(venv.action_masks(), venv.max_sites, np.random.default_rng(0)))
        # 2. a worker that dies is reported, not waited for forever
        os.kill(pids[1], signal.SIGKILL)
        with pytest.raises(VecEnvWorkerError, match=r"worker 1 \(envs 2-3.*died"):  # (a hang fails by timeout)
            for _ in range(3):  # the kill may land after the first send
                venv.step(random_actions(venv.action_masks(), venv.max_sites, np.random.default_rng(0)))
    finally:
        venv.close()
    # 3. close() stops the surviving worker and reaps both
    assert not any(pid_alive(p) for p in pids)
    venv.close()  # idempotent


def test_no_orphan_workers_when_a_script_forgets_close(tmp_path):
    script = tmp_path / "forget.py"
    script.write_text(textwrap.dedent(f"""
        if __name__ == "__main__":
            from agents.vec_env import GridVecEnv
            venv = GridVecEnv({METRO!r}, 2, {{"horizon_s": 6.0}}, backend="subproc", n_workers=2)
            venv.reset()
            print(*venv.worker_pids())
    """))
    out = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 2
    deadline = time.time() + 10
    while any(pid_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(pid_alive(p) for p in pids)


def test_shipped_fast_recipe_is_valid():
    from agents.vec_env import BACKENDS

    hp = T.load_hyperparams(ROOT / "configs" / "ppo_fast.yaml", "metro")
    assert hp["vec_backend"] in BACKENDS and hp["n_envs"] >= hp["vec_workers"]
    assert hp["n_envs"] * hp["n_steps"] % hp["batch_size"] == 0
    old = T.load_hyperparams(ROOT / "configs" / "ppo.yaml", "metro")
    # the same PPO update as ppo.yaml: rollout size, minibatch, epochs, loss coefficients
    assert hp["n_envs"] * hp["n_steps"] == old["n_envs"] * old["n_steps"]
    for key in ("batch_size", "n_epochs", "learning_rate", "gamma", "gae_lambda", "clip_range", "ent_coef"):
        assert hp[key] == old[key], key


def test_bench_training_reports_every_variant(tmp_path):
    from agents import bench_training

    out = tmp_path / "bench.json"
    tiny = {"n_steps": 32, "batch_size": 64, "n_epochs": 1, "env_config": {"horizon_s": 3.0}}
    extra = {"d": {**tiny, "vec_backend": "dummy", "n_envs": 2},
             "n": {**tiny, "vec_backend": "native", "n_envs": 2}}
    import json

    rows = bench_training.main(["--steps", "64", "--variants", "d", "--extra", json.dumps(extra),
                                "--json", str(out), "--quiet"])
    assert [r["variant"] for r in rows] == ["d", "n"]
    data = json.loads(out.read_text())
    assert set(data["speedup_vs_first"]) == {"d", "n"} and data["speedup_vs_first"]["d"] == 1.0
    for r in data["rows"]:
        assert r["steps"] >= 64 and r["steps_per_s"] > 0
        assert r["env_s"] + r["policy_s"] + r["update_s"] == pytest.approx(r["wall_s"])


@pytest.mark.parametrize("backend", ["native", "hybrid"])
def test_random_grid_same_data_as_the_dummy_vec_env_path(backend):
    """gridenv/RandomGrid-v1 through GridVecEnv (RandomGridVectorEnv shards, also in a worker):
    the DummyVecEnv path's observations, rewards and episode ends, new grids at the resets."""
    from gridenv.envs.registration import RANDOM_GRID_ID

    spec = {"horizon_s": 4.0}
    n, seed = 2, 3
    old = DummyVecEnv([T.make_env(RANDOM_GRID_ID, spec) for _ in range(n)])
    old.seed(seed)
    new = GridVecEnv(RANDOM_GRID_ID, n, spec, backend=backend, n_workers=2, info_keywords=T.EPISODE_METRICS)
    try:
        new.seed(seed)
        assert np.array_equal(old.reset(), new.reset())
        assert new.interface.mode == "relative"
        rng = np.random.default_rng(1)
        ends = 0
        for t in range(3000):
            m = get_action_masks(new)
            assert np.array_equal(m, get_action_masks(old)), t
            acts = random_actions(m, new.max_sites, rng)
            o_old, r_old, d_old, i_old = old.step(acts)
            o_new, r_new, d_new, i_new = new.step(acts)
            assert np.array_equal(o_old, o_new) and np.array_equal(r_old, r_new), t
            assert np.array_equal(d_old, d_new), t
            for i in np.flatnonzero(d_new):
                ends += 1
                assert i_old[i]["episode"]["r"] == i_new[i]["episode"]["r"]
            if ends >= 2 * n:
                break
        assert ends >= 2 * n
    finally:
        old.close()
        new.close()
