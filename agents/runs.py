"""A training run directory: where its models, statistics and checkpoints are (defined once).

    runs/<run>/
        model.zip, vecnormalize.pkl                     final model and its statistics
        best_model/best_model.zip, best_model/vecnormalize.pkl
        checkpoints/rl_model_<N>_steps.zip, checkpoints/rl_model_vecnormalize_<N>_steps.pkl
        args.json                                       agents.schemas.RunRecord

(``models/<name>/`` holds ``best_model.zip`` and ``vecnormalize.pkl`` side by side.)

:func:`resolve_model` turns a run directory or a model file into the model and its statistics;
every consumer (``evaluate.py ppo=runs/x``, ``agents.export``, ``SB3Policy``, resuming) goes
through it. The checkpoint names are SB3's ``CheckpointCallback`` names with
``name_prefix=CHECKPOINT_PREFIX`` and ``save_vecnormalize=True``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CHECKPOINT_PREFIX", "CHECKPOINT_RE", "checkpoint_paths", "Checkpoint", "latest_checkpoint",
           "ModelFiles", "resolve_model", "find_vecnormalize", "run_dir_of", "is_run_dir",
           "MODEL_CANDIDATES"]

CHECKPOINT_PREFIX = "rl_model"
#: ``<prefix>_<N>_steps.zip`` (its statistics: ``<prefix>_vecnormalize_<N>_steps.pkl``).
CHECKPOINT_RE = re.compile(r"^(?P<prefix>.+)_(?P<steps>\d+)_steps\.zip$")
#: The model of a run directory, first found wins: the best model of the in-training
#: evaluation, then the final model.
MODEL_CANDIDATES = ("best_model/best_model.zip", "best_model.zip", "model.zip")


def checkpoint_paths(directory: str | os.PathLike, steps: int,
                     prefix: str = CHECKPOINT_PREFIX) -> tuple[Path, Path]:
    """(model, statistics) paths of the checkpoint at `steps`."""
    d = Path(directory)
    return d / f"{prefix}_{steps}_steps.zip", d / f"{prefix}_vecnormalize_{steps}_steps.pkl"


@dataclass(frozen=True)
class Checkpoint:
    model: Path
    vecnormalize: Path
    timesteps: int


def latest_checkpoint(checkpoint_dir: str | os.PathLike) -> Checkpoint | None:
    """The newest checkpoint that has its statistics file (others cannot be resumed exactly)."""
    d = Path(checkpoint_dir)
    if not d.is_dir():
        return None
    found = []
    for p in d.iterdir():
        m = CHECKPOINT_RE.match(p.name)
        if not m:
            continue
        _, pkl = checkpoint_paths(d, int(m["steps"]), m["prefix"])
        if pkl.is_file():
            found.append(Checkpoint(p, pkl, int(m["steps"])))
    return max(found, key=lambda c: c.timesteps) if found else None


def find_vecnormalize(model_path: str | os.PathLike) -> Path:
    """Where the statistics of `model_path` are expected (the file may not exist): the
    checkpoint's own file for a checkpoint, else ``vecnormalize.pkl`` beside the model."""
    p = Path(model_path)
    m = CHECKPOINT_RE.match(p.name)
    if m:
        _, pkl = checkpoint_paths(p.parent, int(m["steps"]), m["prefix"])
        if pkl.exists():
            return pkl
    return p.with_name("vecnormalize.pkl")


def is_run_dir(path: str | os.PathLike) -> bool:
    """A directory holding a trained SB3 model (see :data:`MODEL_CANDIDATES`)."""
    p = Path(path)
    return p.is_dir() and any((p / c).is_file() for c in MODEL_CANDIDATES)


@dataclass(frozen=True)
class ModelFiles:
    model: Path  #: the SB3 ``.zip``
    vecnormalize: Path  #: its statistics (may not exist: check before use)
    run_dir: Path  #: the run directory it belongs to


def run_dir_of(model_path: str | os.PathLike) -> Path:
    """``runs/x`` for ``runs/x/model.zip``, ``runs/x/best_model/best_model.zip``, a checkpoint."""
    parent = Path(model_path).parent
    return parent.parent if parent.name in ("best_model", "checkpoints") and parent.parent.name else parent


def resolve_model(path: str | os.PathLike) -> ModelFiles:
    """A run directory or an SB3 model file -> its :class:`ModelFiles`.

    Raises FileNotFoundError naming the path, or what a run directory should contain.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory")
    if p.is_dir():
        found = next((p / c for c in MODEL_CANDIDATES if (p / c).is_file()), None)
        if found is None:
            raise FileNotFoundError(f"{p}: not a run directory (none of {', '.join(MODEL_CANDIDATES)})")
        p = found
    return ModelFiles(p, find_vecnormalize(p), run_dir_of(p))
