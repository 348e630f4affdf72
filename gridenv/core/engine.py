"""The serving engine of one replica: continuous batching, event to event.

A replica keeps a FIFO waiting queue and a running batch (at most ``max_batch`` sequences).
At every iteration boundary it admits waiting requests in order while the batch has a free slot
and the KV cache can hold the request's whole footprint (prompt + output tokens, reserved at
admission, so a running request is never preempted: when KV is full, requests queue). Admitted
requests are prefilled together in one iteration, alongside one decode step of the running
batch (a mixed iteration); the prefill produces their first token.

Between admissions and completions the batch is constant, so the engine schedules one event at
the next completion (a decode *segment* of k iterations, timed in closed form by
``ReplicaPerf.decode_segment``). When a request arrives mid-segment and could be admitted, the
segment is cut at the next iteration boundary after the arrival (``decode_iters_within``).
Simulation cost therefore grows with requests, not with tokens.

Time is kept with an iteration counter per replica: a running request that got its first token
when the counter was ``i0`` finishes when it reaches ``i0 + output_tokens - 1``, and its context
is ``prompt + 1 + (iters - i0)`` tokens; the batch's context sum is ``ctx_base + n_running *
iters``, updated in O(1) per admission or completion.
"""

from __future__ import annotations

import heapq
from collections import deque

from gridenv.core.perf import ReplicaPerf

__all__ = ["Request", "Replica", "IDLE", "PREFILL", "DECODE"]

IDLE, PREFILL, DECODE = 0, 1, 2


class Request:
    """One LLM request and its fate."""

    __slots__ = (
        "id", "arrival_s", "origin", "prompt_tokens", "output_tokens", "slo_class", "model",
        "residency", "ttft_slo_s", "tpot_slo_s", "site", "rtt_s", "first_token_s", "i0",
        "end_iter", "retries", "kv_need",
    )

    def __init__(self, id, arrival_s, origin, prompt_tokens, output_tokens, slo_class, model,
                 residency, ttft_slo_s, tpot_slo_s):
        self.id = id
        self.arrival_s = arrival_s
        self.origin = origin
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.slo_class = slo_class
        self.model = model
        self.residency = residency
        self.ttft_slo_s = ttft_slo_s
        self.tpot_slo_s = tpot_slo_s
        self.site = -1
        self.rtt_s = 0.0
        self.first_token_s = -1.0
        self.i0 = 0
        self.end_iter = 0
        self.retries = 0
        self.kv_need = prompt_tokens + output_tokens


