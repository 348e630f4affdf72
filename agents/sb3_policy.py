"""A trained Stable-Baselines3 agent (MaskablePPO or PPO ``.zip``) as an :class:`agents.policy.Policy`.

    from agents.sb3_policy import SB3Policy
    policy = SB3Policy("runs/metro_maskable_ppo_s0/best_model/best_model.zip")
    obs, info = env.reset(seed=0)
    action = policy.act(obs, info["snapshot"])     # the snapshot comes from the env's info

* The interface: the model's recorded observation interface (``interface.json`` beside the
  model, else ``"interface"`` in its run's ``args.json``, both written by ``train.py`` /
  ``agents.migrate``: version, content hash, declaration) must be the one the environment
  encodes. The first ``act`` checks it against ``gridenv.core.interface.make_interface(
  snapshot.statics, recorded mode)`` and raises
  :class:`gridenv.core.interface.InterfaceMismatchError` naming the feature, vocabulary entry or
  action element that differs. A model with no record (trained before interfaces were
  versioned) is checked by its observation shape only.

* The algorithm is read from the archive (its policy class), not from the file name.
* Observation normalization: the VecNormalize statistics are read from ``vecnormalize.pkl``
  beside the model (``train.py`` saves one beside ``model.zip`` and ``best_model.zip``; for a
  checkpoint ``<prefix>_<N>_steps.zip`` it is ``<prefix>_vecnormalize_<N>_steps.pkl``) or from an
  explicit path. Only the observation part is applied, with ``VecNormalize.normalize_obs``
  semantics: ``clip((obs - mean) / sqrt(var + epsilon), -clip_obs, clip_obs)``; no env is needed.
* Actions are deterministic. MaskablePPO predicts with ``snapshot.action_mask``, so it never
  picks a masked site. Plain PPO predicts without the mask; when its site is masked the policy
  **sheds explicitly** (``[max_sites, level]``), which is the outcome of the env's documented
  fallback (``actions.invalid_action: shed``) but keeps the Policy contract (never return a masked
  site) and also works under ``invalid_action: raise``. Such fallbacks are counted in
  :attr:`SB3Policy.n_masked_fallbacks`.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np

from agents.policy import Policy
from gridenv.core.interface import InterfaceMismatchError, check_compatible, make_interface
from gridenv.core.snapshot import RouterSnapshot

__all__ = ["SB3Policy", "detect_algo", "find_vecnormalize", "read_interface_record",
           "write_interface_record", "INTERFACE_JSON"]

#: Sidecar file holding a model's interface record (beside the model .zip).
INTERFACE_JSON = "interface.json"

# The run-directory layout and checkpoint names are defined once, in agents.runs.
from agents.runs import find_vecnormalize, resolve_model, run_dir_of  # noqa: E402


def detect_algo(path: str | Path) -> str:
    """``"maskable_ppo"`` or ``"ppo"`` from the policy class stored in an SB3 ``.zip``.

    Raises ValueError when `path` is not an SB3 model archive (or holds another algorithm).
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            data = json.loads(zf.read("data"))
        policy_class = data["policy_class"]
        module = policy_class.get("__module__", "") if isinstance(policy_class, dict) else ""
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, UnicodeDecodeError, AttributeError, OSError) as err:
        raise ValueError(f"{path} is not a valid Stable-Baselines3 model archive ({type(err).__name__}: {err})") from err
    if "sb3_contrib.common.maskable" in module:
        return "maskable_ppo"
    if module.startswith("stable_baselines3.common.policies"):
        return "ppo"
    # A custom policy class (e.g. agents.site_policy): deserialize it as SB3 does and ask it.
    try:
        from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
        from stable_baselines3.common.policies import ActorCriticPolicy
        from stable_baselines3.common.save_util import json_to_data

        cls = json_to_data(json.dumps({"policy_class": policy_class}))["policy_class"]
    except Exception:  # noqa: BLE001 - an unloadable class is reported below
        cls = None
    if isinstance(cls, type):
        if issubclass(cls, MaskableActorCriticPolicy):
            return "maskable_ppo"
        if issubclass(cls, ActorCriticPolicy):
            return "ppo"
    raise ValueError(f"{path}: unsupported policy class from module {module!r} (expected MaskablePPO or PPO)")


def read_interface_record(model_path: str | Path) -> tuple[dict | None, Path | None]:
    """(interface record, file it came from) of a model: ``interface.json`` beside it, else the
    run directory's ``args.json`` key ``interface``; (None, None) when neither has one."""
    p = Path(model_path)
    candidates = [p.with_name(INTERFACE_JSON)]
    run = run_dir_of(p)
    candidates += [run / INTERFACE_JSON, run / "args.json"]
    for c in candidates:
        if not c.is_file():
            continue
        try:
            d = json.loads(c.read_text())
        except (json.JSONDecodeError, OSError, UnicodeDecodeError) as err:
            raise ValueError(f"{c}: not valid JSON ({err})") from None
        rec = d.get("interface") if c.name == "args.json" and isinstance(d, dict) else d
        if rec is not None:
            if not isinstance(rec, dict) or not isinstance(rec.get("interface"), dict):
                raise ValueError(f"{c}: malformed interface record (expected version, content_hash, interface)")
            return rec, c
    return None, None


