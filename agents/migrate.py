"""Migrate an SB3 model trained on the v0 observation (interface ``slots-1``) to ``slots-2``.

    python -m agents.migrate models/metro/best_model.zip --scenario metro
    python -m agents.migrate models/continental/best_model.zip --scenario continental

Env v0 encoded the request's model as a one-hot over the *whole catalog* (``slots-1``:
``llama-2-70b, llama-3-70b, llama-3-8b``); v1 (``slots-2``) encodes it over the scenario's own
models only. Every other element is unchanged and in the same order. For a scenario whose sites
serve a subset of the catalog, the dropped one-hot elements were 0 in every observation the
model ever saw, so the input columns that read them never contributed to any output: deleting
those columns from every first layer that reads the request features is exact. The migrated
model computes the same logits (up to float summation order) on the new observation of a
snapshot as the old model on its old observation.

The layers changed: a site-scoring policy's ``site_mlp.0`` (input: site features, request
features, pooled site features), ``global_mlp.0`` (request, pooled) and ``critic.0`` (whole
observation); a plain MLP policy's ``policy_net.0`` and ``value_net.0`` (whole observation). The
Adam moments of those weights and the stored last observations are sliced the same way, the
``observation_space`` is set to the new size, and the model's interface record
(``interface.json`` beside it, and ``"interface"`` in its run's ``args.json``) is written, so
:class:`agents.sb3_policy.SB3Policy` and ``agents.export`` accept it. VecNormalize statistics
must be observation-free (``norm_obs`` false, as for the committed agents): their
``observation_space`` is updated; with observation statistics, the script refuses.

Verification (always run, the migration is refused on failure): on ``--verify-states`` states
of episodes (driven by the old model itself), the old model on the old encoding and the migrated
one on the new encoding give the same deterministic actions and logits within 1e-5. The old
encoding is rebuilt independently of the column map: the same slots declaration evaluated with
the v0 vocabulary (the catalog's models).
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

__all__ = ["V0_MODEL_VOCAB", "migrate_model", "old_statics", "main"]

#: The model vocabulary of interface slots-1 (env v0): the catalog, sorted, when it was retired.
V0_MODEL_VOCAB: tuple[str, ...] = ("llama-2-70b", "llama-3-70b", "llama-3-8b")


class MigrationError(ValueError):
    """The model cannot be migrated exactly (the message says why)."""


def old_statics(st, vocab: tuple[str, ...] = V0_MODEL_VOCAB):
    """The statics re-indexed to the v0 model vocabulary (for encoding the old observation)."""
    missing = [m for m in st.model_names if m not in vocab]
    if missing:
        raise MigrationError(f"models {missing} are not in the v0 vocabulary {list(vocab)}")
    return replace(st, model_names=tuple(vocab),
                   site_model=tuple(vocab.index(st.model_names[m]) for m in st.site_model))


def _old_snapshot(snap, st_old):
    from copy import copy

    s = copy(snap)
    s.statics = st_old
    s.request = copy(snap.request)
    s.request.model = st_old.model_names.index(snap.statics.model_names[snap.request.model])
    return s


def _keep_columns(st, vocab: tuple[str, ...]) -> tuple[np.ndarray, int]:
    """(old observation indices kept in the new observation, old size) for slots-1 -> slots-2."""
    from gridenv.core.interface import make_interface

    old_spec = make_interface(old_statics(st, vocab), "slots").feature_spec()
    new_spec = make_interface(st, "slots").feature_spec()
    names = [f["name"] for f in old_spec]
    keep = np.array([names.index(f["name"]) for f in new_spec], dtype=np.int64)
    if not np.all(np.diff(keep) > 0):
        raise MigrationError("the new observation is not an ordered subset of the old one")
    return keep, len(old_spec)


def _slice_in(w, cols):
    import torch

    return w[:, torch.as_tensor(cols)].clone()


def migrate_model(model_path: str | Path, scenario: str, out_path: str | Path | None = None,
                  vocab: tuple[str, ...] = V0_MODEL_VOCAB, verify_states: int = 1000,
                  seed: int = 0) -> dict:
    """Migrate `model_path` in place (or to `out_path`); returns the verification numbers."""
    import gymnasium as gym
    import torch
    from gymnasium import spaces
    from stable_baselines3.common.save_util import load_from_zip_file, save_to_zip_file

    import gridenv  # noqa: F401
    from agents.sb3_policy import detect_algo, write_interface_record
    from gridenv.core.interface import make_interface
    from gridenv.envs.registration import env_id

    model_path = Path(model_path)
    out_path = Path(out_path) if out_path else model_path
    env = gym.make(env_id(scenario))
    st = env.unwrapped.sim.statics
    iface = env.unwrapped.interface
    if iface.mode != "slots":
        raise MigrationError(f"scenario {scenario!r} uses observation mode {iface.mode!r}; v0 had slots only")
    keep, old_size = _keep_columns(st, vocab)
    new_size = iface.obs_size

    data, params, pvars = load_from_zip_file(str(model_path), device="cpu")
    got = tuple(data["observation_space"].shape)
    if got != (old_size,):
        raise MigrationError(f"{model_path}: observation of shape {got}; the v0 encoding of {scenario!r} "
                             f"has ({old_size},)")
    max_sites = int(data["action_space"].nvec[0]) - 1
    F = iface.n_site_features
    req_keep = keep[keep >= max_sites * F] - max_sites * F  # kept request columns
    sd = params["policy"]
    n_req_old = old_size - max_sites * F
    col_maps = {  # weight name -> kept input columns
        "mlp_extractor.site_mlp.0.weight": np.concatenate([np.arange(F), F + req_keep, F + n_req_old + np.arange(F)]),
        "mlp_extractor.global_mlp.0.weight": np.concatenate([req_keep, n_req_old + np.arange(F)]),
        "mlp_extractor.critic.0.weight": keep,
        "mlp_extractor.policy_net.0.weight": keep,
        "mlp_extractor.value_net.0.weight": keep,
    }
    changed = {}
    for name, cols in col_maps.items():
        if name in sd:
            w = sd[name]
            expect = {"mlp_extractor.site_mlp.0.weight": 2 * F + n_req_old,
                      "mlp_extractor.global_mlp.0.weight": n_req_old + F}.get(name, old_size)
            if w.shape[1] != expect:
                raise MigrationError(f"{model_path}: {name} reads {w.shape[1]} inputs, expected {expect}")
            sd[name] = _slice_in(w, cols)
            changed[name] = cols
    leftover = [k for k, v in sd.items() if v.ndim == 2 and v.shape[1] == old_size and k not in changed]
    if not changed or leftover:
        raise MigrationError(f"{model_path}: unsupported architecture (layers reading the observation: "
                             f"{leftover or 'none found'})")
    # Adam moments: parameter i of the optimizer is the i-th tensor of the state dict.
    opt = params.get("policy.optimizer")
    if opt is not None:
        names = list(sd)
        for i, state in opt["state"].items():
            name = names[i]
            if name in changed:
                for k in ("exp_avg", "exp_avg_sq"):
                    if k in state:
                        state[k] = _slice_in(state[k], changed[name])
            for k in ("exp_avg", "exp_avg_sq"):
                if k in state and tuple(state[k].shape) != tuple(sd[name].shape):
                    raise MigrationError(f"optimizer state {i} does not line up with {name}")
    for k in ("_last_obs", "_last_original_obs"):
        if isinstance(data.get(k), np.ndarray) and data[k].shape[-1] == old_size:
            data[k] = data[k][..., keep]
    data["observation_space"] = spaces.Box(-1.0, 1.0, (new_size,), dtype=np.float32)

    # Verify before writing anything: old model + old encoding vs migrated weights + new encoding.
    algo = detect_algo(model_path)
    if algo == "maskable_ppo":
        from sb3_contrib import MaskablePPO as Algo
    else:
        from stable_baselines3 import PPO as Algo
    old = Algo.load(str(model_path), device="cpu")
    tmp = out_path.with_name(f".{out_path.name}.migrating.zip")
    save_to_zip_file(str(tmp), data=data, params=params, pytorch_variables=pvars)
    new = Algo.load(str(tmp), device="cpu")
    st_old = old_statics(st, vocab)
    iface_old = make_interface(st_old, "slots")

    def logits(model, obs):
        p = model.policy
        with torch.no_grad():
            f = p.extract_features(torch.as_tensor(obs), p.pi_features_extractor)
            return p.action_net(p.mlp_extractor.forward_actor(f)).numpy()

    X_old, X_new, M = [], [], []
    obs, info = env.reset(seed=seed)
    episodes = 1
    while len(X_new) < verify_states:
        snap = info["snapshot"]
        o_old = iface_old.encode(_old_snapshot(snap, st_old))
        if not np.array_equal(o_old[keep], obs):
            raise MigrationError("the old encoding restricted to the kept columns is not the new encoding")
        dropped = np.setdiff1d(np.arange(old_size), keep)
        if np.any(o_old[dropped] != 0.0):
            raise MigrationError(f"a dropped element is nonzero: {o_old[dropped]}")
        X_old.append(o_old)
        X_new.append(obs)
        M.append(info["action_mask"])
        lo = logits(old, o_old[None])[0]
        lo = np.where(info["action_mask"], lo, -np.inf)
        action = np.array([np.argmax(lo[: max_sites + 1]), np.argmax(lo[max_sites + 1:])])
        obs, _, term, trunc, info = env.step(action)
        if term or trunc:
            obs, info = env.reset(seed=seed + episodes)
            episodes += 1
    M = np.asarray(M)
    lo, ln = logits(old, np.asarray(X_old)), logits(new, np.asarray(X_new))
    lo, ln = np.where(M, lo, -1e8), np.where(M, ln, -1e8)
    n1 = max_sites + 1
    agree = (lo[:, :n1].argmax(1) == ln[:, :n1].argmax(1)) & (lo[:, n1:].argmax(1) == ln[:, n1:].argmax(1))
    diff = float(np.abs(np.where(M, lo - ln, 0.0)).max())
    result = {"states": len(X_new), "episodes": episodes, "action_agreement": float(agree.mean()),
              "max_abs_logit_diff": diff, "old_obs_size": old_size, "new_obs_size": new_size,
              "dropped_elements": [f["name"] for i, f in enumerate(iface_old.feature_spec()) if i not in set(keep)]}
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
        rec["migrated"] = {"from": "slots-1 (env v0, model one-hot over the catalog)", "to": iface.version,
                           "by": "python -m agents.migrate", "verification": result}
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
    ap.add_argument("model", help="the SB3 model .zip trained on env v0")
    ap.add_argument("--scenario", required=True, help="scenario name (metro, continental, ...)")
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
