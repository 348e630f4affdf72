"""Policies that fail on purpose, for tests/agents/test_backends.py (not a test module).

Loaded by spec ``tests/agents/faulty_policies.py:<Class>`` (agents/registry.py), so worker
processes and Ray workers load them by path like any custom policy. They fail in ``reset``,
i.e. inside an episode, never when the spec is loaded.

The crashing ones kill their process with ``os._exit`` only when ``GRIDENV_TEST_CRASH_DIR`` is
set (the tests set it for the workers); otherwise they raise instead, so running one in the test
process itself cannot take pytest down.
"""

from __future__ import annotations

import os
from pathlib import Path

from agents.heuristics import JoinShortestQueue
from agents.policy import Policy

CRASH_DIR_VAR = "GRIDENV_TEST_CRASH_DIR"


class RaisingPolicy(Policy):
    """Raises in every episode."""

    name = "raising"

    def reset(self, seed=None):
        raise RuntimeError(f"deliberate failure on seed {seed}")

    def act(self, obs, snapshot):  # pragma: no cover - never reached
        raise AssertionError


def _die(reason: str) -> None:
    if not os.environ.get(CRASH_DIR_VAR):
        raise RuntimeError(f"{reason} (no {CRASH_DIR_VAR}: raising instead of killing the process)")
    os._exit(3)


class CrashOncePolicy(JoinShortestQueue):
    """jsq, but the first episode of each seed kills its worker process (a marker file remembers)."""

    name = "crash-once"

    def reset(self, seed=None):
        marker = Path(os.environ.get(CRASH_DIR_VAR, ".")) / f"crash-once-{seed}"
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
            _die("crash-once")
        super().reset(seed)


class CrashAlwaysPolicy(Policy):
    """Kills its worker process in every episode."""

    name = "crash-always"

    def reset(self, seed=None):
        _die("crash-always")

    def act(self, obs, snapshot):  # pragma: no cover - never reached
        raise AssertionError


class FlakyPolicy(JoinShortestQueue):
    """jsq, but the first episode of each seed loses its connection (a transient error)."""

    name = "flaky"

    def reset(self, seed=None):
        marker = Path(os.environ.get(CRASH_DIR_VAR, ".")) / f"flaky-{seed}"
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
            raise ConnectionError(f"deliberate lost connection on seed {seed}")
        super().reset(seed)
