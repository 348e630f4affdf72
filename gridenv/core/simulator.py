"""The grid simulator: events, routing decisions, faults and accounting. No Gymnasium here.

Usage::

    sim = GridSimulator(load_scenario("metro"))
    sim.reset(np.random.default_rng(0))
    while not sim.done:
        snap = sim.snapshot()             # what a router sees for sim.pending
        sim.decide(site, batch_level)     # route it (or SHED) and run to the next decision
    print(sim.summary())

One decision per arriving request (and per request re-routed after an outage). Between
decisions the simulator processes events in time order: request delivery at a site (after half
the RTT), replica wake-ups (iteration or segment boundaries), site outages and repairs, link
degradations. Ties are broken by insertion order, so runs are deterministic.

Network: a request routed from region r to site s at time t gets the RTT ``rtt_ms[r][s]`` of
the scenario (as given, see ``Topology``) times the product of the degraded-link windows on
(r, s) open at t (start inclusive, end exclusive); it keeps that RTT for its whole life. The
request reaches the site half an RTT after the decision and its tokens reach the user half an
RTT after they are produced.
"""

from __future__ import annotations

import heapq
import math
from collections import deque

import numpy as np

from gridenv.core.engine import (
    DECODE, DECODING, DONE, IDLE, PREFILLING, QUEUED, RETRY, TRANSIT, Replica, Request,
)
from gridenv.core.interface import local_hour
from gridenv.core.metrics import J_PER_KWH, Metrics
from gridenv.core.prefix_index import ROUTER_BLOCK_TOKENS, PrefixIndex
from gridenv.core.scenario import SLO_CLASSES, Scenario
from gridenv.core.schedulers import default_token_budget, scheduler
from gridenv.core.snapshot import SHED, RequestView, RouterSnapshot, SiteStatics, snapshot_from_lists
from gridenv.core.topology import MODEL_NAMES, Topology
from gridenv.core.workload import Arrivals, generate_arrivals

__all__ = ["GridSimulator", "SHED"]

WAKE, DELIVER, SITE_DOWN, SITE_UP, LINK, TIMEOUT_E2E = range(6)


