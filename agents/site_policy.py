"""A site-scoring actor for PPO / MaskablePPO: one shared network scores every site.

Production routers score each endpoint from its own signals and take the best; a flat MLP over
the whole observation has to learn that structure separately for every site slot. This policy
builds it in (a Deep Sets style, permutation-equivariant actor, as in Decima's per-node
scoring):

    site logit_i  = f([site_i features, request features, mean of all site features])
    [shed logit, batch-level logits] = g([request features, mean of all site features])

with one MLP ``f`` shared by every slot. With ``level_from_site`` (a policy keyword, off by
default so older models load unchanged), ``g`` also reads the features of the site the actor is
about to choose: the softmax (over feasible slots, stop-gradient) of the site logits weights the
site features, which after training is nearly the argmax site's. The action stays SB3's
MultiDiscrete of independent heads, but the level distribution can now depend on where the
request goes (on the cache scenarios batch level 128 pays at the H100 core and loses at the L4
edges). The critic is an ordinary MLP over the whole
observation. The actor's output *is* the MultiDiscrete logit vector, so ``action_net`` is the
identity and the standard export path (``extract_features -> mlp_extractor.forward_actor ->
action_net``, agents/export.py) still holds.

The observation layout it slices is the declared interface's (``gridenv.core.interface``): in
both modes ``max_sites`` blocks of ``n_site_features``, then the request features.
``n_site_features`` is a policy keyword (default: the slots mode's 12; ``train.py`` passes the
env interface's), saved with the model.
"""

from __future__ import annotations

import numpy as np
import torch
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn

from gridenv.core.interface import SLOT_SITE_FEATURES

#: Site features per slot of the slots mode (the default layout).
N_SITE_FEATURES = len(SLOT_SITE_FEATURES)
#: Position of the ``feasible`` flag among them (the slots layout's; ``train.py`` passes the env's).
FEASIBLE_INDEX = [f.name for f in SLOT_SITE_FEATURES].index("feasible")

__all__ = ["SiteScoringExtractor", "MaskableSiteScoringPolicy", "SiteScoringPolicy"]


def _mlp(sizes: list[int], activation: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class SiteScoringExtractor(nn.Module):
    """``mlp_extractor`` whose actor latent is the full logit vector (sites, shed, levels)."""

    def __init__(self, obs_dim: int, max_sites: int, n_levels: int, site_hidden: list[int],
                 critic_hidden: list[int], activation: type[nn.Module],
                 n_site_features: int = N_SITE_FEATURES, level_from_site: bool = False,
                 feasible_index: int = FEASIBLE_INDEX) -> None:
        super().__init__()
        self.level_from_site = bool(level_from_site)
        self.feasible_index = int(feasible_index)
        self.max_sites = max_sites
        self.n_site_features = F = int(n_site_features)
        self.n_site_obs = max_sites * F
        self.req_dim = obs_dim - self.n_site_obs
        if self.req_dim <= 0:
            raise ValueError(f"observation of size {obs_dim} has no request part for {max_sites} sites")
        ctx = self.req_dim + F
        self.site_mlp = _mlp([F + ctx, *site_hidden, 1], activation)
        if self.level_from_site and not 0 <= self.feasible_index < self.n_site_features:
            raise ValueError(f"feasible_index {self.feasible_index} is not one of the {self.n_site_features} site features")
        self.global_mlp = _mlp([ctx + (F if self.level_from_site else 0), *site_hidden, 1 + n_levels], activation)
        self.critic = _mlp([obs_dim, *critic_hidden], activation)
        self.critic_act = activation()
        self.latent_dim_pi = max_sites + 1 + n_levels
        self.latent_dim_vf = critic_hidden[-1]

    def forward_actor(self, obs: torch.Tensor) -> torch.Tensor:
        b = obs.shape[0]
        sites = obs[:, : self.n_site_obs].reshape(b, self.max_sites, self.n_site_features)
        req = obs[:, self.n_site_obs:]
        pooled = sites.mean(dim=1)
        ctx = torch.cat([req, pooled], dim=1)
        per_site = torch.cat([sites, ctx.unsqueeze(1).expand(b, self.max_sites, ctx.shape[1])], dim=2)
        site_logits = self.site_mlp(per_site).squeeze(-1)
        if self.level_from_site:
            # infeasible slots get -1e4 (finite: no NaN when no slot is feasible, then uniform)
            feasible = sites[:, :, self.feasible_index]
            weights = torch.softmax(site_logits.detach() + (feasible - 1.0) * 1e4, dim=1)
            chosen = (weights.unsqueeze(-1) * sites).sum(dim=1)
            ctx = torch.cat([ctx, chosen], dim=1)
        return torch.cat([site_logits, self.global_mlp(ctx)], dim=1)

    def forward_critic(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic_act(self.critic(obs))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_actor(obs), self.forward_critic(obs)


class _SiteScoringMixin:
    """Replaces the MLP extractor and makes ``action_net`` the identity."""

    def __init__(self, *args, site_hidden=(64, 64), critic_hidden=(128, 128),
                 n_site_features=N_SITE_FEATURES, level_from_site=False, feasible_index=FEASIBLE_INDEX,
                 **kwargs):
        self._site_hidden = list(site_hidden)
        self._critic_hidden = list(critic_hidden)
        self._n_site_features = int(n_site_features)
        self._level_from_site = bool(level_from_site)
        self._feasible_index = int(feasible_index)
        kwargs.pop("net_arch", None)  # the architecture is this class's own
        super().__init__(*args, **kwargs)

    def _build_mlp_extractor(self) -> None:
        nvec = self.action_space.nvec
        self.mlp_extractor = SiteScoringExtractor(
            self.features_dim, int(nvec[0]) - 1, int(nvec[1]), self._site_hidden,
            self._critic_hidden, self.activation_fn, self._n_site_features,
            level_from_site=self._level_from_site, feasible_index=self._feasible_index,
        )

    def _build(self, lr_schedule) -> None:
        super()._build(lr_schedule)
        self.action_net = nn.Identity()
        # Small initial logits (the role SB3's 0.01 gain on action_net plays): a near-uniform
        # starting policy over feasible sites.
        for head in (self.mlp_extractor.site_mlp[-1], self.mlp_extractor.global_mlp[-1]):
            nn.init.orthogonal_(head.weight, gain=0.01)
            nn.init.zeros_(head.bias)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_constructor_parameters(self) -> dict:
        data = super()._get_constructor_parameters()
        data.update(site_hidden=self._site_hidden, critic_hidden=self._critic_hidden,
                    n_site_features=self._n_site_features)
        if self._level_from_site:  # only when on: older models' saved kwargs stay as they were
            data.update(level_from_site=True, feasible_index=self._feasible_index)
        return data


class MaskableSiteScoringPolicy(_SiteScoringMixin, MaskableActorCriticPolicy):
    """Site-scoring actor for sb3-contrib's MaskablePPO."""


class SiteScoringPolicy(_SiteScoringMixin, ActorCriticPolicy):
    """Site-scoring actor for plain PPO."""


def count_parameters(module: nn.Module) -> int:
    return int(sum(np.prod(p.shape) for p in module.parameters()))
