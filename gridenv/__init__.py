"""gridenv: a reinforcement-learning environment for LLM token scheduling on an edge/core GPU grid.

Importing gridenv registers one Gymnasium id per scenario (``gridenv/Metro-v1`` ...) when
gymnasium is installed; the simulation core (``gridenv.core``) and the router runtime do not
need it.
"""

__version__ = "0.1.0"

try:  # registration needs gymnasium; a router host may not have it
    import gymnasium as _gym  # noqa: F401
except ImportError:  # pragma: no cover
    ENV_IDS: list[str] = []
else:
    from gridenv.envs.registration import register_envs as _register

    ENV_IDS = _register()
