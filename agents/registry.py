"""One entry point from a policy spec string to a :class:`~agents.policy.Policy`.

``load_policy(spec)`` accepts:

* a heuristic name (``jsq``, ``slo-greedy``, ... see :data:`agents.heuristics.HEURISTICS`);
* a path to a Stable-Baselines3 model ``.zip`` or to a training run directory
  (:func:`agents.runs.resolve_model`: its best model, else its final model)
  -> ``agents.sb3_policy.SB3Policy`` (it finds the VecNormalize statistics saved beside the model);
* a path to an exported ONNX policy, a ``.onnx`` file or a directory holding ``policy.onnx``
  -> ``agents.onnx_policy.ONNXPolicy(path)``;
* a custom :class:`~agents.policy.Policy` subclass built with no arguments, as
  ``package.module:ClassName`` (an importable module) or ``path/to/file.py:ClassName`` (a file
  loaded by path). Worker processes and Ray workers load it the same way, so the module must be
  importable, or the file present at that path, wherever episodes run.

The SB3 and ONNX back ends are imported only when such a spec is given, so loading a heuristic
never imports torch or onnxruntime.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from pathlib import Path

from agents.heuristics import HEURISTICS, make_heuristic
from agents.policy import Policy

__all__ = ["load_policy", "is_heuristic", "describe_specs"]


def describe_specs() -> str:
    """What a policy spec may be (for error messages and --help)."""
    return (f"a heuristic ({', '.join(HEURISTICS)}), a training run directory or SB3 model .zip, "
            "an exported ONNX policy (directory or .onnx file), "
            "or a Policy class as package.module:Class or path/to/file.py:Class")


def is_heuristic(spec: str) -> bool:
    return spec in HEURISTICS


def _backend(module: str, cls: str, spec: str):
    """Import ``module.cls`` lazily, turning a missing module into a clear error."""
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
    if _CLASS_SPEC.fullmatch(spec):
        return _load_class(spec)
    path = Path(spec).expanduser()
    looks_like_path = path.suffix in (".zip", ".onnx") or "/" in spec or path.exists()
    if not looks_like_path:
        raise ValueError(f"unknown policy {spec!r}: expected {describe_specs()}")
    if not path.exists():
        raise FileNotFoundError(
            f"policy {spec!r}: no such file or directory (known heuristics: {', '.join(HEURISTICS)})"
        )
    from agents.runs import is_run_dir, resolve_model

    if path.suffix == ".zip" or is_run_dir(path):
        return _backend("agents.sb3_policy", "SB3Policy", spec)(str(resolve_model(path).model))
    if path.suffix == ".onnx" or (path.is_dir() and (path / "policy.onnx").is_file()):
        return _backend("agents.onnx_policy", "ONNXPolicy", spec)(str(path))
    if path.is_dir():
        raise ValueError(f"policy {spec!r}: a directory with neither a trained model (a run directory) "
                         "nor policy.onnx (an exported policy)")
    raise ValueError(f"policy {spec!r}: unrecognized file type; expected {describe_specs()}")


#: ``package.module:Class`` or ``some/file.py:Class``.
_CLASS_SPEC = re.compile(r"(?:[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*|.+\.py):[A-Za-z_]\w*")


def _load_class(spec: str) -> Policy:
    """``module:Class`` / ``file.py:Class`` -> ``Class()``, which must be a Policy subclass.

    Every user mistake is one ValueError (FileNotFoundError for a missing file) naming the spec:
    a syntax error (file and line), an exception while importing, a missing class or one that
    is not a Policy, a constructor that needs arguments or raises.
    """
    where, _, name = spec.rpartition(":")
    if where.endswith(".py"):
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"policy {spec!r}: no such file {where}")
        # One module per file, loaded once per process (a stable name derived from the path).
        mod_name = f"_gridenv_policy_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        mod = sys.modules.get(mod_name)
        if mod is None:
            loader_spec = importlib.util.spec_from_file_location(mod_name, path)
            mod = importlib.util.module_from_spec(loader_spec)
            sys.modules[mod_name] = mod
            try:
                loader_spec.loader.exec_module(mod)
            except SyntaxError as e:
                del sys.modules[mod_name]
                raise ValueError(f"policy {spec!r}: syntax error in {where} line {e.lineno}: {e.msg}") from None
            except Exception as e:
                del sys.modules[mod_name]
                raise ValueError(
                    f"policy {spec!r}: importing {where} raised {type(e).__name__}: {e}"
                ) from None
            except BaseException:
                del sys.modules[mod_name]
                raise
    else:
        try:
            mod = importlib.import_module(where)
        except ModuleNotFoundError as e:
            raise ValueError(f"policy {spec!r}: cannot import module {where!r} ({e})") from None
        except SyntaxError as e:
            raise ValueError(f"policy {spec!r}: syntax error in {e.filename} line {e.lineno}: {e.msg}") from None
        except Exception as e:
            raise ValueError(f"policy {spec!r}: importing {where} raised {type(e).__name__}: {e}") from None
    cls = getattr(mod, name, None)
    if cls is None:
        raise ValueError(f"policy {spec!r}: {where} has no Policy subclass named {name!r} (no such name)")
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        what = f"class {cls.__name__}" if isinstance(cls, type) else f"a {type(cls).__name__}"
        raise ValueError(f"policy {spec!r}: {where}:{name} is {what}, not a subclass of agents.policy.Policy")
    if getattr(cls, "__abstractmethods__", None):
        raise ValueError(f"policy {spec!r}: {name} does not implement "
                         f"{', '.join(sorted(cls.__abstractmethods__))}")
    try:
        policy = cls()
    except TypeError as e:
        raise ValueError(f"policy {spec!r}: {name}() failed ({e}); a policy class given as "
                         "module:Class must be constructible with no arguments") from None
    except Exception as e:
        raise ValueError(f"policy {spec!r}: {name}() raised {type(e).__name__}: {e}") from None
    policy.act = _checked_act(policy.act, spec)  # user code: name it when its action is bad
    return policy


def _checked_act(act, spec: str):
    """`act`, raising InvalidActionError (a ValueError) naming `spec` and the action when it is
    not in the action space (non-finite, fractional, wrong shape or type, out of range)."""
    import numpy as np

    from gridenv.envs.grid_env import InvalidActionError

    def checked(obs, snapshot):
        action = act(obs, snapshot)
        st = snapshot.statics
        try:
            a = np.asarray(action)
            ok = (a.dtype.kind in "iuf" and a.shape == (2,) and bool(np.isfinite(a).all())
                  and bool((a == np.round(a)).all()) and 0 <= a[0] <= st.max_sites
                  and 0 <= a[1] < len(st.batch_levels))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            shown = repr(action)
            raise InvalidActionError(
                f"policy {spec!r} returned action {shown[:80]}, not [site, batch_level] integers in "
                f"MultiDiscrete([{st.max_sites + 1}, {len(st.batch_levels)}])"
            )
        return action

    return checked