class GridSimulator:
    """Event-driven simulation of LLM serving on a grid of sites."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.topology = Topology(scenario)
        self.statics = SiteStatics.from_topology(self.topology)
        # catalog model index -> index into the scenario's own models (statics.model_names)
        self._model_local = {MODEL_NAMES.index(m): i for i, m in enumerate(self.statics.model_names)}
        self.n_sites = self.topology.n_sites
        self.batch_levels = list(scenario.actions.batch_levels)
        self.api_s = scenario.network.api_overhead_ms / 1000.0
        self._slos = [scenario.slo_of(c) if c in scenario.workload.classes else (1.0, 1.0)
                      for c in SLO_CLASSES]
        self._timeouts = [scenario.timeouts_of(c) if c in scenario.workload.classes else (math.inf, math.inf)
                          for c in SLO_CLASSES]
        self._first_due = [min(a, b) for a, b in self._timeouts]  # first deadline per class
        eng = scenario.engine
        self._scheduler = scheduler(eng.scheduler)
        self._token_budget = [
            scenario.max_prefill_tokens if eng.scheduler == "vllm-v0"
            else eng.max_num_batched_tokens or default_token_budget(
                eng.scheduler, s.perf.gpu.name, s.perf.gpu.memory_bytes, s.perf.model.max_context_tokens)
            for s in self.topology.sites
        ]
        # Longest context any site serving each model accepts (a longer prompt can only be shed).
        self._model_max_context = {}
        for s in self.topology.sites:
            m = self._model_max_context.get(s.model, 0)
            self._model_max_context[s.model] = max(m, s.perf.model.max_context_tokens)
        econ = scenario.economics
        self._value_in = econ.input_value_usd_per_mtok * 1e-6
        self._value_out = econ.output_value_usd_per_mtok * 1e-6
        d = scenario.workload.diurnal
        self._start_hour = d.start_hour_utc
        self._hours_per_s = 24.0 / d.period_s
        self._rtt_ms = self.topology.rtt_ms
        # Python-float copies for the per-request RTT (numpy scalars would make every time on
        # the event timeline a numpy float: same values, several times slower arithmetic).
        self._rtt_ms_rows = self.topology.rtt_ms.tolist()
        self._link_rtt_factor = [d.rtt_factor for d in scenario.faults.degraded_links]
        self._book_consts = [
            (s.site_power_factor, s.tp * s.gpu_usd_per_h / 3600.0, s.tp, s.utc_offset_h,
             s.price_usd_per_kwh, s.carbon_g_per_kwh)
            for s in self.topology.sites
        ]
        self.arrivals: Arrivals | None = None
        self.done = True
        if scenario.workload.arrivals == "trace":  # fail at construction on a bad trace file
            from gridenv.core.workload import trace_replay

            trace_replay(scenario)  # also refuses a replay too long for memory

    # ------------------------------------------------------------------ episode
    def reset(self, rng: np.random.Generator) -> None:
        """Start an episode: draw its arrivals and faults from `rng`, run to the first decision."""
        sc = self.scenario
        topo = self.topology
        self.now = 0.0
        self.done = False
        self.pending: Request | None = None
        self.metrics = Metrics(self.n_sites)
        self._site_book = [[0.0] * 5 for _ in range(self.n_sites)]
        bs = sc.engine.block_size_tokens
        self.replicas: list[list[Replica]] = [
            [Replica(s.index, j, s.perf, self._scheduler, self._token_budget[s.index], bs)
             for j in range(s.replicas)]
            for s in topo.sites
        ]
        self._kv_blocks = [sum(r.pool.total for r in reps) for reps in self.replicas]
        self.site_level = [sc.actions.initial_batch_level] * self.n_sites
        self.max_batch = [self.batch_levels[sc.actions.initial_batch_level]] * self.n_sites
        self.site_waiting = [0] * self.n_sites  # sent by the router, not yet running
        self.site_running = [0] * self.n_sites  # prefilling or decoding
        self.site_transit_tokens = [0] * self.n_sites  # prompt tokens sent, not yet delivered
        self.site_down = [0] * self.n_sites  # number of overlapping outages in force
        self.link_factor = np.ones((topo.n_regions, self.n_sites))  # product of open windows
        self._link_factor_rows = self.link_factor.tolist()  # the same, as Python floats
        self._snapshot_rtt: list = [None] * topo.n_regions  # per origin: rtt_ms * link_factor row
        self._link_windows: dict[tuple[int, int], set[int]] = {}  # (region, site) -> open windows
        self._events: list = []
        self._seq = 0
        self._retry: list = []
        self._retry_dirty = False
        # First-token deadlines of routed requests, one FIFO per SLO class (the deadline is
        # arrival + the class's timeout, so each FIFO is sorted): cheaper than heap events.
        self._deadlines = [deque() for _ in SLO_CLASSES]
        self._t_deadline = math.inf
        self._price_hour = -1
        self.reward_value_usd = 0.0
        self.reward_energy_usd = 0.0
        self.reward_gpu_usd = 0.0

        self.arrivals = generate_arrivals(sc, topo, rng)
        self._next_arrival = 0
        a = self.arrivals
        # The columns _pop_decision reads, as numpy arrays: .item(i) gives Python scalars.
        self._arrival_cols = tuple(np.asarray(c) for c in (
            a.time_s, a.origin, a.prompt_tokens, a.output_tokens, a.slo_class, a.model, a.residency))
        self._n_arrivals = len(a)
        self._t_next_arrival = self._arrival_cols[0].item(0) if self._n_arrivals else math.inf
        # The router's approximate prefix index: one entry per `_index_stride` hash entries of
        # a request's chain (ROUTER_BLOCK_TOKENS per entry; a trace's own hash blocks, e.g.
        # Mooncake's 512 tokens, as they are when longer); bounded per site by the site's KV
        # capacity in those units.
        hash_k = max(1, self.arrivals.hash_block_tokens // bs) if self.arrivals.prefix_hashes is not None else 1
        self._index_stride = max(1, ROUTER_BLOCK_TOKENS // (bs * hash_k))
        self._index_entry_tokens = self._index_stride * hash_k * bs
        self.prefix_index = PrefixIndex(
            self.n_sites, [max(1, b * bs // self._index_entry_tokens) for b in self._kv_blocks])
        self._zeros = [0.0] * self.n_sites
        self._schedule_faults(rng)
        self._run_until_decision()

    def _push(self, t: float, kind: int, obj, version: int = 0) -> None:
        self._seq += 1
        heapq.heappush(self._events, (t, self._seq, kind, obj, version))

    def _schedule_faults(self, rng: np.random.Generator) -> None:
        f = self.scenario.faults
        names = self.topology.site_names
        for o in f.outages:
            s = names.index(o.site)
            self._push(o.start_s, SITE_DOWN, s)
            self._push(o.start_s + o.duration_s, SITE_UP, s)
        if f.random is not None:
            for name in f.random.sites or names:
                s = names.index(name)
                t = rng.exponential(f.random.mtbf_s)
                while t < self.scenario.horizon_s:
                    repair = rng.exponential(f.random.mttr_s)
                    self._push(t, SITE_DOWN, s)
                    self._push(t + repair, SITE_UP, s)
                    t += repair + rng.exponential(f.random.mtbf_s)
        regions = self.topology.region_names
        for w, d in enumerate(f.degraded_links):
            key = (regions.index(d.region), names.index(d.site))
            self._push(d.start_s, LINK, (key, w, True))
            self._push(d.start_s + d.duration_s, LINK, (key, w, False))

    def _on_link(self, key: tuple[int, int], window: int, opens: bool) -> None:
        """A degraded-link window opens or closes. Windows on the same link compose: the RTT
        factor is the product of the windows in force (two x2 give x4), recomputed from the
        open set so each window ends on its own and a link with none open is exactly x1."""
        open_windows = self._link_windows.setdefault(key, set())
        if opens:
            open_windows.add(window)
        else:
            open_windows.discard(window)
        factor = 1.0
        for w in sorted(open_windows):  # fixed order: the same product bit for bit
            factor *= self._link_rtt_factor[w]
        self.link_factor[key] = factor
        self._link_factor_rows[key[0]][key[1]] = factor
        self._snapshot_rtt[key[0]] = None

    # ------------------------------------------------------------------ decisions
    def decide(self, site: int, batch_level: int | None = None) -> None:
        """Route the pending request to `site` (or SHED) and run to the next decision.

        `batch_level` (index into the scenario's batch_levels) becomes the target site's maximum
        batch size from now on; None keeps it. Feasibility is the caller's business (the
        environment checks the snapshot's mask); the simulator still never loses a request:
        one sent to a site that is down when it arrives is re-routed or counted failed.
        """
        req = self.pending
        if req is None:
            raise RuntimeError("no pending request: the episode is over (call reset)")
        self.pending = None
        if site == SHED or site is None:
            self.metrics.shed += 1
            req.state = DONE
        else:
            if batch_level is not None and batch_level != self.site_level[site]:
                self._set_batch_level(site, batch_level)
            req.site = site
            req.rtt_s = self._rtt_ms_rows[req.origin][site] * self._link_factor_rows[req.origin][site] * 1e-3
            self.site_waiting[site] += 1
            self.site_transit_tokens[site] += req.prompt_tokens
            if req.n_hashed:
                self.prefix_index.insert(site, self._router_chain(req))
            req.state = TRANSIT
            self._push(self.now + 0.5 * req.rtt_s, DELIVER, req)
            first_due = self._first_due[req.slo_class]
            if first_due < math.inf and req.retries == 0:
                deadline = req.arrival_s + first_due
                self._deadlines[req.slo_class].append((deadline, req))
                if deadline < self._t_deadline:
                    self._t_deadline = deadline
        self._run_until_decision()

    def _set_batch_level(self, site: int, level: int) -> None:
        old = self.max_batch[site]
        self.site_level[site] = level
        new = self.max_batch[site] = self.batch_levels[level]
        if new > old:  # freed slots may admit queued requests at the next boundary
            for rep in self.replicas[site]:
                if rep.state == DECODE and rep.can_admit(new) and rep.cut_segment(self.now):
                    rep.version += 1
                    self._seq += 1
                    heapq.heappush(self._events, (rep.wake_s, self._seq, WAKE, rep, rep.version))

    def _next_decision_time(self) -> float:
        t = self._t_next_arrival  # math.inf when none is left
        while self._retry and self._retry[0][2].state == DONE:  # abandoned while awaiting re-routing
            heapq.heappop(self._retry)
        if self._retry and self._retry[0][0] < t:
            return self._retry[0][0]
        return t

    def _run_until_decision(self) -> None:
        events = self._events
        horizon = self.scenario.horizon_s
        heappop = heapq.heappop
        t_dec = self._next_decision_time()
        while True:
            if events and events[0][0] <= t_dec:
                t = events[0][0]
                if t >= horizon:
                    break
                if self._t_deadline <= t:  # client timeouts first
                    self._expire(t)
                    if self._retry_dirty:
                        self._retry_dirty = False
                        t_dec = self._next_decision_time()
                    continue
                _, _, kind, obj, version = heappop(events)
                self.now = t
                if kind == WAKE:
                    if obj.version == version:
                        self._on_wake(obj, t)
                elif kind == DELIVER:
                    self._on_deliver(obj, t)
                elif kind == SITE_DOWN:
                    self._on_site_down(obj, t)
                    t_dec = self._next_decision_time()  # evicted requests await re-routing
                elif kind == SITE_UP:
                    self.site_down[obj] -= 1
                elif kind == TIMEOUT_E2E:
                    if obj.state != DONE:
                        self._abandon(obj, t)
                else:
                    self._on_link(*obj)
                if self._retry_dirty:
                    self._retry_dirty = False
                    t_dec = self._next_decision_time()
            else:
                if t_dec >= horizon:
                    break
                if self._t_deadline <= t_dec:
                    self._expire(t_dec)
                    if self._retry_dirty:
                        self._retry_dirty = False
                        t_dec = self._next_decision_time()
                    continue
                self.now = t_dec
                self.pending = self._pop_decision(t_dec)
                return
        self._end_episode()

    def _expire(self, t_max: float) -> None:
        """Process first deadlines (the earlier of the first-token and whole-response timeouts)
        up to t_max, in time order: a request without its first token, or whose whole response
        was due, is abandoned; one that has its first token gets its whole-response deadline."""
        queues = self._deadlines
        while True:
            best = None
            t_best = math.inf
            for q in queues:
                if q:
                    t = q[0][0]
                    if t < t_best:
                        best, t_best = q, t
            if best is None or t_best > t_max:
                self._t_deadline = t_best
                return
            _, req = best.popleft()
            if req.state != DONE:
                self.now = t_best
                if req.first_token_s < 0.0 or req.e2e_timeout_s <= req.timeout_s:
                    self._abandon(req, t_best)
                elif req.e2e_timeout_s < math.inf:
                    self._push(req.arrival_s + req.e2e_timeout_s, TIMEOUT_E2E, req)

    def _pop_decision(self, t: float) -> Request:
        while self._retry and self._retry[0][2].state == DONE:
            heapq.heappop(self._retry)
        if self._retry and self._retry[0][0] <= t and self._retry[0][0] <= self._t_next_arrival:
            return heapq.heappop(self._retry)[2]
        i = self._next_arrival
        self._next_arrival += 1
        a = self.arrivals
        time_s, origin, prompts, outputs, classes, models, residency = self._arrival_cols
        self._t_next_arrival = time_s.item(i + 1) if i + 1 < self._n_arrivals else math.inf
        cls = classes.item(i)
        ttft_slo, tpot_slo = self._slos[cls]
        m = self.metrics
        m.arrived += 1
        prompt, output, model = prompts.item(i), outputs.item(i), models.item(i)
        max_ctx = self._model_max_context.get(model, 0)
        if prompt >= max_ctx:
            m.over_context += 1  # masked everywhere: it can only be shed
        elif prompt + output > max_ctx:
            output = max_ctx - prompt  # generation stops at the context window
            m.output_truncated += 1
        first_s, e2e_s = self._timeouts[cls]
        if a.prefix_hashes is not None and a.prefix_blocks[i]:
            return Request(i, time_s.item(i), origin.item(i), prompt, output, cls, model,
                           residency.item(i), ttft_slo, tpot_slo, a.prefix_hashes[i],
                           a.hash_block_tokens // self.scenario.engine.block_size_tokens,
                           int(a.prefix_blocks[i]), first_s, e2e_s)
        return Request(i, time_s.item(i), origin.item(i), prompt, output, cls, model,
                       residency.item(i), ttft_slo, tpot_slo, timeout_s=first_s, e2e_timeout_s=e2e_s)

    # ------------------------------------------------------------------ events
    def _start(self, rep: Replica, t: float) -> None:
        busy = rep.start(t, self.max_batch[rep.site])
        moved = rep.last_admitted - rep.last_preempted
        if moved:
            self.site_waiting[rep.site] -= moved
            self.site_running[rep.site] += moved
        if busy:
            rep.version += 1
            self._seq += 1
            heapq.heappush(self._events, (rep.wake_s, self._seq, WAKE, rep, rep.version))

    def _on_wake(self, rep: Replica, t: float) -> None:
        self._book(rep.site, rep.seg_dur, rep.seg_energy, t)
        _, done, abandoned = rep.finish_segment(t)
        if done:
            self.site_running[rep.site] -= len(done)
            for r in done:
                if r.timed_out:
                    self.metrics.timed_out += 1
                else:
                    self._complete(r, t)
        if abandoned:
            self.site_running[rep.site] -= len(abandoned)
            self.metrics.timed_out += len(abandoned)
        self._start(rep, t)

    def _abandon(self, req: Request, t: float) -> None:
        """The client of `req` gave up (timeout). Counted once; GPU time already spent stays
        spent. A request in the batch leaves at its replica's next iteration boundary."""
        st = req.state
        m = self.metrics
        if st == TRANSIT:  # its DELIVER event will find it DONE
            req.state = DONE
            self.site_waiting[req.site] -= 1
            self.site_transit_tokens[req.site] -= req.prompt_tokens
            m.timed_out += 1
        elif st == RETRY:
            req.state = DONE
            m.timed_out += 1
            self._retry_dirty = True
        elif st == QUEUED:
            req.rep.abandon(req, t)
            self.site_waiting[req.site] -= 1
            m.timed_out += 1
        elif (st == PREFILLING or st == DECODING) and not req.timed_out:
            rep = req.rep
            rep.abandon(req, t)
            if rep.state == DECODE and rep.cut_segment(t):
                rep.version += 1
                self._push(rep.wake_s, WAKE, rep, rep.version)

    def _on_deliver(self, req: Request, t: float) -> None:
        if req.state == DONE:  # its client gave up in transit (already counted)
            return
        s = req.site
        self.site_transit_tokens[s] -= req.prompt_tokens
        if self.site_down[s]:
            self.site_waiting[s] -= 1
            self._retry_or_fail(req, t)
            return
        rep = self._pick_replica(s, req)[0]
        if req.prompt_tokens >= rep.perf.model.max_context_tokens:
            # Longer than the model's context window (the mask said so): an explicit failure.
            self.site_waiting[s] -= 1
            req.state = DONE
            self.metrics.failed += 1
            self.metrics.failed_context += 1
            return
        if req.prompt_tokens + req.output_tokens > rep.kv_capacity:
            # Could never fit this replica's KV cache even alone: an explicit failure.
            self.site_waiting[s] -= 1
            req.state = DONE
            self.metrics.failed += 1
            self.metrics.failed_oversize += 1
            return
        req.rep = rep
        req.state = QUEUED
        rep.enqueue(req)
        if rep.state == IDLE:
            self._start(rep, t)
        elif rep.state == DECODE and len(rep.waiting) == 1 and rep.can_admit(self.max_batch[s]):
            if rep.cut_segment(t):
                rep.version += 1
                self._push(rep.wake_s, WAKE, rep, rep.version)

    def _pick_replica(self, s: int, req: Request) -> tuple[Replica, int]:
        """The site's own balancer: (replica, leading prompt blocks cached there).

        Prefix-affine least load, as a site-local prefix-aware balancer does: among the
        replicas whose load (queued + running requests) is within a quarter of the site's batch
        size of the least loaded one, the one with the longest cached prefix of the prompt;
        ties go to the less loaded, then the lower index. A request without a hash chain goes
        to the least loaded replica (lowest index on ties)."""
        reps = self.replicas[s]
        if len(reps) == 1:
            rep = reps[0]
            return rep, (rep.cached_blocks(req) if req.n_hashed else 0)
        if not req.n_hashed:
            rep = reps[0]
            best = rep.load()
            for r in reps[1:]:
                ld = r.load()
                if ld < best:
                    rep, best = r, ld
            return rep, 0
        loads = [r.load() for r in reps]
        limit = min(loads) + max(1, self.max_batch[s] // 4)
        rep, hit, load = None, -1, 0
        for r, ld in zip(reps, loads):
            if ld <= limit:
                h = r.cached_blocks(req)
                if h > hit or (h == hit and ld < load):
                    rep, hit, load = r, h, ld
        return rep, hit

    def _router_chain(self, req: Request):
        """The hashes of `req`'s prompt the router's approximate index works on: every
        `_index_stride`-th entry of its chain, over the full blocks of the prompt only (a
        multi-turn chain also names the answer's blocks, which the router has not seen)."""
        k, stride = req.hash_k, self._index_stride
        n_entries = min(req.n_hashed, req.prompt_tokens // self.scenario.engine.block_size_tokens) // k
        return req.hashes[stride - 1: n_entries - n_entries % stride: stride]

    def _on_site_down(self, s: int, t: float) -> None:
        self.site_down[s] += 1
        if self.site_down[s] > 1:
            return
        for rep in self.replicas[s]:
            busy, energy = rep.partial_energy(t)
            self._book(s, busy, energy, t)
            self.site_waiting[s] -= len(rep.waiting)
            for req in rep.evict_all():
                if req.timed_out:  # its client had already given up
                    req.state = DONE
                    self.metrics.timed_out += 1
                else:
                    self._retry_or_fail(req, t)
        self.site_running[s] = 0

    def _retry_or_fail(self, req: Request, t: float) -> None:
        if req.retries < self.scenario.faults.max_retries:
            req.retries += 1
            req.site = -1
            req.first_token_s = -1.0
            req.state = RETRY
            req.rep = None
            self.metrics.retried += 1
            self._seq += 1
            heapq.heappush(self._retry, (t, self._seq, req))
            self._retry_dirty = True
        else:
            req.state = DONE
            self.metrics.failed += 1

    def _complete(self, req: Request, t: float) -> None:
        m = self.metrics
        half_rtt = 0.5 * req.rtt_s
        ttft = req.first_token_s + half_rtt - req.arrival_s + self.api_s
        out = req.output_tokens
        tpot = (t - req.first_token_s) / (out - 1) if out > 1 else 0.0
        m.completed += 1
        m.ttft_s.append(ttft)
        m.tpot_s.append(tpot)
        m.e2e_s.append(t + half_rtt - req.arrival_s + self.api_s)
        m.network_rtt_ms.append(req.rtt_s * 1e3)
        m.served_prompt_tokens += req.prompt_tokens
        m.served_output_tokens += out
        if ttft <= req.ttft_slo_s and tpot <= req.tpot_slo_s:
            m.good += 1
            m.good_prompt_tokens += req.prompt_tokens
            m.good_output_tokens += out
            value = req.prompt_tokens * self._value_in + out * self._value_out
            m.goodput_value_usd += value
            self.reward_value_usd += value

    # ------------------------------------------------------------------ accounting
    def hour_utc(self, t: float | None = None) -> float:
        """UTC hour of day at simulated time t (the scenario's clock; days may be compressed)."""
        return (self._start_hour + (self.now if t is None else t) * self._hours_per_s) % 24.0

    def _local_hour_index(self, site: int, t: float) -> int:
        return int(local_hour(self.hour_utc(t), self.topology.sites[site].utc_offset_h)) % 24

    def _book(self, site: int, busy_s: float, energy_j: float, t: float) -> None:
        """Charge a replica's busy time and dynamic energy to its site."""
        if busy_s <= 0.0 and energy_j <= 0.0:
            return
        power_factor, usd_per_gpu_s, tp, utc_offset_h, prices, carbon = self._book_consts[site]
        h = int((self._start_hour + t * self._hours_per_s + utc_offset_h) % 24.0) % 24  # local_hour, inlined
        site_j = energy_j * power_factor
        kwh = site_j / J_PER_KWH
        e_usd = kwh * prices[h]
        g_usd = busy_s * usd_per_gpu_s
        b = self._site_book[site]  # [J, energy $, CO2 g, GPU-s, GPU $], folded into metrics lazily
        b[0] += site_j
        b[1] += e_usd
        b[2] += kwh * carbon[h]
        b[3] += busy_s * tp
        b[4] += g_usd
        self.reward_energy_usd += e_usd
        self.reward_gpu_usd += g_usd

    def _fold_book(self) -> None:
        """Move the per-site running sums into the metrics arrays."""
        m = self.metrics
        for s, b in enumerate(self._site_book):
            m.dyn_energy_j[s] += b[0]
            m.dyn_energy_usd[s] += b[1]
            m.dyn_co2_g[s] += b[2]
            m.busy_gpu_s[s] += b[3]
            m.busy_gpu_usd[s] += b[4]
            b[:] = [0.0] * 5

    def take_reward(self) -> tuple[float, float, float]:
        """(goodput value, energy cost, GPU cost) in $ accrued since the last call."""
        out = (self.reward_value_usd, self.reward_energy_usd, self.reward_gpu_usd)
        self.reward_value_usd = self.reward_energy_usd = self.reward_gpu_usd = 0.0
        return out

    def _end_episode(self) -> None:
        horizon = self.scenario.horizon_s
        self.now = horizon
        for site_reps in self.replicas:
            for rep in site_reps:
                busy, energy = rep.partial_energy(horizon)
                self._book(rep.site, busy, energy, horizon)
                rep.seg_dur = rep.seg_energy = 0.0  # booked up to the horizon; nothing runs after it
        self.done = True

    def _idle_accounting(self, t_end: float) -> None:
        """Idle floor of every provisioned GPU and the provisioned GPU cost over [0, t_end]."""
        m = self.metrics
        # Hourly series are piecewise constant: integrate them on a grid fine enough to
        # resolve every local-hour boundary (at most 1/10 of a simulated hour per step).
        hour_s = 1.0 / self._hours_per_s  # one local hour, in simulated seconds
        n = max(1, int(math.ceil(t_end / (hour_s / 10.0))))
        n = min(n, 20000)
        edges = np.linspace(0.0, t_end, n + 1)
        mids, dt = 0.5 * (edges[:-1] + edges[1:]), np.diff(edges)
        hours = self.hour_utc(mids)
        for s, spec in enumerate(self.topology.sites):
            idx = local_hour(hours, spec.utc_offset_h).astype(np.int64) % 24
            power_w = spec.idle_w * spec.site_power_factor
            kwh = power_w * dt / J_PER_KWH
            m.idle_energy_j[s] = power_w * t_end
            m.idle_energy_usd[s] = float(np.dot(kwh, np.asarray(spec.price_usd_per_kwh)[idx]))
            m.idle_co2_g[s] = float(np.dot(kwh, np.asarray(spec.carbon_g_per_kwh)[idx]))
            m.provisioned_gpu_usd[s] = spec.gpus * spec.gpu_usd_per_h * t_end / 3600.0

    def _fold_replicas(self) -> None:
        """Per-site engine counters (preemptions, recompute, prefix cache), from the replicas."""
        m = self.metrics
        for s, reps in enumerate(self.replicas):
            m.preemptions[s] = sum(r.preemptions for r in reps)
            m.recomputed_tokens[s] = sum(r.recomputed_tokens for r in reps)
            m.prefix_hit_tokens[s] = sum(r.hit_tokens for r in reps)
            m.prefill_lookup_tokens[s] = sum(r.lookup_tokens for r in reps)
            m.cache_evictions[s] = sum(r.pool.evictions for r in reps)

    def summary(self) -> dict:
        """Episode metrics up to now (see Metrics.summary)."""
        self._fold_replicas()
        self._fold_book()
        self._idle_accounting(self.now)
        return self.metrics.summary(self.now)

    def in_flight_census(self) -> dict:
        """Count in-flight requests from the data structures themselves (for invariant checks):
        pending decision, in transit to a site, queued, prefilling, decoding, awaiting re-routing."""
        transit = sum(1 for e in self._events if e[2] == DELIVER and e[3].state != DONE)
        queued = prefilling = decoding = 0
        for site_reps in self.replicas:
            for r in site_reps:
                queued += len(r.waiting)
                prefilling += len(r.prefilling)
                decoding += len(r.running)
        return {
            "pending": 0 if self.pending is None else 1,
            "transit": transit, "queued": queued, "prefilling": prefilling,
            "decoding": decoding, "retry": sum(1 for e in self._retry if e[2].state != DONE),
        }

    # ------------------------------------------------------------------ router view
    def snapshot(self) -> RouterSnapshot:
        """What a router sees for the pending request."""
        req = self.pending
        if req is None:
            raise RuntimeError("no pending request")
        view = RequestView(req.prompt_tokens, req.slo_class, req.origin, self._model_local[req.model],
                           req.residency, req.ttft_slo_s, req.tpot_slo_s)
        hour = self.hour_utc()
        if int(hour) != self._price_hour:
            self._price_hour = int(hour)
            self._price_now = [s.price_usd_per_kwh[self._local_hour_index(s.index, self.now)]
                               for s in self.topology.sites]
        kv = []
        queued = []
        now = self.now
        for site_reps, cap, tokens in zip(self.replicas, self._kv_blocks, self.site_transit_tokens):
            used = 0.0
            for r in site_reps:  # Replica.kv_used_blocks, inlined (once per replica per decision)
                pool = r.pool
                used += pool.private + pool.n_ref
                tokens += r.queued_tokens
                if r.state == DECODE and r.seg_allocs:
                    frac = (now - r.seg_start) / r.seg_dur
                    if frac < 1.0:
                        used -= r.seg_allocs * (1.0 - frac)
            kv.append(used / cap)
            queued.append(tokens)
        rtt = self._snapshot_rtt[req.origin]
        if rtt is None:  # recomputed only when a degraded-link window opens or closes
            rtt = (self._rtt_ms[req.origin] * self.link_factor[req.origin]).tolist()
            self._snapshot_rtt[req.origin] = rtt
        if req.n_hashed:
            cached, indexed = self._prefix_signals(req)
        else:
            cached = indexed = self._zeros
        return snapshot_from_lists(
            self.statics, view, hour,
            self.site_waiting, self.site_running, kv, rtt,
            self._price_now, [d == 0 for d in self.site_down], self.site_level,
            cached, indexed, queued,
        )

    def _prefix_signals(self, req: Request) -> tuple[list[float], list[float]]:
        """Per site, the fraction of `req`'s prompt tokens cached at the replica the site's
        balancer would pick now (precise: the engines' real caches, as KV events report them)
        and the fraction the router's own index says it sent there recently (approximate)."""
        per_block = self.scenario.engine.block_size_tokens / req.prompt_tokens
        cached = [self._pick_replica(s, req)[1] * per_block for s in range(self.n_sites)]
        indexed = self.prefix_index.fractions(self._router_chain(req), self._index_entry_tokens, req.prompt_tokens)
        return cached, indexed