def write_interface_record(path: str | Path, interface) -> Path:
    """Write ``interface.record()`` to `path` (a directory: its ``interface.json``)."""
    p = Path(path)
    if p.is_dir():
        p = p / INTERFACE_JSON
    p.write_text(json.dumps(interface.record(), indent=2) + "\n")
    return p


def _load_obs_stats(path: Path) -> dict:
    """mean, var, epsilon, clip_obs, norm_obs of a pickled VecNormalize (no env needed)."""
    try:
        with open(path, "rb") as f:
            vn = pickle.load(f)  # VecNormalize.__setstate__ leaves venv = None
        # Read attributes from __dict__: with norm_obs=False there is no obs_rms, and a missing
        # attribute would be looked up on the (absent) wrapped venv.
        norm_obs = bool(vn.__dict__["norm_obs"])
        rms = vn.__dict__.get("obs_rms")
        if norm_obs and rms is None:
            raise ValueError("norm_obs is set but there are no observation statistics")
        stats = {
            "mean": np.asarray(rms.mean, dtype=np.float64) if norm_obs else None,
            "std": np.sqrt(np.asarray(rms.var, dtype=np.float64) + float(vn.__dict__["epsilon"])) if norm_obs else None,
            "clip_obs": float(vn.__dict__["clip_obs"]),
            "norm_obs": norm_obs,
        }
    except FileNotFoundError:
        raise
    except Exception as err:  # unpickling garbage raises anything from UnpicklingError to EOFError
        raise ValueError(f"{path} is not a valid VecNormalize statistics file ({type(err).__name__}: {err})") from err
    if isinstance(rms, dict):
        raise ValueError(f"{path}: dict observation statistics are not supported")
    return stats


def _run_name(model_path: Path) -> str:
    """The run directory's name: ``runs/<run>/model.zip``, ``runs/<run>/best_model/x.zip``, ..."""
    parent = model_path.parent
    if parent.name in ("best_model", "checkpoints") and parent.parent.name:
        return parent.parent.name
    return parent.name or model_path.stem


