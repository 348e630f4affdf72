"""Carry a trained SB3 model to the current observation interface when features were added.

    python -m agents.migrate models/metro/best_model.zip --scenario metro
    python -m agents.migrate models/continental/best_model.zip --scenario continental

The model's recorded interface (``interface.json`` beside it) must be the current declaration
with some features missing (e.g. ``slots-2`` -> ``slots-3`` added three per-site cache
features); every feature the model knows must be declared identically now. The elements the
model never saw get **zero input weights** in every first layer that reads the observation (a
site-scoring policy's ``site_mlp.0``: own site features, request features, pooled site
features; ``global_mlp.0``: request, pooled, and with ``level_from_site`` the chosen site's
features; ``critic.0``: the whole observation; a plain MLP's ``policy_net.0`` and
``value_net.0``), so the migrated model computes exactly what the original computed on the
features it knew, whatever the new ones say. (With ``level_from_site`` the softmax that picks
the chosen site reads the ``feasible`` flag at ``feasible_index``: that index moves to the
flag's position in the new layout; the site logits it weights are unchanged.) It stays blind
to the new features until it is retrained. Adam moments of those weights are extended with
zeros, the stored last observations are re-laid out, ``observation_space`` and the
site-scoring policy's ``n_site_features`` (and ``feasible_index``) are set, and the interface
record (``interface.json`` and the run's ``args.json``) is rewritten, so
:class:`agents.sb3_policy.SB3Policy` and ``agents.export`` accept it. VecNormalize statistics must be observation-free (as for the committed agents).

Verification (always run; the migration is refused on failure): on ``--verify-states`` states
of episodes driven by the original model, the original on the old layout (the new observation
restricted to the old elements, by name) and the migrated model on the new observation give the
same deterministic actions and logits within 1e-5.

History: the ``slots-1`` -> ``slots-2`` migration (dropping always-zero model one-hot columns,
env v0 -> v1) is the version of this module at commit 33e60bc.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path

import numpy as np

__all__ = ["MigrationError", "element_names", "migrate_model", "main"]


class MigrationError(ValueError):
    """The model cannot be migrated exactly (the message says why)."""


def element_names(decl: dict) -> tuple[list[str], list[str], list[str]]:
    """(every observation element's name, site feature names, request element names) of an
    interface declaration, in observation order (as ``Interface.feature_spec`` names them)."""
    site = [f["name"] for f in decl["site_features"]]
    req = []
    for f in decl["request_features"]:
        if f.get("vocab"):
            req += [f"{f['name']}={v}" for v in decl["vocabularies"][f["vocab"]]]
        else:
            req.append(f["name"])
    n = decl["action"]["max_sites"]
    return [f"site[{i}].{s}" for i in range(n) for s in site] + [f"request.{r}" for r in req], site, req


def _positions(old: list[str], new: list[str], what: str) -> np.ndarray:
    missing = [x for x in old if x not in new]
    if missing:
        raise MigrationError(f"{what} {missing} are not in the current interface (only additions migrate)")
    pos = np.array([new.index(x) for x in old], dtype=np.int64)
    if not np.all(np.diff(pos) > 0):
        raise MigrationError(f"{what}: the known elements are not in the same order any more")
    return pos


def _check_only_additions(recorded: dict, current: dict) -> None:
    from gridenv.core.interface import diff_declarations

    bad = [d for d in diff_declarations(recorded, current)
           if not (d.endswith("added (current has it, recorded does not)") or d.startswith(("version:", "obs_size:")))]
    if bad:
        raise MigrationError("the interfaces differ by more than added features: " + "; ".join(bad))


def _widen(w, cols: np.ndarray, width: int):
    """A weight matrix reading `width` inputs whose columns `cols` are `w`'s, the rest zero."""
    import torch

    out = torch.zeros((w.shape[0], width), dtype=w.dtype)
    out[:, torch.as_tensor(cols)] = w
    return out


def migrate_model(model_path: str | Path, scenario: str, out_path: str | Path | None = None,
                  verify_states: int = 1000, seed: int = 0) -> dict:
    """Migrate `model_path` in place (or to `out_path`); returns the verification numbers."""
    import gymnasium as gym
    import torch
    from gymnasium import spaces
    from stable_baselines3.common.save_util import load_from_zip_file, save_to_zip_file

    import gridenv  # noqa: F401
    from agents.sb3_policy import detect_algo, read_interface_record, write_interface_record
    from gridenv.envs.registration import resolve_scenario

    model_path = Path(model_path)
    out_path = Path(out_path) if out_path else model_path
    env = gym.make(resolve_scenario(scenario).env_id)
    iface = env.unwrapped.interface
    record, _ = read_interface_record(model_path)
    if record is None:
        raise MigrationError(f"{model_path}: no interface record beside it")
    old_decl, new_decl = record.get("interface", record), iface.to_dict()
    _check_only_additions(old_decl, new_decl)
    old_names, old_site, old_req = element_names(old_decl)
    new_names, new_site, new_req = element_names(new_decl)
    keep = _positions(old_names, new_names, "observation elements")
    site_pos = _positions(old_site, new_site, "site features")
    req_pos = _positions(old_req, new_req, "request elements")
    old_size, new_size = len(old_names), len(new_names)
    F0, F1, R0, R1 = len(old_site), len(new_site), len(old_req), len(new_req)

    data, params, pvars = load_from_zip_file(str(model_path), device="cpu")
    if tuple(data["observation_space"].shape) != (old_size,):
        raise MigrationError(f"{model_path}: observation of shape {tuple(data['observation_space'].shape)}, "
                             f"its interface record says ({old_size},)")
    sd = params["policy"]
    old_kwargs = dict(data.get("policy_kwargs", {}))
    # level_from_site (agents/site_policy.py): global_mlp also reads the chosen site's features
    # (request, pooled, chosen), and the choice reads the `feasible` flag at feasible_index.
    level_from_site = bool(old_kwargs.get("level_from_site", False))
    chosen = 1 if level_from_site else 0
    layers = {  # weight name -> (old input count, new positions of the old columns, new width)
        "mlp_extractor.site_mlp.0.weight": (2 * F0 + R0, np.concatenate([site_pos, F1 + req_pos, F1 + R1 + site_pos]),
                                            2 * F1 + R1),
        "mlp_extractor.global_mlp.0.weight": (R0 + (1 + chosen) * F0,
                                              np.concatenate([req_pos, R1 + site_pos] + [R1 + F1 + site_pos] * chosen),
                                              R1 + (1 + chosen) * F1),
        "mlp_extractor.critic.0.weight": (old_size, keep, new_size),
        "mlp_extractor.policy_net.0.weight": (old_size, keep, new_size),
        "mlp_extractor.value_net.0.weight": (old_size, keep, new_size),
    }
    changed = {}
    for name, (width0, cols, width1) in layers.items():
        if name in sd:
            if sd[name].shape[1] != width0:
                raise MigrationError(f"{model_path}: {name} reads {sd[name].shape[1]} inputs, expected {width0}")
            sd[name] = _widen(sd[name], cols, width1)
            changed[name] = (cols, width1)
    leftover = [k for k, v in sd.items() if v.ndim == 2 and v.shape[1] == old_size and k not in changed]
    if not changed or leftover:
        raise MigrationError(f"{model_path}: unsupported architecture (layers reading the observation: "
                             f"{leftover or 'none found'})")
    opt = params.get("policy.optimizer")
    if opt is not None:  # parameter i of the optimizer is the i-th tensor of the state dict
        names = list(sd)
        for i, state in opt["state"].items():
            name = names[i]
            for k in ("exp_avg", "exp_avg_sq"):
                if k in state and name in changed:
                    state[k] = _widen(state[k], *changed[name])
                if k in state and tuple(state[k].shape) != tuple(sd[name].shape):
                    raise MigrationError(f"optimizer state {i} does not line up with {name}")
    for k in ("_last_obs", "_last_original_obs"):
        if isinstance(data.get(k), np.ndarray) and data[k].shape[-1] == old_size:
            wide = np.zeros(data[k].shape[:-1] + (new_size,), dtype=data[k].dtype)
            wide[..., keep] = data[k]
            data[k] = wide
    data["observation_space"] = spaces.Box(-1.0, 1.0, (new_size,), dtype=np.float32)
    site_scoring = "mlp_extractor.site_mlp.0.weight" in sd
    if site_scoring:  # saved explicitly: the policy's default follows the current interface
        old_kwargs["n_site_features"] = F0
        data["policy_kwargs"] = dict(old_kwargs, n_site_features=F1)
        if level_from_site:
            from agents.site_policy import FEASIBLE_INDEX

            feasible0 = int(old_kwargs.get("feasible_index", FEASIBLE_INDEX))
            if not 0 <= feasible0 < F0:
                raise MigrationError(f"{model_path}: level_from_site with feasible_index {feasible0}, "
                                     f"outside the recorded {F0} site features")
            old_kwargs["feasible_index"] = feasible0
            data["policy_kwargs"]["feasible_index"] = int(site_pos[feasible0])

    algo = detect_algo(model_path)
    if algo == "maskable_ppo":
        from sb3_contrib import MaskablePPO as Algo
    else:
        from stable_baselines3 import PPO as Algo
    old = Algo.load(str(model_path), device="cpu", custom_objects={"policy_kwargs": old_kwargs})
    tmp = out_path.with_name(f".{out_path.name}.migrating.zip")
    save_to_zip_file(str(tmp), data=data, params=params, pytorch_variables=pvars)
    new = Algo.load(str(tmp), device="cpu")
    max_sites = iface.max_sites

    def logits(model, obs):
        p = model.policy
        with torch.no_grad():
            f = p.extract_features(torch.as_tensor(obs), p.pi_features_extractor)
            return p.action_net(p.mlp_extractor.forward_actor(f)).numpy()

    X_new, M = [], []
    obs, info = env.reset(seed=seed)
    episodes, added_nonzero = 1, 0
    added = np.setdiff1d(np.arange(new_size), keep)
    while len(X_new) < verify_states:
        X_new.append(obs)
        M.append(info["action_mask"])
        added_nonzero += int(np.any(obs[added] != 0.0))
        lo = np.where(info["action_mask"], logits(old, obs[keep][None])[0], -np.inf)
        action = np.array([np.argmax(lo[: max_sites + 1]), np.argmax(lo[max_sites + 1:])])
        obs, _, term, trunc, info = env.step(action)
        if term or trunc:
            obs, info = env.reset(seed=seed + episodes)
            episodes += 1
    X_new, M = np.asarray(X_new), np.asarray(M)
    lo, ln = logits(old, X_new[:, keep]), logits(new, X_new)
    lo, ln = np.where(M, lo, -1e8), np.where(M, ln, -1e8)
    n1 = max_sites + 1
    agree = (lo[:, :n1].argmax(1) == ln[:, :n1].argmax(1)) & (lo[:, n1:].argmax(1) == ln[:, n1:].argmax(1))
    diff = float(np.abs(np.where(M, lo - ln, 0.0)).max())
    result = {"states": len(X_new), "episodes": episodes, "action_agreement": float(agree.mean()),
              "max_abs_logit_diff": diff, "old_obs_size": old_size, "new_obs_size": new_size,
              "states_with_a_nonzero_added_element": added_nonzero,
              "added_elements": sorted({new_names[i].split(".", 1)[1] for i in added})}
    if not agree.all() or diff > 1e-5:
        tmp.unlink()
        raise MigrationError(f"migrated model disagrees with the original: {result}")
    _update_vecnormalize(out_path.parent / "vecnormalize.pkl", new_size)
    tmp.replace(out_path)
    write_interface_record(out_path.parent, iface)
    run = out_path.parent.parent if out_path.parent.name in ("best_model", "checkpoints") else out_path.parent
    args_json = run / "args.json"
    if args_json.is_file():
        rec = json.loads(args_json.read_text())
        rec["interface"] = iface.record()
        rec.setdefault("migrations", []).append(
            {"from": old_decl.get("version"), "to": iface.version, "by": "python -m agents.migrate",
             "verification": result})
        args_json.write_text(json.dumps(rec, indent=2) + "\n")
    env.close()
    return result


def _update_vecnormalize(path: Path, new_size: int) -> None:
    if not path.is_file():
        return
    from gymnasium import spaces

    with open(path, "rb") as f:
        vn = pickle.load(f)
    if vn.__dict__.get("norm_obs") or vn.__dict__.get("obs_rms") is not None:
        raise MigrationError(f"{path}: has observation statistics; migrating them is not supported")
    vn.observation_space = spaces.Box(-1.0, 1.0, (new_size,), dtype=np.float32)
    for k, v in (("venv", None), ("class_attributes", {}), ("returns", None)):
        vn.__dict__.setdefault(k, v)  # VecNormalize.__getstate__ deletes these
    with open(path, "wb") as f:
        pickle.dump(vn, f)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m agents.migrate", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="the SB3 model .zip (its interface.json beside it)")
    ap.add_argument("--scenario", required=True, help="scenario name, env id or YAML path")
    ap.add_argument("--out", help="output .zip (default: rewrite in place)")
    ap.add_argument("--verify-states", type=int, default=1000)
    args = ap.parse_args(argv)
    try:
        res = migrate_model(args.model, args.scenario, args.out, verify_states=args.verify_states)
    except MigrationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
