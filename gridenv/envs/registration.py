"""One registered, versioned Gymnasium id per scenario YAML in ``configs/scenarios/``."""

from __future__ import annotations

__all__ = ["env_id", "register_envs", "ENV_VERSION", "RANDOM_GRID_ID"]

#: Bump when dynamics, reward or the observation change (and add a line to GridEnv's Version
#: History). v1: observation interface slots-2 (gridenv.core.interface). Old ids are not
#: registered, so gym.make("gridenv/Metro-v0") raises gymnasium's DeprecatedEnv naming -v1.
ENV_VERSION = 1


#: A new generated grid every reset (gridenv.envs.random_grid_env.RandomGridEnv).
RANDOM_GRID_ID = f"gridenv/RandomGrid-v{ENV_VERSION}"


def env_id(scenario_name: str) -> str:
    """``distributed-edge`` -> ``gridenv/DistributedEdge-v1``."""
    camel = "".join(part.capitalize() for part in scenario_name.replace("_", "-").split("-"))
    return f"gridenv/{camel}-v{ENV_VERSION}"


def register_envs() -> list[str]:
    import gymnasium as gym

    from gridenv.core.scenario import scenario_names

    ids = []
    for name in scenario_names():
        eid = env_id(name)
        # The namespaced id, and a bare alias so that the module:id form
        # gym.make("gridenv:Metro-v1") works in a fresh interpreter (it imports gridenv, then
        # looks the part after the colon up); "gridenv:gridenv/Metro-v1" works as well.
        # gym.make_vec(id, num_envs) builds the native GridVectorEnv (gridenv/envs/vector.py);
        # vectorization_mode="sync"/"async" still wraps GridEnv copies.
        for rid in (eid, eid.split("/", 1)[1]):
            if rid not in gym.registry:
                gym.register(id=rid, entry_point="gridenv.envs.grid_env:GridEnv",
                             vector_entry_point="gridenv.envs.vector:GridVectorEnv",
                             kwargs={"scenario": name})
        ids.append(eid)
    # A new generated grid every reset (gridenv.envs.random_grid_env): registered, but not one
    # of the scenario ids returned here (it has no YAML file and no fixed grid).
    for alias in (RANDOM_GRID_ID, RANDOM_GRID_ID.split("/", 1)[1]):
        if alias not in gym.registry:
            gym.register(id=alias, entry_point="gridenv.envs.random_grid_env:RandomGridEnv")
    return ids