class SB3Policy(Policy):
    """A MaskablePPO / PPO model as a Policy (see the module docstring).

    Args:
        path: the model ``.zip``, or a run directory (its ``best_model/best_model.zip`` when
            present, else its ``model.zip``).
        vecnormalize: the VecNormalize ``.pkl``; default: found beside the model. ``False``: the
            model was trained on raw observations.
        name: leaderboard name; default: the run directory's name.
        device: torch device.

    Raises:
        FileNotFoundError: the model or the VecNormalize file does not exist (the message names it).
        ValueError: a file that is not an SB3 model / VecNormalize pickle, or one made for
            different observation or action spaces.
    """

    def __init__(self, path: str | Path, vecnormalize: str | Path | bool | None = None,
                 name: str | None = None, device: str = "cpu") -> None:
        path = Path(path)
        if path.is_dir():
            path = resolve_model(path).model
        if not path.is_file():
            raise FileNotFoundError(f"SB3 model not found: {path}")
        self.path = path
        self.algo = detect_algo(path)
        if self.algo == "maskable_ppo":
            from sb3_contrib import MaskablePPO as Algo
        else:
            from stable_baselines3 import PPO as Algo
        try:
            self.model = Algo.load(path, device=device)
        except Exception as err:  # a damaged policy.pth inside a valid zip, wrong versions, ...
            raise ValueError(f"cannot load {self.algo} model {path}: {type(err).__name__}: {err}") from err
        space = self.model.action_space
        nvec = getattr(space, "nvec", None)
        if nvec is None or len(nvec) != 2:
            raise ValueError(f"{path}: expected a MultiDiscrete([max_sites + 1, n_levels]) action space, got {space}")
        self.max_sites = int(nvec[0]) - 1
        self.n_levels = int(nvec[1])
        self.obs_shape = tuple(self.model.observation_space.shape)

        self.vecnormalize_path: Path | None = None
        self._stats: dict | None = None
        if vecnormalize is not False:
            vn_path = find_vecnormalize(path) if vecnormalize in (None, True) else Path(vecnormalize)
            if not vn_path.is_file():
                raise FileNotFoundError(
                    f"VecNormalize statistics not found: {vn_path} (pass vecnormalize=<path>, or "
                    "vecnormalize=False for a model trained without VecNormalize)"
                )
            stats = _load_obs_stats(vn_path)
            if stats["norm_obs"] and stats["mean"].shape != self.obs_shape:
                raise ValueError(f"{vn_path}: statistics for observations of shape {stats['mean'].shape}, "
                                 f"the model takes {self.obs_shape}")
            self.vecnormalize_path = vn_path
            self._stats = stats if stats["norm_obs"] else None
        self.name = name or _run_name(path)
        #: the model's recorded interface (None: trained before interfaces were recorded)
        self.interface_record, self.interface_record_path = read_interface_record(path)
        self._checked_statics: list = []  # statics objects already checked (kept alive)
        #: plain PPO only: decisions where the predicted site was masked and the policy shed.
        self.n_masked_fallbacks = 0

    # ------------------------------------------------------------------ Policy API
    def reset(self, seed: int | None = None) -> None:
        """Deterministic policy: nothing to reseed."""

    def normalize_obs(self, obs: np.ndarray) -> np.ndarray:
        """``clip((obs - mean) / sqrt(var + eps), -clip_obs, clip_obs)`` as float32 (or obs as is)."""
        obs = np.asarray(obs, dtype=np.float32)
        if obs.shape[-len(self.obs_shape):] != self.obs_shape:
            raise ValueError(f"{self.name}: observation of shape {obs.shape}, the model takes {self.obs_shape} "
                             "(trained on another scenario?)")
        if self._stats is None:
            return obs
        s = self._stats
        return np.clip((obs - s["mean"]) / s["std"], -s["clip_obs"], s["clip_obs"]).astype(np.float32)

    def check_interface(self, interface) -> None:
        """Raise InterfaceMismatchError unless the model was recorded for `interface`."""
        if self.interface_record is None:
            return
        check_compatible(self.interface_record, interface,
                         what=f"{self.name} ({self.interface_record_path})")

    def _check_snapshot(self, snapshot: RouterSnapshot) -> None:
        st = snapshot.statics
        if any(s is st for s in self._checked_statics):
            return
        if self.interface_record is not None:
            mode = self.interface_record["interface"].get("mode", "slots")
            try:
                current = make_interface(st, mode)
            except ValueError as err:
                raise InterfaceMismatchError(f"{self.name}: recorded interface mode {mode!r}: {err}") from None
            self.check_interface(current)
        self._checked_statics.append(st)

    def _mask(self, snapshot: RouterSnapshot) -> np.ndarray:
        self._check_snapshot(snapshot)
        mask = np.asarray(snapshot.action_mask, dtype=bool)
        if mask.shape != (self.max_sites + 1 + self.n_levels,):
            raise ValueError(f"{self.name}: action mask of length {mask.shape[0]}, the model expects "
                             f"{self.max_sites + 1 + self.n_levels} ({self.max_sites} site slots + shed + "
                             f"{self.n_levels} batch levels)")
        return mask

    def act(self, obs: np.ndarray, snapshot: RouterSnapshot) -> np.ndarray:
        """The deterministic action: per head, the argmax of the (masked, for MaskablePPO)
        logits, which is what ``model.predict(..., deterministic=True)`` returns (the mode of
        each categorical), computed directly because predict's per-call overhead is ~1 ms."""
        import torch

        x = self.normalize_obs(obs)
        mask = self._mask(snapshot)
        policy = self.model.policy
        with torch.no_grad():
            features = policy.extract_features(torch.as_tensor(x[None]), policy.pi_features_extractor)
            logits = policy.action_net(policy.mlp_extractor.forward_actor(features))[0].numpy()
        n_site = self.max_sites + 1
        if self.algo == "maskable_ppo":
            logits = np.where(mask, logits, -np.inf)
        action = np.array([np.argmax(logits[:n_site]), np.argmax(logits[n_site:])], dtype=np.int64)
        if not mask[action[0]]:  # plain PPO chose a masked site: shed, as the env would
            self.n_masked_fallbacks += 1
            action[0] = self.max_sites
        return action

    def scores(self, obs: np.ndarray, snapshot: RouterSnapshot) -> np.ndarray:
        """The policy's probability of each site slot (masked sites 0), scaled so the best is 1."""
        import torch

        x = self.normalize_obs(obs)
        mask = self._mask(snapshot)
        obs_t, _ = self.model.policy.obs_to_tensor(x)
        with torch.no_grad():
            if self.algo == "maskable_ppo":
                dist = self.model.policy.get_distribution(obs_t, action_masks=mask)
            else:
                dist = self.model.policy.get_distribution(obs_t)
            # MultiCategorical keeps a list of per-component distributions; the first is the site
            site = dist.distributions[0] if hasattr(dist, "distributions") else dist.distribution[0]
            probs = site.probs.cpu().numpy().reshape(-1)[: self.max_sites]
        probs = np.where(mask[: self.max_sites], probs, 0.0)
        top = probs.max()
        return probs / top if top > 0 else probs
