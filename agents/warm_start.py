"""Imitation warm start: behaviour cloning of a heuristic before PPO (``train.py --warm-start``).

PPO from a random initialization often first learns to shed every request (reward exactly 0,
no SLO misses, no GPU cost), and on a new grid it may never leave that state. Starting the
actor from a good heuristic's decisions avoids the detour without touching the reward (still
dollars) or the optimal policy (this only chooses where PPO starts):

1. :func:`collect_demonstrations`: the heuristic routes ``n_decisions`` requests in the training
   scenario (fresh episodes seeded from training seeds); each decision's observation, action
   mask, action and reward are kept.
2. :func:`behaviour_clone`: the actor (site/shed head and batch-level head) is fitted to the
   heuristic's actions by maximum likelihood under the *masked* action distribution (the one
   MaskablePPO samples from), a few epochs of Adam.
3. :func:`fit_critic`: the critic is fitted to the discounted returns of the demonstrations in
   the training env's normalized reward scale (the ``VecNormalize`` return statistics are first
   updated from the same rewards, as if those episodes had been rollouts). Without it the first
   PPO updates would push the cloned actor around with the advantages of an untrained critic.

Everything runs on the policy's own modules (``policy.evaluate_actions``, ``policy.predict_values``)
so any SB3 ActorCriticPolicy (the site-scoring one or the MLP) works.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Demonstrations", "collect_demonstrations", "behaviour_clone", "fit_critic",
           "normalized_returns", "WarmStartReport", "TEACHERS", "teacher_names", "make_teacher",
           "anchor_steps"]

#: Warm-start teachers that are not baselines (not modelled on a production router, so not on
#: the leaderboard): name -> (registered heuristic or an ``agents.teachers`` class name,
#: constructor arguments). Every registered heuristic is a teacher too, under its own name.
TEACHERS: dict[str, tuple[str, dict]] = {
    # slo-greedy that sheds less on nearly idle sites (agents.heuristics.SloGreedy). Chosen on
    # tuning seed 5000 of centralized, bursty, metro, outage and RandomGrid grids 5001, 5002 and
    # training grids 11-13 (slack 0.25 vs 0.5 and 1.0; seeds >= 10000 not looked at): +1.4% on
    # centralized, -0.6% to -1.1% on metro, bursty, outage and grid 5001, +0.2% on grid 12.
    "slo-greedy-lenient": ("slo-greedy", {"shed_slack_frac": 0.25}),
    # llm-d precise-prefix where some site caches > 60% of the prompt, slo-greedy-lenient
    # elsewhere (agents.teachers.PrefixSwitch; its docstring has the tuning-seed figures).
    "prefix-switch": ("PrefixSwitch", {"min_cached_frac": 0.6}),
}


def teacher_names() -> list[str]:
    """Every name ``--warm-start`` accepts: the registered heuristics, then :data:`TEACHERS`."""
    from agents.heuristics import heuristic_names

    return [*heuristic_names(), *TEACHERS]


def make_teacher(name: str, **kwargs):
    """A heuristic or a :data:`TEACHERS` entry by name (kwargs: level, core_level)."""
    from agents.heuristics import make_heuristic

    from agents import teachers

    base, fixed = TEACHERS.get(name, (name, {}))
    if base in teachers.__all__:  # a composite teacher class of agents.teachers
        return getattr(teachers, base)(**fixed, **kwargs)
    return make_heuristic(base, **fixed, **kwargs)


@dataclass
class Demonstrations:
    """A heuristic's decisions: arrays of one row per decision (episodes back to back)."""

    obs: np.ndarray  #: (n, obs_size) float32, the env's raw observation
    masks: np.ndarray  #: (n, max_sites + 1 + n_levels) bool
    actions: np.ndarray  #: (n, 2) int64, [site slot, batch level]
    rewards: np.ndarray  #: (n,) float64, $ per decision
    episode_starts: np.ndarray  #: (n,) bool, first decision of an episode
    shed_frac: float  #: share of the demonstrated decisions that shed
    n_episodes: int  #: episodes touched (the last one may be cut)

    def __add__(self, other: "Demonstrations") -> "Demonstrations":
        """Both sets, back to back (DAgger's aggregate)."""
        n, m = len(self.actions), len(other.actions)
        return Demonstrations(
            np.concatenate([self.obs, other.obs]), np.concatenate([self.masks, other.masks]),
            np.concatenate([self.actions, other.actions]), np.concatenate([self.rewards, other.rewards]),
            np.concatenate([self.episode_starts, other.episode_starts]),
            (self.shed_frac * n + other.shed_frac * m) / max(n + m, 1), self.n_episodes + other.n_episodes)


