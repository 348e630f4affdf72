"""Scenario lookup and Gymnasium ids: one registered, versioned id per scenario.

Every tool names a scenario the same way (:func:`resolve_scenario`): a built-in scenario's name
(``metro``, a file of ``configs/scenarios/``), its env id (``gridenv/Metro-v1``, or
``Metro-v1``), or the path of a scenario YAML file (``path/to/my.yaml``), whose id comes from
the ``name:`` in the file (``name: my-grid`` -> ``gridenv/MyGrid-v1``) and is registered on
first use::

    import gymnasium as gym
    from gridenv.envs.registration import register_scenario

    env = gym.make(register_scenario("path/to/my.yaml"))
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["env_id", "register_envs", "register_scenario", "resolve_scenario", "ScenarioRef",
           "ENV_VERSION", "ENTRY_POINT", "RANDOM_GRID_ID", "EXTRA_SCENARIO_FILES", "extra_scenario_ids"]

#: Bump when dynamics, reward or the observation change (and add a line to GridEnv's Version
#: History). v1: observation interface slots-2, revised to slots-3 (gridenv.core.interface). Old ids are not
#: registered, so gym.make("gridenv/Metro-v0") raises gymnasium's DeprecatedEnv naming -v1.
ENV_VERSION = 1
ENTRY_POINT = "gridenv.envs.grid_env:GridEnv"


#: Scenario files outside ``configs/scenarios`` that ``import gridenv`` registers by name and id
#: as well (paths relative to the checkout's ``configs/``): replays of trace files kept beside
#: them (the trace path resolves against the YAML's folder, so they work from any directory).
#: They are not built-in scenarios: not in :func:`~gridenv.core.scenario.scenario_names`, so not
#: in the ``standard`` suite; the file's ``name:`` must be its stem.
EXTRA_SCENARIO_FILES: tuple[str, ...] = ("mooncake/mooncake-replay.yaml",)

#: A new generated grid every reset (gridenv.envs.random_grid_env.RandomGridEnv).
RANDOM_GRID_ID = f"gridenv/RandomGrid-v{ENV_VERSION}"


def env_id(scenario_name: str) -> str:
    """``distributed-edge`` -> ``gridenv/DistributedEdge-v1``."""
    camel = "".join(part.capitalize() for part in scenario_name.replace("_", "-").split("-"))
    return f"gridenv/{camel}-v{ENV_VERSION}"


@dataclass(frozen=True)
class ScenarioRef:
    """A resolved scenario: its name, its env id, and what ``GridEnv(scenario=...)`` loads."""

    name: str  #: ``metro``, or the ``name:`` of a YAML file
    env_id: str  #: ``gridenv/Metro-v1``
    source: str  #: the built-in name, or the YAML file's absolute path
    is_file: bool  #: given as a YAML path (not a built-in scenario)


def _is_yaml_path(text: str) -> bool:
    return text.endswith((".yaml", ".yml"))


def resolve_scenario(spec: str | os.PathLike) -> ScenarioRef:
    """A scenario name, env id or YAML path -> :class:`ScenarioRef` (registering a file's id).

    Raises :class:`gridenv.core.scenario.ScenarioError` (a ValueError) for an unknown name or
    id, a missing or invalid file, or a file whose name is already taken by another scenario.
    """
    from gridenv.core.scenario import ScenarioError, scenario_names

    text = os.fspath(spec).strip()
    if _is_yaml_path(text):
        return _register_file(Path(text))
    names = scenario_names()
    if text in names:
        return ScenarioRef(text, env_id(text), text, False)
    for n in names:
        if text in (env_id(n), env_id(n).removeprefix("gridenv/")):
            return ScenarioRef(n, env_id(n), n, False)
    extra_scenario_ids()  # also without gymnasium (then nothing is registered with it)
    for ref in _FILES.values():  # a scenario file registered earlier, named or by id
        if text in (ref.name, ref.env_id, ref.env_id.removeprefix("gridenv/")):
            return ref
    raise ScenarioError(
        f"unknown scenario {text!r}: give a name ({', '.join(names)}), an env id "
        f"({env_id(names[0])}, ...) or the path of a scenario YAML file")


#: Scenario files registered in this process, by absolute path.
_FILES: dict[str, ScenarioRef] = {}


def _register_file(path: Path) -> ScenarioRef:
    from gridenv.core.scenario import ScenarioError, load_scenario, scenario_dir, scenario_names

    path = path.expanduser().resolve()
    if str(path) in _FILES:
        return _FILES[str(path)]
    if not path.is_file():
        raise ScenarioError(f"scenario file {path} not found")
    name = load_scenario(path).name  # validates the whole file (errors name file and field)
    builtin = scenario_dir().resolve() / f"{name}.yaml"
    if name in scenario_names() and builtin == path:
        return ScenarioRef(name, env_id(name), name, False)
    if name in scenario_names():
        raise ScenarioError(f"{path}: name {name!r} is the built-in scenario {builtin}; "
                            "give your scenario another name")
    for other, ref in _FILES.items():
        if ref.name == name:
            raise ScenarioError(f"{path}: name {name!r} is already used by {other}")
    ref = ScenarioRef(name, env_id(name), str(path), True)
    _FILES[str(path)] = ref
    _register(ref.env_id, ref.source)
    return ref


def _register(eid: str, source: str) -> None:
    try:
        import gymnasium as gym
    except ImportError:  # pragma: no cover - the core works without gymnasium
        return
    # The namespaced id, and a bare alias so that the module:id form
    # gym.make("gridenv:Metro-v1") works in a fresh interpreter (it imports gridenv, then
    # looks the part after the colon up); "gridenv:gridenv/Metro-v1" works as well.
    for rid in (eid, eid.split("/", 1)[1]):
        if rid not in gym.registry:
            # gym.make_vec(id, num_envs) builds the native GridVectorEnv (gridenv/envs/vector.py);
            # vectorization_mode="sync"/"async" still wraps GridEnv copies.
            gym.register(id=rid, entry_point=ENTRY_POINT, kwargs={"scenario": source},
                         vector_entry_point="gridenv.envs.vector:GridVectorEnv")


def register_scenario(spec: str | os.PathLike) -> str:
    """The env id of a scenario name, id or YAML file, registered with Gymnasium if needed."""
    ref = resolve_scenario(spec)
    _register(ref.env_id, ref.source)
    return ref.env_id


def extra_scenario_ids() -> list[str]:
    """Register the :data:`EXTRA_SCENARIO_FILES` (name and id, without loading them: no import
    cost); their ids. A file missing from the checkout is skipped."""
    configs = Path(__file__).resolve().parents[2] / "configs"
    ids = []
    for rel in EXTRA_SCENARIO_FILES:
        path = (configs / rel).resolve()
        if not path.is_file():
            continue
        ref = ScenarioRef(path.stem, env_id(path.stem), str(path), True)
        _FILES.setdefault(str(path), ref)
        _register(ref.env_id, ref.source)
        ids.append(ref.env_id)
    return ids


def register_envs() -> list[str]:
    """Register every built-in scenario (their ids are returned) and the extra scenario files."""
    import gymnasium as gym

    from gridenv.core.scenario import scenario_names

    ids = []
    for name in scenario_names():
        _register(env_id(name), name)
        ids.append(env_id(name))
    extra_scenario_ids()
    # A new generated grid every reset (gridenv.envs.random_grid_env): registered, but not one
    # of the scenario ids returned here (it has no YAML file and no fixed grid).
    for alias in (RANDOM_GRID_ID, RANDOM_GRID_ID.split("/", 1)[1]):
        if alias not in gym.registry:
            gym.register(id=alias, entry_point="gridenv.envs.random_grid_env:RandomGridEnv",
                         vector_entry_point="gridenv.envs.random_grid_env:RandomGridVectorEnv")
    return ids