class Replica:
    """Continuous-batching state of one serving engine.

    The replica never touches the global clock or metrics itself: it returns what happened
    (finished requests, the next wake-up time, energy used) to the simulator.
    """

    __slots__ = (
        "site", "index", "perf", "kv_capacity", "max_prefill_tokens", "waiting", "running",
        "n_running", "ctx_base", "iters", "kv_reserved", "state", "prefilling", "seg_start",
        "seg_k", "seg_n", "seg_ctx0", "seg_dur", "seg_energy", "wake_s", "version",
    )

    def __init__(self, site: int, index: int, perf: ReplicaPerf, max_prefill_tokens: int):
        self.site = site
        self.index = index
        self.perf = perf
        self.kv_capacity = perf.kv_capacity_tokens
        self.max_prefill_tokens = max_prefill_tokens
        self.waiting: deque[Request] = deque()
        self.running: list = []  # heap of (end_iter, request id, Request)
        self.n_running = 0
        self.ctx_base = 0
        self.iters = 0
        self.kv_reserved = 0
        self.state = IDLE
        self.prefilling: list[Request] = []
        self.seg_start = 0.0
        self.seg_k = 0
        self.seg_n = 0
        self.seg_ctx0 = 0.0
        self.seg_dur = 0.0
        self.seg_energy = 0.0
        self.wake_s = 0.0
        self.version = 0

    # ------------------------------------------------------------------ signals
    def load(self) -> int:
        """Requests queued or in service (the in-site balancer's signal)."""
        return len(self.waiting) + self.n_running + len(self.prefilling)

    def can_admit(self, max_batch: int) -> bool:
        if not self.waiting:
            return False
        head = self.waiting[0]
        return (self.n_running + len(self.prefilling) < max_batch
                and self.kv_reserved + head.kv_need <= self.kv_capacity)

    # ------------------------------------------------------------------ transitions
    def start(self, now: float, max_batch: int) -> bool:
        """At an iteration boundary: start the next iteration or segment. True if busy."""
        batch = self.prefilling
        q_sum = 0
        attn = 0.0
        waiting = self.waiting
        while waiting and self.n_running + len(batch) < max_batch:
            head = waiting[0]
            if self.kv_reserved + head.kv_need > self.kv_capacity:
                break  # FCFS: the head waits for KV room; no overtaking
            if batch and q_sum + head.prompt_tokens > self.max_prefill_tokens:
                break
            waiting.popleft()
            self.kv_reserved += head.kv_need
            batch.append(head)
            q_sum += head.prompt_tokens
            attn += head.prompt_tokens * head.prompt_tokens * 0.5
        perf = self.perf
        d = self.n_running
        if batch:
            t_iter, t_comp, t_mem = perf.iter_time(
                q_sum, attn, d, self.ctx_base + d * self.iters, len(batch)
            )
            self.state = PREFILL
            self.seg_start = now
            self.seg_k = 1
            self.seg_dur = t_iter
            self.seg_energy = perf.iter_energy_j(t_iter, t_comp, t_mem)
            self.wake_s = now + t_iter
            return True
        if d:
            k = self.running[0][0] - self.iters
            ctx0 = self.ctx_base + d * self.iters
            dur, energy = perf.decode_segment(d, ctx0, k)
            self.state = DECODE
            self.seg_start = now
            self.seg_k = k
            self.seg_n = d
            self.seg_ctx0 = ctx0
            self.seg_dur = dur
            self.seg_energy = energy
            self.wake_s = now + dur
            return True
        self.state = IDLE
        return False

    def cut_segment(self, now: float) -> bool:
        """A request that could be admitted arrived mid-segment: end the segment at the next
        iteration boundary. True if the wake-up time moved earlier."""
        if self.state != DECODE:
            return False
        done = self.perf.decode_iters_within(self.seg_n, self.seg_ctx0, now - self.seg_start)
        k = done + 1
        if k >= self.seg_k:
            return False
        dur, energy = self.perf.decode_segment(self.seg_n, self.seg_ctx0, k)
        self.seg_k, self.seg_dur, self.seg_energy = k, dur, energy
        self.wake_s = self.seg_start + dur
        return True

    def finish_segment(self, now: float) -> tuple[list[Request], list[Request]]:
        """At wake-up: advance the batch; return (requests that got their first token,
        requests that finished)."""
        first: list[Request] = []
        if self.state == PREFILL:
            self.iters += 1  # the mixed iteration also gave every decoder one token
            first = self.prefilling
            self.prefilling = []
        else:
            self.iters += self.seg_k
        done = self._pop_finished()
        it = self.iters
        for r in first:
            r.first_token_s = now
            if r.output_tokens <= 1:
                self.kv_reserved -= r.kv_need
                done.append(r)
                continue
            r.i0 = it
            r.end_iter = it + r.output_tokens - 1
            self.ctx_base += r.prompt_tokens + 1 - it
            self.n_running += 1
            heapq.heappush(self.running, (r.end_iter, r.id, r))
        self.state = IDLE
        return first, done

    def _pop_finished(self) -> list[Request]:
        done = []
        running = self.running
        it = self.iters
        while running and running[0][0] <= it:
            r = heapq.heappop(running)[2]
            self.n_running -= 1
            self.ctx_base -= r.prompt_tokens + 1 - r.i0
            self.kv_reserved -= r.kv_need
            done.append(r)
        return done

    def partial_energy(self, now: float) -> tuple[float, float]:
        """(busy seconds, dynamic J) of the current segment up to `now` (pro rata)."""
        if self.state == IDLE or self.seg_dur <= 0:
            return 0.0, 0.0
        frac = min(max((now - self.seg_start) / self.seg_dur, 0.0), 1.0)
        return frac * self.seg_dur, frac * self.seg_energy

    def evict_all(self) -> list[Request]:
        """The replica's site failed: hand back every queued or running request and reset."""
        out = list(self.prefilling) + [e[2] for e in self.running] + list(self.waiting)
        self.waiting.clear()
        self.running = []
        self.prefilling = []
        self.n_running = 0
        self.ctx_base = 0
        self.kv_reserved = 0
        self.state = IDLE
        self.version += 1
        return out