@dataclass
class WarmStartReport:
    heuristic: str
    n_decisions: int
    n_episodes: int
    shed_frac: float
    accuracy_site: float  #: share of decisions whose argmax site equals the heuristic's, after cloning
    accuracy_level: float
    nll_before: float
    nll_after: float
    critic_r2: float | None
    level: int | None = None  #: batch level index the heuristic was made to request (None: its own)
    core_level: int | None = None  #: the same at core sites (None: `level`)
    dagger_rounds: int = 0  #: rounds of cloning on the heuristic's labels of the clone's own states
    dagger_accuracy_site: list | None = None  #: per round, the clone's site agreement on its own states, before refitting

    def line(self) -> str:
        r2 = "n/a" if self.critic_r2 is None else f"{self.critic_r2:.2f}"
        who = self.heuristic
        if self.level is not None or self.core_level is not None:
            who += (f" (batch level {self.level})" if self.core_level is None
                    else f" (batch level {self.level} at edges, {self.core_level} at the core)")
        return (f"warm start: cloned {who} on {self.n_decisions} decisions ({self.n_episodes} "
                f"episode(s), {self.shed_frac:.1%} shed): site choice agrees {self.accuracy_site:.1%}, "
                f"batch level {self.accuracy_level:.1%}, NLL {self.nll_before:.3f} -> {self.nll_after:.3f}; "
                f"critic R^2 {r2}" + (f"; {self.dagger_rounds} DAgger round(s), site agreement on the "
                                      f"clone's own states before each: "
                                      + ", ".join(f"{a:.1%}" for a in self.dagger_accuracy_site or [])
                                      if self.dagger_rounds else ""))


def collect_demonstrations(make_env, heuristic: str, n_decisions: int, seed: int,
                           max_per_episode: int | None = None, level: int | None = None,
                           core_level: int | None = None, actor=None) -> Demonstrations:
    """Run heuristic `heuristic` for `n_decisions` decisions in envs from ``make_env()``.

    `level`: the batch level index the heuristic requests at every site it picks (None: its
    own behaviour, keeping each site's current level); `core_level`: the one it requests at core
    sites instead (None: `level`).

    `actor` (DAgger): a function ``(obs, action mask) -> action`` that steps the envs instead of
    the heuristic, which then only labels the states the actor visits (the recorded actions are
    the heuristic's, the rewards the actor's).

    Episode k is reset with seed ``seed + k`` (the heuristic too), so the demonstrations are
    reproducible. The last episode is cut at `n_decisions`, every episode at `max_per_episode`
    (on RandomGrid: more grids for the same number of decisions).
    """
    if n_decisions < 1:
        raise ValueError(f"warm start needs at least 1 decision, got {n_decisions}")
    policy = make_teacher(heuristic, level=level, core_level=core_level)
    obs_l, mask_l, act_l, rew_l, start_l = [], [], [], [], []
    env = make_env()
    shed_slot = int(np.asarray(env.action_space.nvec)[0]) - 1
    n_levels = int(np.asarray(env.action_space.nvec)[1])
    for lv in (level, core_level):
        if lv is not None and not 0 <= lv < n_levels:
            env.close()
            raise ValueError(f"warm start level {lv}: the scenario has {n_levels} batch levels (0..{n_levels - 1})")
    k = 0
    try:
        while len(act_l) < n_decisions:
            policy.reset(seed + k)
            obs, info = env.reset(seed=seed + k)
            k += 1
            first = True
            stop = len(act_l) + (max_per_episode or n_decisions)
            while len(act_l) < min(n_decisions, stop):
                snap = info["snapshot"]
                action = np.asarray(policy.act(obs, snap), dtype=np.int64)
                obs_l.append(np.asarray(obs, dtype=np.float32))
                mask_l.append(np.asarray(info["action_mask"], dtype=bool))
                act_l.append(action)
                start_l.append(first)
                first = False
                if actor is not None:
                    action = np.asarray(actor(obs, mask_l[-1]), dtype=np.int64)
                obs, reward, terminated, truncated, info = env.step(action)
                rew_l.append(float(reward))
                if terminated or truncated:
                    break
    finally:
        env.close()
    actions = np.stack(act_l)
    return Demonstrations(np.stack(obs_l), np.stack(mask_l), actions, np.asarray(rew_l),
                          np.asarray(start_l), float(np.mean(actions[:, 0] == shed_slot)), k)


