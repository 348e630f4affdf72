"""The Gymnasium layer: a thin template over :class:`gridenv.core.simulator.GridSimulator`."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from gridenv.core.scenario import Scenario, load_scenario
from gridenv.core.simulator import SHED, GridSimulator
from gridenv.core.interface import make_interface
from gridenv.core.snapshot import RouterSnapshot

__all__ = ["GridEnv", "InvalidActionError"]


#: Exact types taken by the action decoder's fast path (bool and np.bool_ are not among them).
_INTEGER_TYPES = frozenset({int, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
                            np.uint64, np.intp, np.uintp})


class InvalidActionError(ValueError):
    """An action outside ``action_space``, or a masked one under ``actions.invalid_action: raise``."""


class GridEnv(gym.Env):
    """
    ## Description

    Route LLM requests across a grid of GPU inference sites: small edge sites close to users and
    large core data centers further away. Each step is one routing decision for one arriving
    request (or one re-routed after a site outage): which site serves it, or shed it, and the
    maximum batch size the target site runs with from now on. Between decisions an event-driven
    simulator serves requests with continuous batching, a roofline iteration-time model
    calibrated against measured vLLM/Splitwise numbers, KV-cache limits, network RTTs, outages,
    and a power and cost model (see the README and ``shared/reference/physics.md``).

    ## Action Space

    ``MultiDiscrete([max_sites + 1, n_batch_levels])``:

    | component | values | meaning |
    |---|---|---|
    | 0: site | ``0 .. max_sites - 1`` | the site slot that serves the request |
    |         | ``max_sites`` | shed the request (refuse it, as an HTTP 429) |
    | 1: batch level | ``0 .. n_batch_levels - 1`` | maximum batch size of the target site, an index into the scenario's ``batch_levels`` (default ``[8, 32, 128]``); ignored when shedding |

    ``env.action_masks()`` (read by sb3-contrib's MaskablePPO) and ``info["action_mask"]`` give a
    flat boolean mask of length ``max_sites + 1 + n_batch_levels``. A site is infeasible when
    it is down, serves another model, lies outside the origin region of a request with
    residency, has a full waiting queue (``max_queue`` per replica), or cannot hold the prompt
    in KV cache; padding slots are never feasible; shedding always is. An infeasible site
    choice is, by default (``actions.invalid_action: shed``), handled by shedding the request
    and counting it in ``info["invalid_action"]`` and the metric ``invalid_actions``; with
    ``invalid_action: raise`` it raises :class:`InvalidActionError`.

    ## Observation Space

    Declared once in ``gridenv.core.interface`` and chosen by the scenario option
    ``observation: {mode: slots | relative}`` (default ``slots``; e.g.
    ``gym.make(id, config={"observation": {"mode": "relative"}})``). ``env.interface`` is the
    declaration: ``obs_size``, ``feature_spec()`` (every element with its unit, scaling and
    source), ``encode(snapshot)``, ``version`` and ``content_hash`` (recorded by trained models
    and exported policies; a policy recorded under another interface is refused, naming the
    difference). In both modes: ``max_sites`` site blocks (padding slots all zero), then the
    request.

    ``slots`` (interface ``slots-3``): ``Box(-1, 1, (max_sites * 15 + 7 + n_regions + n_models,),
    float32)``. Per site slot, 15 features in [0, 1]: present, up, feasible, waiting, running,
    KV utilization, predicted TTFT / TTFT SLO, RTT from the request's origin, energy price,
    current batch level, edge flag, in-origin-region flag, and the cache signals: the fraction of
    the prompt cached at the replica the site would use (precise, from the engines' caches), the
    fraction the router's own prefix index says it sent there (approximate, bounded LRU), and the
    prompt tokens in transit or queued there (prefill backlog). Then the request: log prompt length,
    SLO class one-hot (chat, code, summarization), origin region one-hot (the scenario's
    regions), model one-hot (the scenario's own models only: adding a model to the catalog does
    not change an observation), residency flag, sin/cos of the origin's local hour. Metro: 96.

    ``relative`` (interface ``relative-2``): ``Box(-1, 1, (max_sites * 19 + 9,), float32)``,
    with no site, region or model identity, so one per-site network can score 1..``max_sites``
    sites of any grid. Per site slot, 19 features: present, up, feasible, waiting, running, KV
    utilization, predicted TTFT / SLO, RTT from the request's origin, same-region flag, energy
    price, batch level, edge flag, replica $/h, replica power, capacity, prompt / KV capacity,
    and the three cache signals of the slots mode.
    Then: log prompt length, SLO class one-hot, residency, sin/cos of the local hour, TTFT and
    TPOT SLOs (scaled).

    ## Info

    ``reset`` and ``step`` return ``info["snapshot"]``: the router-visible
    :class:`~gridenv.core.snapshot.RouterSnapshot` behind the observation (``None`` once the
    episode is over), and ``info["action_mask"]``. Policies decide from these
    (``policy.act(obs, info["snapshot"])``), never from ``env.unwrapped``, so heuristics work
    through wrappers, ``gym.make_vec`` (an object array of snapshots) and SB3/Ray vector envs.
    The snapshot is picklable and cheap (its statics object is shared, not copied). ``step``
    adds ``info["rewards"]`` (the reward terms), ``info["invalid_action"]``,
    ``info["sim_time_s"]`` and, at truncation, ``info["episode_metrics"]``.

    ## Rewards

    In US dollars per decision, summed over everything that happened since the previous
    decision, and reported term by term in ``info["rewards"]``:

    ``reward = goodput_value - energy_cost - gpu_cost``

    * ``goodput_value`` ($): for every request completed within both its TTFT and TPOT SLO,
      ``prompt_tokens * input_value + output_tokens * output_value`` (scenario ``economics``,
      $/Mtok). Requests that miss an SLO, are shed or fail earn nothing.
    * ``energy_cost`` ($): the dynamic energy (above the GPUs' idle floor) of the iterations
      run, times PUE and server overhead, at the site's electricity price at that hour.
    * ``gpu_cost`` ($): GPU-seconds spent running iterations times the site's $/GPU-hour.

    Every term responds to the decision: where a request runs sets its latency (value), the
    site's energy price and efficiency (energy) and the GPU time it takes (cost); the batch
    level trades throughput against TPOT. The idle floor and provisioned GPU cost do not
    depend on routing and are reported in the episode metrics, not in the reward.

    ## Starting State and Episode End

    ``reset(seed=...)`` draws the episode's arrivals, lengths, SLO classes and random faults from
    ``self.np_random``: the same seed gives every policy the same arrival sequence. The episode
    never terminates; it is **truncated** when the simulated clock reaches ``horizon_s``.
    ``info["episode_metrics"]`` then holds goodput, SLO attainment, TTFT/TPOT percentiles,
    energy, cost, $/Mtok, tokens per joule and CO2 (``GridSimulator.summary``).

    ## Arguments

    ``gym.make("gridenv/Metro-v1", config={...}, render_mode=None)``: ``config`` is deep-merged
    into the scenario YAML (e.g. ``{"workload": {"rate_rps": 40}}``); ``scenario=`` takes a
    scenario name, a YAML path or a :class:`Scenario`.

    ## Registered Configurations

    One id per file in ``configs/scenarios/``: ``gridenv/Metro-v1``, ``gridenv/Continental-v1``,
    ``gridenv/Outage-v1``, ``gridenv/Bursty-v1``, ``gridenv/Centralized-v1``,
    ``gridenv/DistributedEdge-v1`` (see the README's table).

    ## Version History

    * v1, interface revision ``slots-3`` / ``relative-2``: three site features (precise and
      approximate prefix-cache fractions, prefill backlog) for cache-aware routing; a site with
      several replicas balances prefix-affine (the replica holding the longest cached prefix
      among those within a quarter batch of the least loaded). The dynamics of a workload
      without prefix hashes (every scenario registered before) are unchanged bit for bit; a
      policy recorded under ``slots-2`` / ``relative-1`` is refused by its interface hash.
    * v1: the observation is declared by ``gridenv.core.interface`` (interface ``slots-2``): the
      model one-hot spans the scenario's own models, not the whole catalog (Metro 74 -> 72
      elements, Continental 109 -> 108); the ``relative`` observation mode; ``info["snapshot"]``.
      Dynamics changed too (all in the same release): engine v2 (``vllm-v1`` scheduler with
      chunked prefill, paged KV allocated on demand with recompute preemption, prefix caching,
      context-length limits masked, client timeouts per SLO class), the ``vllm-0.6`` software
      stack fitted under load (``python -m gridenv.fidelity``), RTTs exactly the scenario's
      matrix, overlapping degraded-link windows that multiply, strict scenario validation.
      ``-v0`` ids raise ``gymnasium.error.DeprecatedEnv`` pointing to ``-v1``; models trained on
      v0 migrate their observation exactly with ``python -m agents.migrate`` (their dynamics are
      v0's: retrain for v1).
    * v0: initial release (interface ``slots-1``).
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}

    def __init__(
        self,
        scenario: str | Scenario = "metro",
        config: dict | None = None,
        render_mode: str | None = None,
    ) -> None:
        if isinstance(scenario, Scenario):
            self.scenario = scenario if not config else load_scenario(scenario.model_dump(), config)
        else:
            self.scenario = load_scenario(scenario, config)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode {render_mode!r} not in {self.metadata['render_modes']}")
        self.render_mode = render_mode
        self.sim = GridSimulator(self.scenario)
        st = self.sim.statics
        self.max_sites = st.max_sites
        self.n_levels = len(st.batch_levels)
        #: The declared observation/action interface (gridenv.core.interface): encoder, feature
        #: spec, version and content hash that trained policies record.
        self.interface = make_interface(st, self.scenario.observation.mode)
        self.action_space = spaces.MultiDiscrete([self.max_sites + 1, self.n_levels])
        self.observation_space = spaces.Box(-1.0, 1.0, (self.interface.obs_size,), dtype=np.float32)
        self._raise_invalid = self.scenario.actions.invalid_action == "raise"
        self._snap: RouterSnapshot | None = None

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.sim.reset(self.np_random)
        self.sim.take_reward()
        obs = self._observe()
        return obs, {"action_mask": self.action_masks(), "snapshot": self._snap}

    def step(self, action):
        if self.sim.arrivals is None:  # the simulator draws its arrivals in reset()
            raise RuntimeError("step() before reset(): call env.reset(seed=...) first")
        if self.sim.done:
            if len(self.sim.arrivals) == 0:
                raise RuntimeError(
                    f"step(): this episode has no request to route (0 arrivals within horizon_s = "
                    f"{self.scenario.horizon_s:g} s); raise rate_rps or horizon_s, or check the trace")
            raise RuntimeError("step() after the episode ended: call reset()")
        if self._snap is None:
            raise RuntimeError("step() without a pending request: call reset()")
        site, level = self._decode_action(action)
        invalid = False
        if site != SHED and (site >= self.sim.n_sites or not self._snap.feasible[site]):
            if self._raise_invalid:
                raise InvalidActionError(
                    f"site slot {site} is masked for this request (feasible slots: "
                    f"{np.flatnonzero(self._snap.feasible).tolist()}, shed = {self.max_sites})"
                )
            invalid = True
            self.sim.metrics.invalid_actions += 1
            site = SHED
        self.sim.decide(site, level)  # simulate until the next decision
        value, energy, gpu = self.sim.take_reward()
        reward = value - energy - gpu
        obs = self._observe()
        truncated = self.sim.done
        info: dict[str, Any] = {
            "rewards": {"goodput_value_usd": value, "energy_cost_usd": energy, "gpu_cost_usd": gpu},
            "action_mask": self.action_masks(),
            "snapshot": self._snap,
            "invalid_action": invalid,
            "sim_time_s": self.sim.now,
        }
        if truncated:
            info["episode_metrics"] = self.sim.summary()
        return obs, float(reward), False, truncated, info

    def action_masks(self) -> np.ndarray:
        """Flat mask: site slots + shed, then batch levels (sb3-contrib MaskablePPO format)."""
        if self._snap is None:
            m = np.zeros(self.max_sites + 1 + self.n_levels, dtype=bool)
            m[self.max_sites:] = True  # nothing to route: only "shed" is meaningful
            return m
        return self.interface.action_mask(self._snap)

    # ------------------------------------------------------------------ helpers
    def _decode_action(self, action) -> tuple[int, int]:
        """(site or SHED, batch level) from an element of ``action_space``, else InvalidActionError.

        Accepted: a length-2 sequence or array of integers (any integer dtype; floats only when
        they hold whole numbers) within ``MultiDiscrete([max_sites + 1, n_batch_levels])``.
        Refused, with the action named: None, strings, booleans, objects, fractional, NaN or
        infinite values, another shape, values out of range.
        """
        # Fast path (the common cases: a pair of Python/numpy integers, or an integer array of
        # shape (2,)) with values in range; anything else takes the general checks below, which
        # accept and refuse exactly as before.
        kind = type(action)
        if kind is tuple or kind is list:
            if len(action) == 2 and type(action[0]) in _INTEGER_TYPES and type(action[1]) in _INTEGER_TYPES:
                site, level = int(action[0]), int(action[1])
                if 0 <= site <= self.max_sites and 0 <= level < self.n_levels:
                    return (SHED if site == self.max_sites else site), level
        elif kind is np.ndarray and action.shape == (2,) and action.dtype.kind in "iu":
            site, level = action.tolist()
            if 0 <= site <= self.max_sites and 0 <= level < self.n_levels:
                return (SHED if site == self.max_sites else site), level

        def bad(why: str) -> InvalidActionError:  # builds the message only on failure (hot path)
            shown = repr(action)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            space = f"MultiDiscrete([{self.max_sites + 1}, {self.n_levels}])"
            return InvalidActionError(f"action {shown} is not in action_space {space}: {why}")

        if action is None or isinstance(action, (str, bytes)):
            raise bad(f"expected [site, batch_level] integers, got {type(action).__name__}")
        try:
            a = np.asarray(action)
        except (ValueError, TypeError) as e:
            raise bad(f"not an array of numbers ({e})") from None
        if a.dtype.kind not in "iuf":
            raise bad(f"expected integers, got dtype {a.dtype}")
        if a.shape != (2,):
            raise bad(f"expected shape (2,) [site, batch_level], got shape {a.shape}")
        if a.dtype.kind == "f":
            if not np.isfinite(a).all():
                raise bad("non-finite value")
            if not (a == np.round(a)).all():
                raise bad("fractional value (actions are integer indices)")
        site, level = int(a[0]), int(a[1])
        if not 0 <= site <= self.max_sites:
            raise bad(f"site {site} outside 0..{self.max_sites} ({self.max_sites} = shed)")
        if not 0 <= level < self.n_levels:
            raise bad(f"batch level {level} outside 0..{self.n_levels - 1}")
        return (SHED if site == self.max_sites else site), level

    def _observe(self) -> np.ndarray:
        if self.sim.pending is None:  # episode over: the last observation carries no request
            self._snap = None
            return np.zeros(self.observation_space.shape, dtype=np.float32)
        self._snap = self.sim.snapshot()
        return self.interface.encode(self._snap)

    @property
    def snapshot(self) -> RouterSnapshot | None:
        """The router-visible snapshot behind the current observation (also in ``info["snapshot"]``,
        which is what policies should use: it survives wrappers and vector envs)."""
        return self._snap

    def episode_metrics(self) -> dict:
        return self.sim.summary()

    # ------------------------------------------------------------------ rendering
    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode")
            return None
        from gridenv.envs import render as _render

        if self.render_mode == "ansi":
            return _render.ansi(self)
        return _render.rgb_array(self)
