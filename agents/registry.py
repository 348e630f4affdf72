"""One entry point from a policy spec string to a :class:`~agents.policy.Policy`.

``load_policy(spec)`` accepts:

* a heuristic name (``jsq``, ``slo-greedy``, ... see :data:`agents.heuristics.HEURISTICS`);
* a path to a Stable-Baselines3 model ``.zip`` -> ``agents.sb3_policy.SB3Policy(path)`` (it
  finds the VecNormalize statistics saved beside the model);
* a path to an exported ONNX policy, a ``.onnx`` file or a directory
  -> ``agents.onnx_policy.ONNXPolicy(path)``.

The SB3 and ONNX back ends are imported only when such a spec is given, so loading a heuristic
never imports torch or onnxruntime.
"""

from __future__ import annotations

from pathlib import Path

from agents.heuristics import HEURISTICS, make_heuristic
from agents.policy import Policy

__all__ = ["load_policy", "is_heuristic", "describe_specs"]


def describe_specs() -> str:
    """What a policy spec may be (for error messages and --help)."""
    return (f"a heuristic ({', '.join(HEURISTICS)}), a path to an SB3 model .zip, "
            "or a path to an ONNX policy (.onnx file or directory)")


def is_heuristic(spec: str) -> bool:
    return spec in HEURISTICS


def _backend(module: str, cls: str, spec: str):
    """Import ``module.cls`` lazily, turning a missing module into a clear error."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise ValueError(
            f"policy {spec!r}: cannot load it, the back end {module} is not available ({e})"
        ) from None
    return getattr(mod, cls)


def load_policy(spec: str) -> Policy:
    """The policy named by `spec` (see the module docstring).

    Raises:
        ValueError: an unknown name, or a file of a kind no back end reads.
        FileNotFoundError: `spec` looks like a path but does not exist.
    """
    spec = str(spec).strip()
    if spec in HEURISTICS:
        return make_heuristic(spec)
    path = Path(spec).expanduser()
    looks_like_path = path.suffix in (".zip", ".onnx") or "/" in spec or path.exists()
    if not looks_like_path:
        raise ValueError(f"unknown policy {spec!r}: expected {describe_specs()}")
    if not path.exists():
        raise FileNotFoundError(
            f"policy {spec!r}: no such file or directory (known heuristics: {', '.join(HEURISTICS)})"
        )
    if path.suffix == ".zip":
        return _backend("agents.sb3_policy", "SB3Policy", spec)(str(path))
    if path.suffix == ".onnx" or path.is_dir():
        return _backend("agents.onnx_policy", "ONNXPolicy", spec)(str(path))
    raise ValueError(f"policy {spec!r}: unrecognized file type; expected {describe_specs()}")