def _batches(n: int, batch_size: int, rng: np.random.Generator):
    idx = rng.permutation(n)
    for lo in range(0, n, batch_size):
        yield idx[lo:lo + batch_size]


def _log_probs(policy, obs, actions, masks, maskable: bool):
    if maskable:
        _, log_prob, _ = policy.evaluate_actions(obs, actions, action_masks=masks)
    else:
        _, log_prob, _ = policy.evaluate_actions(obs, actions)
    return log_prob


def _clone_step(policy, optimizer, obs, actions, masks, maskable: bool):
    """One minibatch step of the cloning loss (masked NLL of the demonstrated actions, gradient
    norm clipped at 0.5); returns the loss tensor."""
    import torch

    loss = -_log_probs(policy, obs, actions, masks, maskable).mean()
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.parameters(), 0.5)
    optimizer.step()
    return loss


def behaviour_clone(policy, obs: np.ndarray, masks: np.ndarray, actions: np.ndarray, *,
                    maskable: bool, min_updates: int = 1500, max_epochs: int = 50, batch_size: int = 256,
                    lr: float = 1e-3,
                    seed: int = 0) -> tuple[float, float, float, float]:
    """Fit the actor to `actions` (max likelihood, masked), for whole epochs until at least
    `min_updates` minibatch steps (at most `max_epochs`: a small set is not overfitted for
    long). Returns (NLL before, NLL after, site agreement, level
    agreement) on the demonstrations (agreement of the deterministic, masked argmax with the
    heuristic's action).

    On 20k generated-grid decisions of slo-greedy, 8 epochs (640 steps) reached 80% site
    agreement, 30 epochs (2,400 steps) 88%, so the budget is in steps, not epochs."""
    import math

    import torch

    rng = np.random.default_rng(seed)
    device = policy.device
    obs_t = torch.as_tensor(obs, device=device)
    act_t = torch.as_tensor(actions, device=device)
    mask_np = masks

    def nll() -> float:
        with torch.no_grad():
            out = []
            for lo in range(0, len(obs), 4096):
                sl = slice(lo, lo + 4096)
                out.append(-_log_probs(policy, obs_t[sl], act_t[sl], mask_np[sl], maskable))
            return float(torch.cat(out).mean())

    before = nll()
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    policy.set_training_mode(True)
    epochs = min(max_epochs, max(1, math.ceil(min_updates / math.ceil(len(obs) / batch_size))))
    for _ in range(epochs):
        for idx in _batches(len(obs), batch_size, rng):
            _clone_step(policy, opt, obs_t[idx], act_t[idx], mask_np[idx], maskable)
    policy.set_training_mode(False)
    after = nll()
    # Agreement of the deterministic (masked argmax) action with the heuristic's.
    with torch.no_grad():
        feats = policy.extract_features(obs_t, policy.pi_features_extractor)
        logits = policy.action_net(policy.mlp_extractor.forward_actor(feats)).cpu().numpy()
    n_site = int(policy.action_space.nvec[0])
    if maskable:
        logits = np.where(mask_np, logits, -np.inf)
    site_ok = np.argmax(logits[:, :n_site], axis=1) == actions[:, 0]
    level_ok = np.argmax(logits[:, n_site:], axis=1) == actions[:, 1]
    not_shed = actions[:, 0] != n_site - 1  # the level is ignored when shedding
    level_acc = float(level_ok[not_shed].mean()) if not_shed.any() else 1.0
    return before, after, float(site_ok.mean()), level_acc


