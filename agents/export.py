"""Export a trained SB3 routing policy to ONNX plus a ``policy.json`` for the router runtime.

    python -m agents.export runs/metro_maskable_ppo_s0 --out exported/metro
    python -m agents.export runs/metro_maskable_ppo_s0/model.zip --out exported/metro --scenario metro

``RUN_OR_MODEL_PATH`` is a run directory (its ``best_model/best_model.zip`` when present, else
its ``model.zip``) or a model ``.zip`` (MaskablePPO or PPO, with a MultiDiscrete action space).
The VecNormalize statistics are read from beside the model: ``vecnormalize.pkl``, or for a
checkpoint ``<prefix>_<N>_steps.zip`` the file ``<prefix>_vecnormalize_<N>_steps.pkl``.

The scenario the model was trained on comes from ``--scenario``, else the run's ``args.json``
(written by ``train.py``, with its ``env_config``), else the run directory's name
(``<scenario>_<algo>_s<seed>``). The model's observation and action spaces must match it.

Writes two files that belong together:

``DIR/policy.onnx``
    A logits-only graph (``extract_features -> mlp_extractor.forward_actor -> action_net``) with
    the observation normalization baked in. Inputs: ``obs`` float32 ``[batch, obs_size]`` (the
    raw ``Interface.encode`` output) and ``action_mask`` bool
    ``[batch, max_sites + 1 + n_levels]`` (``RouterSnapshot.action_mask``). The graph computes
    ``clip((obs - mean) / sqrt(var + eps), -clip_obs, clip_obs)`` in float64 and casts to
    float32, exactly as ``VecNormalize.normalize_obs`` does, then the actor. Outputs:

    * ``logits`` float32 ``[batch, max_sites + 1 + n_levels]``: the MultiDiscrete logits
      concatenated (site head: ``max_sites + 1`` incl. shed, then the batch head: ``n_levels``),
      masked entries set to -1e8 (the value sb3-contrib's MaskableCategorical uses);
    * ``site_scores`` float32 ``[batch, max_sites + 1]``: ``softmax`` over the masked site
      logits, i.e. the policy's probability of choosing each site slot (last = shed). Each is in
      [0, 1], masked slots are 0, they sum to 1;
    * ``site`` int64 ``[batch]``: argmax of the masked site logits (``max_sites`` = shed);
    * ``batch_level`` int64 ``[batch]``: argmax of the masked batch-level logits.

    ``(site, batch_level)`` is the deterministic action ``MaskablePPO.predict(...,
    deterministic=True)`` takes. A plain PPO model gets the same mask applied at serving time,
    so it never picks a masked site either.

``DIR/policy.json``
    ``format_version``; the SHA-256 of ``policy.onnx`` (the runtime refuses a mismatch); the
    scenario and env id it was trained on; the observation interface record (``interface``:
    version, content hash and declaration from ``gridenv.core.interface``; the runtime refuses
    a policy whose interface differs from what this gridenv encodes, naming the difference);
    the observation feature spec (names, order, units, scaling) and its size; the
    VecNormalize ``clip_obs`` / ``epsilon``; ``SiteStatics.to_dict()`` (everything a router
    needs to rebuild snapshots); the action semantics (site slots, shed index, batch levels);
    the scenario's per-class SLOs (the defaults the runtime uses when a request omits them).

Bad input (missing path, not a model, no VecNormalize file, spaces that do not match the
scenario) prints one ``error: ...`` line and exits with status 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["ExportError", "export_policy", "resolve_model", "main", "MASKED_LOGIT"]

#: The logit given to masked choices (sb3-contrib MaskableCategorical's HUGE_NEG).
MASKED_LOGIT = -1e8
DEFAULT_OPSET = 17


class ExportError(ValueError):
    """Bad export input: the message is one line that names the file or option at fault."""


# ---------------------------------------------------------------------------- inputs
def resolve_model(path: str | Path) -> tuple[Path, Path]:
    """(model .zip, VecNormalize .pkl) for a run directory or a model file (agents.runs)."""
    from agents.runs import resolve_model as resolve

    try:
        files = resolve(path)
    except FileNotFoundError as err:
        raise ExportError(str(err)) from None
    if not files.vecnormalize.is_file():
        raise ExportError(f"{files.model}: VecNormalize statistics not found (expected {files.vecnormalize})")
    return files.model, files.vecnormalize


def _detect_algo(path: Path) -> str:
    from agents.sb3_policy import detect_algo

    try:
        return detect_algo(path)
    except ValueError as err:
        raise ExportError(str(err)) from None


def _load_model(path: Path):
    algo = _detect_algo(path)
    if algo == "maskable_ppo":
        from sb3_contrib import MaskablePPO as Algo
    else:
        from stable_baselines3 import PPO as Algo
    try:
        model = Algo.load(str(path), device="cpu")
    except Exception as err:  # noqa: BLE001 - a damaged archive raises anything
        raise ExportError(f"{path}: cannot load the {algo} model ({type(err).__name__}: {err})") from None
    return algo, model


def _load_vecnormalize(path: Path) -> dict:
    from stable_baselines3.common.vec_env import VecNormalize

    try:
        with open(path, "rb") as f:
            vn = pickle.load(f)
    except Exception as err:  # noqa: BLE001 - unpickling garbage raises anything
        raise ExportError(f"{path}: not a VecNormalize pickle ({type(err).__name__}: {err})") from None
    if not isinstance(vn, VecNormalize):
        raise ExportError(f"{path}: not a VecNormalize pickle (holds a {type(vn).__name__})")
    # From __dict__: with norm_obs=False there is no obs_rms, and a missing attribute would be
    # looked up on the (absent) wrapped venv.
    d = vn.__dict__
    norm_obs = bool(d["norm_obs"])
    rms = d.get("obs_rms")
    if isinstance(rms, dict):
        raise ExportError(f"{path}: dict observation statistics are not supported")
    if norm_obs and rms is None:
        raise ExportError(f"{path}: norm_obs is set but there are no observation statistics")
    return {  # without obs normalization: identity statistics, never applied (norm_obs False)
        "mean": np.asarray(rms.mean, dtype=np.float64) if rms is not None else None,
        "var": np.asarray(rms.var, dtype=np.float64) if rms is not None else None,
        "epsilon": float(d["epsilon"]),
        "clip_obs": float(d["clip_obs"]),
        "norm_obs": norm_obs,
    }


def _run_dir(model_path: Path) -> Path:
    parent = model_path.parent
    if parent.name in ("best_model", "checkpoints"):
        return parent.parent
    return parent


def infer_scenario(model_path: Path, scenario: str | None = None) -> tuple[str, dict, str]:
    """(scenario name, env_config, where it came from) for the model at `model_path`."""
    from gridenv.core.scenario import ScenarioError, scenario_names
    from gridenv.envs.registration import resolve_scenario

    names = scenario_names()

    def canon(s: str, where: str) -> str:
        """A built-in name, an env id, or a scenario YAML file (a user's own grid, the Mooncake
        replay, a held-out grid): its name, with its id registered for the checks below."""
        try:
            return resolve_scenario(s).name
        except ScenarioError as err:
            raise ExportError(f"{where}: unknown scenario {s!r} ({err}); known: {', '.join(names)}, "
                              "or a scenario YAML file") from None

    run = _run_dir(model_path)
    args_json = run / "args.json"
    saved: dict = {}
    if args_json.is_file():
        try:
            saved = json.loads(args_json.read_text())
        except (json.JSONDecodeError, OSError, UnicodeDecodeError) as err:
            raise ExportError(f"{args_json}: not valid JSON ({err})") from None
    saved_scenario = (saved.get("args") or {}).get("scenario") if isinstance(saved, dict) else None
    env_config = ((saved.get("hyperparams") or {}).get("env_config") or {}) if isinstance(saved, dict) else {}
    if saved_scenario in ("random-grid", "gridenv/RandomGrid-v1"):
        # A generalist (train.py --scenario random-grid) serves any grid through the relative
        # observation: it is exported for the grid a router will serve, seen that way.
        if not scenario:
            raise ExportError(f"{model_path} was trained on random-grid (a new grid every episode): pass "
                              "--scenario, the grid the exported router will serve")
        iface = (saved.get("interface") or {}).get("interface") or {}
        slots = (iface.get("action") or {}).get("max_sites", 12)
        return (canon(scenario, "--scenario"), {"observation": {"mode": "relative"}, "actions": {"max_sites": slots}},
                f"--scenario (a generalist from {args_json}, relative observation with {slots} site slots)")
    if scenario:
        name = canon(scenario, "--scenario")
        if saved_scenario and canon(saved_scenario, str(args_json)) != name:
            raise ExportError(f"--scenario {scenario!r}, but {args_json} says the model was trained "
                              f"on {saved_scenario!r}")
        return name, env_config if saved_scenario else {}, "--scenario"
    if saved_scenario:
        return canon(saved_scenario, str(args_json)), env_config, str(args_json)
    for n in sorted(names, key=len, reverse=True):  # longest first: distributed-edge before edge
        if run.name.startswith(n + "_") or run.name == n:
            return n, {}, f"run directory name {run.name!r}"
    raise ExportError(f"{model_path}: cannot tell which scenario it was trained on (no {args_json.name} "
                      f"in {run}, and {run.name!r} does not start with a scenario name): pass --scenario")


# ---------------------------------------------------------------------------- graph
def _make_module(policy, stats: dict, n_site_choices: int):
    import torch
    from torch import nn

    class LogitsGraph(nn.Module):
        """Normalization + actor + masking + heads: the whole decision as one graph."""

        def __init__(self) -> None:
            super().__init__()
            self.features_extractor = policy.pi_features_extractor
            self.mlp_extractor = policy.mlp_extractor
            self.action_net = policy.action_net
            self.normalize = stats["norm_obs"]
            self.clip_obs = stats["clip_obs"]
            if self.normalize:
                self.register_buffer("obs_mean", torch.as_tensor(stats["mean"], dtype=torch.float64))
                self.register_buffer(
                    "obs_std", torch.as_tensor(np.sqrt(stats["var"] + stats["epsilon"]), dtype=torch.float64)
                )
            self.register_buffer("masked_logit", torch.tensor(MASKED_LOGIT, dtype=torch.float32))
            self.n_site = n_site_choices

        def forward(self, obs, action_mask):
            x = obs
            if self.normalize:  # float64 like VecNormalize.normalize_obs, then float32
                x = ((obs.to(torch.float64) - self.obs_mean) / self.obs_std)
                x = torch.clamp(x, -self.clip_obs, self.clip_obs).to(torch.float32)
            features = self.features_extractor(x)
            latent_pi = self.mlp_extractor.forward_actor(features)
            logits = torch.where(action_mask, self.action_net(latent_pi), self.masked_logit)
            site_logits = logits[:, : self.n_site]
            level_logits = logits[:, self.n_site:]
            site_scores = torch.softmax(site_logits, dim=1)
            site = torch.argmax(site_logits, dim=1)
            level = torch.argmax(level_logits, dim=1)
            return logits, site_scores, site, level

    return LogitsGraph().eval()


def _export_onnx(module, obs_size: int, mask_size: int, opset: int) -> bytes:
    import io
    import warnings

    import torch

    obs = torch.zeros((1, obs_size), dtype=torch.float32)
    mask = torch.ones((1, mask_size), dtype=torch.bool)
    buf = io.BytesIO()
    batch = {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            module, (obs, mask), buf, dynamo=False, opset_version=opset,
            input_names=["obs", "action_mask"],
            output_names=["logits", "site_scores", "site", "batch_level"],
            dynamic_axes={"obs": batch, "action_mask": batch, "logits": batch,
                          "site_scores": batch, "site": batch, "batch_level": batch},
            do_constant_folding=True,
        )
    return buf.getvalue()


def _finish_onnx(raw: bytes, meta: dict) -> bytes:
    import onnx

    model = onnx.load_from_string(raw)
    model.producer_name = "gridenv.agents.export"
    model.doc_string = ("gridenv routing policy: inputs obs (raw encode() output) and action_mask; "
                        "outputs logits (masked, concatenated heads), site_scores (softmax over "
                        "the masked site logits), site, batch_level. See policy.json.")
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, str(v)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as err:  # noqa: BLE001
        raise ExportError(f"the exported graph does not validate: {err}") from None
    return model.SerializeToString()


# ---------------------------------------------------------------------------- verification
def _verify(onnx_bytes: bytes, model, stats: dict, env, n_states: int, seed: int = 0) -> dict:
    """Compare ONNX Runtime with the SB3 policy on `n_states` states of a rollout."""
    import onnxruntime as ort
    import torch

    obs_list, masks = [], []
    rng = np.random.default_rng(seed)
    n_site, n_levels = (int(x) for x in env.action_space.nvec)
    obs, info = env.reset(seed=seed)
    while len(obs_list) < n_states:
        mask = info["action_mask"]  # from what the env returns, not env.unwrapped
        obs_list.append(obs)
        masks.append(mask)
        site = rng.choice(np.flatnonzero(mask[:n_site]))
        level = rng.integers(n_levels)
        obs, _, term, trunc, info = env.step(np.array([site, level]))
        if term or trunc:
            obs, info = env.reset(seed=seed + len(obs_list))
    X = np.asarray(obs_list, dtype=np.float32)
    M = np.asarray(masks, dtype=bool)
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    logits, _, site, level = sess.run(None, {"obs": X, "action_mask": M})
    if stats["norm_obs"]:
        Xn = np.clip((X - stats["mean"]) / np.sqrt(stats["var"] + stats["epsilon"]),
                     -stats["clip_obs"], stats["clip_obs"]).astype(np.float32)
    else:
        Xn = X
    policy = model.policy
    with torch.no_grad():
        t = torch.as_tensor(Xn)
        feats = policy.pi_features_extractor(t)
        ref = policy.action_net(policy.mlp_extractor.forward_actor(feats)).numpy()
    ref_masked = np.where(M, ref, MASKED_LOGIT)
    ref_site = ref_masked[:, :n_site].argmax(1)
    ref_level = ref_masked[:, n_site:].argmax(1)
    diff = float(np.abs(np.where(M, logits - ref, 0.0)).max())
    scale = float(np.abs(np.where(M, ref, 0.0)).max())
    agree = float(np.mean((site == ref_site) & (level == ref_level)))
    masked_chosen = int((~M[np.arange(len(M)), site]).sum())
    return {"states": int(len(X)), "max_abs_logit_diff": diff, "max_abs_logit": scale, "action_agreement": agree,
            "masked_actions_chosen": masked_chosen}


# ---------------------------------------------------------------------------- export
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def export_policy(path: str | Path, out_dir: str | Path, scenario: str | None = None,
                  opset: int = DEFAULT_OPSET, verify_states: int = 256) -> dict:
    """Export the model at `path` to ``out_dir/policy.onnx`` + ``out_dir/policy.json``.

    Returns a summary dict (paths, sha256, scenario, verification numbers).
    Raises ExportError on bad input.
    """
    import gymnasium as gym

    import gridenv  # noqa: F401 - registers the env ids
    from gridenv.core.scenario import DEFAULT_SLOS
    from gridenv.core.interface import InterfaceMismatchError, check_compatible
    from gridenv.core.snapshot import SLO_CLASSES
    from gridenv.envs.registration import env_id as scenario_env_id
    from gridenv.router.runtime import (
        CONTRACT_KEY, FORMAT_VERSION, POLICY_JSON, POLICY_ONNX, contract_sha256,
    )

    model_path, vn_path = resolve_model(path)
    name, env_config, scenario_source = infer_scenario(model_path, scenario)
    algo, model = _load_model(model_path)
    stats = _load_vecnormalize(vn_path)

    eid = scenario_env_id(name)
    try:
        env = gym.make(eid, config=env_config or None)
    except Exception as err:  # noqa: BLE001 - a bad env_config in args.json
        raise ExportError(f"cannot build {eid} with env_config {env_config} ({type(err).__name__}: {err})") from None
    genv = env.unwrapped  # metadata only (statics, scenario, interface); decisions use info
    st = genv.sim.statics
    sc = genv.scenario
    iface = genv.interface
    n_obs = iface.obs_size
    from agents.sb3_policy import read_interface_record

    try:
        recorded, recorded_at = read_interface_record(model_path)
    except ValueError as err:
        raise ExportError(str(err)) from None
    if recorded is not None:
        try:
            check_compatible(recorded, iface, what=f"{model_path} ({recorded_at})")
        except InterfaceMismatchError as err:
            raise ExportError(str(err)) from None
    n_site_choices, n_levels = st.max_sites + 1, len(st.batch_levels)

    obs_shape = tuple(model.observation_space.shape)
    if obs_shape != (n_obs,):
        raise ExportError(f"{model_path}: the model takes observations of shape {obs_shape}, scenario "
                          f"{name!r} ({scenario_source}) encodes ({n_obs},): wrong --scenario?")
    nvec = getattr(model.action_space, "nvec", None)
    if nvec is None or [int(x) for x in nvec] != [n_site_choices, n_levels]:
        raise ExportError(f"{model_path}: action space {model.action_space}, scenario {name!r} needs "
                          f"MultiDiscrete([{n_site_choices}, {n_levels}])")
    if stats["norm_obs"] and stats["mean"].shape != (n_obs,):
        raise ExportError(f"{vn_path}: statistics for observations of shape {stats['mean'].shape}, "
                          f"the model takes ({n_obs},)")

    slos = {}
    for c in SLO_CLASSES:
        ttft, tpot = sc.slo_of(c) if c in sc.workload.classes else DEFAULT_SLOS[c]
        slos[c] = {"ttft_s": float(ttft), "tpot_s": float(tpot)}
    # What the graph is bound to: its SHA-256 goes into the ONNX metadata, so an edited
    # policy.json (other sites, features, SLOs...) is refused by the runtime.
    contract = json.loads(json.dumps({
        "scenario": {"name": name, "env_id": eid, "env_config": env_config, "source": scenario_source},
        "observation": {
            "size": n_obs, "dtype": "float32", "encoder": "gridenv.core.interface.Interface.encode",
            "mode": iface.mode,
            "features": iface.feature_spec(),
            "normalization": {
                "kind": "VecNormalize" if stats["norm_obs"] else "none",
                "clip_obs": stats["clip_obs"], "epsilon": stats["epsilon"],
                "formula": "clip((obs - mean) / sqrt(var + epsilon), -clip_obs, clip_obs), in float64, "
                           "then float32; mean and var are baked into policy.onnx",
            },
        },
        "statics": st.to_dict(),
        "action": {
            "type": "MultiDiscrete", "nvec": [n_site_choices, n_levels],
            "max_sites": st.max_sites, "n_sites": st.n_sites,
            "site_slots": list(st.site_names),
            "shed_index": st.max_sites,
            "batch_levels": [int(b) for b in st.batch_levels],
            "initial_batch_level": int(sc.actions.initial_batch_level),
            "mask": "RouterSnapshot.action_mask (site feasible flags, padding slots false, shed and "
                    "every batch level true)",
        },
        "request_defaults": {"slo_s": slos},
        "interface": iface.record(),
    }))

    # Normalize the contract sections through the policy.json schema (the one pydantic model the
    # runtime reads with), so the hash bound into the graph is that of what gets written.
    from pydantic import ValidationError

    from gridenv.router.policy_file import PolicyFile, first_error

    placeholder = {"format_version": FORMAT_VERSION, "created_utc": "", "scores": "",
                   "onnx": {"file": POLICY_ONNX, "sha256": "0" * 64, "opset": opset, "inputs": {},
                            "outputs": {}, "metadata": {}},
                   "source": {"model": "", "vecnormalize": "", "algo": algo, "num_timesteps": 0,
                              "policy_class": ""}}
    try:
        draft = PolicyFile.model_validate({**placeholder, **contract}).model_dump(mode="json")
    except ValidationError as err:
        raise ExportError(f"policy.json would not validate: {first_error(err)}") from None
    contract = {k: draft[k] for k in contract}

    module = _make_module(model.policy, stats, n_site_choices)
    raw = _export_onnx(module, n_obs, n_site_choices + n_levels, opset)
    onnx_bytes = _finish_onnx(raw, {"gridenv.scenario": name, "gridenv.env_id": eid,
                                    "gridenv.policy_format_version": FORMAT_VERSION,
                                    CONTRACT_KEY: contract_sha256(contract)})
    sha = _sha256(onnx_bytes)

    verification = None
    if verify_states > 0:
        verification = _verify(onnx_bytes, model, stats, env, verify_states)
        # float32 through the MLPs (and the site-conditioned level head's soft choice): 1e-4
        # absolute, or 1e-5 of the largest logit for peaked policies (a close behaviour clone's
        # logits reach ~100, where one float32 ulp is 8e-6).
        tolerance = max(1e-4, 1e-5 * verification["max_abs_logit"])
        if not verification["max_abs_logit_diff"] <= tolerance or verification["masked_actions_chosen"]:
            raise ExportError(f"the exported graph disagrees with the SB3 policy: {verification}")

    meta = {
        "format_version": FORMAT_VERSION,
        "kind": "gridenv-router-policy",
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "onnx": {
            "file": POLICY_ONNX, "sha256": sha, "opset": opset,
            "inputs": {
                "obs": {"dtype": "float32", "shape": ["batch", n_obs],
                        "meaning": "raw Interface.encode() output (normalization is in the graph)"},
                "action_mask": {"dtype": "bool", "shape": ["batch", n_site_choices + n_levels],
                                "meaning": "RouterSnapshot.action_mask: site slots + shed, then batch levels"},
            },
            "outputs": {
                "logits": {"dtype": "float32", "shape": ["batch", n_site_choices + n_levels],
                           "meaning": f"site head ({n_site_choices} incl. shed) then batch head ({n_levels}) "
                                      f"logits; masked entries = {MASKED_LOGIT:g}"},
                "site_scores": {"dtype": "float32", "shape": ["batch", n_site_choices],
                                "meaning": "softmax over the masked site logits: the policy's probability "
                                           "of each site slot (last = shed), in [0, 1], masked = 0, sum 1"},
                "site": {"dtype": "int64", "shape": ["batch"], "meaning": f"argmax site slot ({st.max_sites} = shed)"},
                "batch_level": {"dtype": "int64", "shape": ["batch"], "meaning": "argmax batch level index"},
            },
            "metadata": {CONTRACT_KEY: "sha256 of the canonical JSON of scenario, observation, statics, "
                                       "action and request_defaults below"},
        },
        "source": {
            "model": str(model_path), "vecnormalize": str(vn_path), "algo": algo,
            "num_timesteps": int(getattr(model, "num_timesteps", 0)),
            "policy_class": type(model.policy).__name__,
        },
        **contract,
        "scores": "per site slot: softmax over the masked site logits (probability the policy picks "
                  "it); in [0, 1], masked sites 0; the shed slot's share is reported as shed_score",
        "verification": verification,
    }

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Write both files under temporary names, then rename: no half-written pair.
    tmp_onnx, tmp_json = out / f".{POLICY_ONNX}.tmp", out / f".{POLICY_JSON}.tmp"
    try:
        text = PolicyFile.model_validate(meta).model_dump_json(indent=2)
    except ValidationError as err:
        raise ExportError(f"policy.json would not validate: {first_error(err)}") from None
    tmp_onnx.write_bytes(onnx_bytes)
    tmp_json.write_text(text + "\n")
    os.replace(tmp_onnx, out / POLICY_ONNX)
    os.replace(tmp_json, out / POLICY_JSON)
    env.close()
    return {"onnx": out / POLICY_ONNX, "json": out / POLICY_JSON, "sha256": sha, "scenario": name,
            "env_id": eid, "model": model_path, "vecnormalize": vn_path, "algo": algo,
            "verification": verification}


# ---------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m agents.export",
        description="Export a trained SB3 routing policy to DIR/policy.onnx + DIR/policy.json.",
    )
    ap.add_argument("path", metavar="RUN_OR_MODEL_PATH",
                    help="a run directory (best_model if present, else model.zip) or a model .zip")
    ap.add_argument("--out", required=True, metavar="DIR", help="output directory")
    ap.add_argument("--scenario", help="scenario name or env id (default: the run's args.json or directory name)")
    ap.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default %(default)s)")
    ap.add_argument("--verify-states", type=int, default=256,
                    help="states on which ONNX Runtime is compared with the SB3 policy (0: skip)")
    args = ap.parse_args(argv)
    try:
        res = export_policy(args.path, args.out, scenario=args.scenario, opset=args.opset,
                            verify_states=args.verify_states)
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    v = res["verification"]
    print(f"exported {res['algo']} {res['model']} ({res['scenario']}, {res['env_id']})")
    print(f"  -> {res['onnx']} (sha256 {res['sha256'][:16]}...)")
    print(f"  -> {res['json']}")
    if v:
        print(f"  verified on {v['states']} states: max |logit diff| {v['max_abs_logit_diff']:.2e}, "
              f"action agreement {100 * v['action_agreement']:.2f}%, masked actions chosen "
              f"{v['masked_actions_chosen']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
