"""Custom policies given as ``path.py:Class`` / ``module:Class`` (agents/registry.py): every user
mistake is one clear error naming the spec, the file or class, and what to fix; a policy whose
action is non-finite or outside the action space is stopped by the env, naming the action."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.evaluation import EpisodeSpec, run_episode
from agents.registry import load_policy
from gridenv.envs import InvalidActionError

HEADER = "import numpy as np\nfrom agents.policy import Policy\n\n"

# (id, file body, class name, fragments of the ValueError message)
LOAD_CASES = [
    ("syntax-error", HEADER + "class P(Policy):\n    def act(self, obs, snap)\n        return 0\n", "P",
     ["syntax error in", "line 5"]),
    ("import-raises", HEADER + "raise RuntimeError('no GPU here')\n", "P",
     ["importing", "RuntimeError: no GPU here"]),
    ("import-missing-module", "import not_a_real_module_xyz\n", "P",
     ["ModuleNotFoundError", "not_a_real_module_xyz"]),
    ("missing-class", HEADER + "class Other(Policy):\n    def act(self, obs, snap):\n        return None\n", "P",
     ["has no Policy subclass named 'P'"]),
    ("not-a-policy", HEADER + "class P:\n    def act(self, obs, snap):\n        return None\n", "P",
     ["class P", "not a subclass of agents.policy.Policy"]),
    ("a-function", HEADER + "def P(obs, snap):\n    return None\n", "P",
     ["a function", "not a subclass"]),
    ("abstract", HEADER + "class P(Policy):\n    pass\n", "P", ["P does not implement act"]),
    ("ctor-needs-args", HEADER + "class P(Policy):\n    def __init__(self, path):\n        self.path = path\n"
     "    def act(self, obs, snap):\n        return None\n", "P",
     ["P() failed", "missing 1 required positional argument: 'path'", "no arguments"]),
    ("ctor-raises", HEADER + "class P(Policy):\n    def __init__(self):\n        raise OSError('weights.bin missing')\n"
     "    def act(self, obs, snap):\n        return None\n", "P",
     ["P() raised OSError: weights.bin missing"]),
]


@pytest.mark.parametrize("body, cls, fragments", [c[1:] for c in LOAD_CASES], ids=[c[0] for c in LOAD_CASES])
def test_bad_policy_file_is_one_clear_error(tmp_path: Path, body: str, cls: str, fragments) -> None:
    path = tmp_path / "my_policy.py"
    path.write_text(body)
    spec = f"{path}:{cls}"
    with pytest.raises(ValueError) as err:
        load_policy(spec)
    msg = str(err.value)
    assert spec in msg and "\n" not in msg
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)


@pytest.mark.parametrize("spec, fragments", [
    ("no_such_pkg_xyz.policies:P", ["cannot import module 'no_such_pkg_xyz.policies'"]),
    ("agents.heuristics:NoSuchPolicy", ["agents.heuristics has no Policy subclass named 'NoSuchPolicy'"]),
], ids=["missing-module", "missing-class-in-module"])
def test_bad_module_spec_is_one_clear_error(spec: str, fragments) -> None:
    with pytest.raises(ValueError) as err:
        load_policy(spec)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_missing_policy_file() -> None:
    with pytest.raises(FileNotFoundError, match=r"no such file nowhere/p\.py"):
        load_policy("nowhere/p.py:P")


ACT_CASES = [
    ("nan", "np.array([np.nan, 0.0])", ["array([nan,  0.])"]),
    ("inf", "np.array([0.0, np.inf])", ["array([ 0., inf])"]),
    ("out-of-space", "np.array([99, 0])", ["array([99,  0])"]),
    ("fractional", "np.array([0.5, 0.0])", ["array([0.5, 0. ])"]),
    ("none", "None", ["action None"]),
    ("string", "'shed'", ["action 'shed'"]),
]


@pytest.mark.parametrize("expr, fragments", [c[1:] for c in ACT_CASES], ids=[c[0] for c in ACT_CASES])
def test_policy_returning_a_bad_action_is_stopped_naming_it(tmp_path: Path, expr: str, fragments) -> None:
    path = tmp_path / "bad_actions.py"
    path.write_text(HEADER + f"class Bad(Policy):\n    name = 'bad'\n    def act(self, obs, snap):\n"
                             f"        return {expr}\n")
    spec = f"{path}:Bad"
    with pytest.raises(InvalidActionError) as err:
        run_episode(EpisodeSpec(policy="bad", spec=spec, scenario="metro", seed=0, overrides={"horizon_s": 5.0}))
    assert f"policy {spec!r} returned" in str(err.value) and "MultiDiscrete([6, 3])" in str(err.value)
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))


@pytest.mark.parametrize("expr", ["np.array([np.nan, 0.0])", "np.array([99, 0])", "np.array([0.5, 1])", "[0, 0, 0]"],
                         ids=["nan", "out-of-space", "fractional", "shape"])
def test_the_env_itself_refuses_such_actions(expr: str) -> None:
    """Defence in depth: the same actions from any other caller hit GridEnv's own check."""
    import gymnasium as gym
    import numpy as np  # noqa: F401  (used by eval)

    from gridenv.envs.registration import env_id

    env = gym.make(env_id("metro"), config={"horizon_s": 5.0})
    env.reset(seed=0)
    with pytest.raises(InvalidActionError, match="is not in action_space"):
        env.step(eval(expr))


@pytest.mark.parametrize("body, fragments", [
    ("class P(Policy):\n    def act(self, obs, snap)\n        return 0\n", ["syntax error in", "line 5"]),
    ("class P(Policy):\n    def __init__(self, x):\n        pass\n    def act(self, obs, snap):\n        return 0\n",
     ["no arguments"]),
], ids=["syntax-error", "ctor-needs-args"])
def test_evaluate_cli_reports_a_bad_policy_file_in_one_line(tmp_path, run_cli, assert_usage_error, body, fragments):
    path = tmp_path / "my_policy.py"
    path.write_text(HEADER + body)
    out = run_cli("evaluate.py", "--suite", "smoke", "--policies", f"{path}:P", "--quiet",
                  "--out", str(tmp_path / "lb"), timeout=180)
    assert_usage_error(out, "my_policy.py:P", *fragments)
    assert not (tmp_path / "lb").exists()