def anchor_steps(policy, optimizer, obs: np.ndarray, masks: np.ndarray, actions: np.ndarray, n_steps: int,
                 rng: np.random.Generator, *, maskable: bool, batch_size: int = 256, normalize=None) -> float:
    """`n_steps` minibatch steps of the cloning loss (masked NLL of the demonstrated actions) with
    `optimizer`: ``train.py --warm-start-anchor`` runs them after every PPO update so PPO refines
    the clone instead of drifting from it. `normalize` (e.g. ``VecNormalize.normalize_obs``) is
    applied to each minibatch's raw observations. Returns the last minibatch's NLL."""
    import torch

    policy.set_training_mode(True)
    loss = torch.tensor(float("nan"))
    for _ in range(n_steps):
        idx = rng.integers(len(obs), size=min(batch_size, len(obs)))
        x = obs[idx] if normalize is None else normalize(obs[idx]).astype(np.float32)
        loss = _clone_step(policy, optimizer, torch.as_tensor(x, device=policy.device),
                           torch.as_tensor(actions[idx], device=policy.device), masks[idx], maskable)
    policy.set_training_mode(False)
    return float(loss.detach())


def normalized_returns(rewards: np.ndarray, episode_starts: np.ndarray, gamma: float, vec_normalize) -> np.ndarray:
    """Discounted returns of the demonstrations in the training env's reward scale.

    Updates ``vec_normalize.ret_rms`` with the running discounted returns the rewards would have
    produced in training (VecNormalize's own rule), then scales the rewards as VecNormalize does
    (``clip(r / sqrt(var + eps), -clip_reward, clip_reward)``) and sums them backwards with
    `gamma` within each episode (no bootstrap at a cut episode's end)."""
    r = np.asarray(rewards, dtype=np.float64)
    if vec_normalize is not None and vec_normalize.norm_reward:
        running = np.zeros(len(r))
        acc = 0.0
        for t in range(len(r)):
            if episode_starts[t]:
                acc = 0.0
            acc = acc * gamma + r[t]
            running[t] = acc
        vec_normalize.ret_rms.update(running)
        r = np.clip(r / np.sqrt(vec_normalize.ret_rms.var + vec_normalize.epsilon),
                    -vec_normalize.clip_reward, vec_normalize.clip_reward)
    out = np.zeros(len(r))
    acc = 0.0
    for t in range(len(r) - 1, -1, -1):
        if t + 1 < len(r) and episode_starts[t + 1]:
            acc = 0.0
        acc = r[t] + gamma * acc
        out[t] = acc
    return out


def fit_critic(policy, obs: np.ndarray, returns: np.ndarray, *, epochs: int = 8,
               batch_size: int = 256, lr: float = 1e-3, seed: int = 0) -> float:
    """Fit the critic (value head) to `returns` by MSE; returns R^2 on the demonstrations.

    Only the critic's parameters move (the value net and the critic part of the extractor
    whose name says ``critic``/``value``; for an MLP policy with a shared extractor nothing
    shared is touched)."""
    import torch

    rng = np.random.default_rng(seed)
    device = policy.device
    obs_t = torch.as_tensor(obs, device=device)
    ret_t = torch.as_tensor(returns, dtype=torch.float32, device=device)
    params = [p for n, p in policy.named_parameters()
              if "value_net" in n or "critic" in n]
    if not params:
        return float("nan")
    opt = torch.optim.Adam(params, lr=lr)
    policy.set_training_mode(True)
    for _ in range(epochs):
        for idx in _batches(len(obs), batch_size, rng):
            v = policy.predict_values(obs_t[idx]).flatten()
            loss = torch.nn.functional.mse_loss(v, ret_t[idx])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 0.5)
            opt.step()
    policy.set_training_mode(False)
    with torch.no_grad():
        v = torch.cat([policy.predict_values(obs_t[lo:lo + 4096]).flatten() for lo in range(0, len(obs), 4096)])
    var = float(ret_t.var())
    return float(1.0 - float(((v - ret_t) ** 2).mean()) / var) if var > 0 else float("nan")
