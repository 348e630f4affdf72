"""Shared check of a committed agent against its ONNX export (used by the tests of the cache
agents and of the generalist)."""

from __future__ import annotations


def rollout_sb3_vs_onnx(policy, onnx, env, seed: int = 12, steps: int = 200) -> tuple[set[int], int, int]:
    """Step `env` with the SB3 `policy`, asserting the ONNX policy takes the same decision at every
    state, except where two sites score the same to float precision (then the batch level must
    still agree). Returns (batch levels requested when routing, ties, routed decisions)."""
    import numpy as np
    import torch

    obs, info = env.reset(seed=seed)
    levels, ties, routed = set(), 0, 0
    for _ in range(steps):
        snap = info["snapshot"]
        a, b = policy.act(obs, snap), onnx.act(obs, snap)
        if a.tolist() != b.tolist():
            with torch.no_grad():
                logits = policy.model.policy.mlp_extractor.forward_actor(torch.as_tensor(obs[None]))[0].numpy()
            assert a[1] == b[1] and abs(logits[a[0]] - logits[b[0]]) < 1e-4, (a, b, np.round(logits, 4))
            ties += 1
        if a[0] < snap.statics.n_sites:
            routed += 1
            levels.add(int(a[1]))
        obs, _, _, trunc, info = env.step(a)
        if trunc:
            break
    return levels, ties, routed
