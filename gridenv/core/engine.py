"""The serving engine of one replica: continuous batching over paged KV memory, event to event.

A replica keeps a FIFO waiting queue, the requests being prefilled (possibly in chunks) and the
decoding batch (at most ``max_batch`` sequences in all). A pluggable scheduler
(:mod:`gridenv.core.schedulers`, ``vllm-v1`` by default) plans each iteration: which requests
prefill how many tokens and whether the decoding requests run alongside.

KV memory is paged (:class:`~gridenv.core.kvcache.KVBlockPool`, 16-token blocks by default) and
allocated on demand, as vLLM does: admission takes the blocks of the first prefill chunk (after
prefix-cache hits), each chunk takes its blocks, and a decoding request takes a new block when
its context crosses a block boundary. Output lengths are never used to admit. When a block
cannot be allocated for a running request, the most recently admitted request is preempted:
its blocks are freed (full blocks with known hashes stay in the prefix cache) and it returns to
the head of the waiting queue, to be prefilled again over its prompt and the tokens it had
generated (recompute). Preemptions and recomputed tokens are counted.

Prefix caching: a request may carry the hash chain of its token stream (``hashes``, each entry
naming ``hash_k`` consecutive blocks). At admission the longest cached prefix of full blocks is
referenced instead of computed (at least one token is always computed, as in vLLM); when a
prefill completes, its full prompt blocks enter the cache; when a request leaves, its other full
hashed blocks stay cached as evictable.

Between events a decode batch is constant, so the engine schedules one event at the next
completion (a decode *segment* of k iterations, timed in closed form by
``ReplicaPerf.decode_segment``), cut short at the iteration where the next block allocation
would fail (found in closed form from each request's block phase, see ``_iters_fitting``). When a
request arrives mid-segment and could be admitted, or one in the batch is abandoned by its
client, the segment is cut at the next iteration boundary (``decode_iters_within``). Simulation
cost therefore grows with requests, not tokens.

Time is kept with an iteration counter per replica: a decoding request that finished its prefill
when the counter was ``i0`` has context ``base + iters`` tokens at iteration ``iters`` (``base =
prefilled + 1 - i0``) and holds ``ceil((base + iters - 1) / block)`` blocks between iterations;
the batch's context sum is ``ctx_base + n_running * iters``, updated in O(1) per admission or
completion.
"""

from __future__ import annotations

import heapq
from collections import deque
from itertools import chain, islice, takewhile

from gridenv.core.kvcache import KVBlockPool
from gridenv.core.perf import ReplicaPerf

__all__ = ["Request", "Replica", "IDLE", "PREFILL", "DECODE",
           "TRANSIT", "QUEUED", "PREFILLING", "DECODING", "RETRY", "DONE"]

IDLE, PREFILL, DECODE = 0, 1, 2

#: Where a request is (``Request.state``).
TRANSIT, QUEUED, PREFILLING, DECODING, RETRY, DONE = range(6)

_EMPTY: tuple = ()


def block_keys(hashes, k: int, start: int, stop: int):
    """Prefix-cache keys of blocks start..stop-1 of a hash chain naming k blocks per entry
    (:meth:`Request.block_key` of each, in order), as a lazy iterator: the per-block work runs
    in C (islice, range), not in a Python loop."""
    if stop <= start:
        return iter(())
    if k == 1:
        return islice(hashes, start, stop)
    first, skip = divmod(start, k)
    keys = chain.from_iterable(range(h * k, h * k + k) for h in islice(hashes, first, None))
    return islice(keys, skip, skip + stop - start)


class Request:
    """One LLM request and its fate."""

    __slots__ = (
        "id", "arrival_s", "origin", "prompt_tokens", "output_tokens", "slo_class", "model",
        "residency", "ttft_slo_s", "tpot_slo_s", "site", "rtt_s", "first_token_s", "i0",
        "end_iter", "retries", "hashes", "hash_k", "n_hashed", "target", "done", "gen", "base",
        "priv", "shared", "seq", "state", "preemptions", "lost", "timed_out", "rep",
        "timeout_s", "e2e_timeout_s",
    )

    def __init__(self, id, arrival_s, origin, prompt_tokens, output_tokens, slo_class, model,
                 residency, ttft_slo_s, tpot_slo_s, hashes=_EMPTY, hash_k=1, n_hashed=0,
                 timeout_s=float("inf"), e2e_timeout_s=float("inf")):
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
        self.hashes = hashes  # prefix hash chain (any sequence of ints), hash_k blocks per entry
        self.hash_k = hash_k
        self.n_hashed = n_hashed  # engine blocks the chain names
        self.target = prompt_tokens  # tokens to prefill: prompt (+ generated, after preemption)
        self.done = 0  # of target, computed or found in the prefix cache
        self.gen = 0  # output tokens generated before the current prefill
        self.base = 0
        self.priv = 0  # private KV blocks while prefilling
        self.shared: list = []  # cached block keys referenced, in prompt order
        self.seq = 0  # admission order on its replica
        self.state = TRANSIT
        self.preemptions = 0
        self.lost = 0  # computed tokens discarded by preemption, not yet recomputed
        self.timed_out = False  # the client gave up; leaves at the next iteration boundary
        self.rep = None
        self.timeout_s = timeout_s  # first token due within this (client time from arrival)
        self.e2e_timeout_s = e2e_timeout_s  # whole response due within this

    def block_key(self, i: int) -> int:
        """Prefix-cache key of the request's i-th KV block (i < n_hashed)."""
        k = self.hash_k
        if k == 1:
            return self.hashes[i]
        return self.hashes[i // k] * k + i % k


class Replica:
    """Continuous-batching state of one serving engine.

    The replica never touches the global clock or metrics itself: it returns what happened
    (finished requests, the next wake-up time, energy used) to the simulator, and keeps
    per-replica counters (preemptions, recomputed tokens, prefix-cache hits) the simulator
    reads at summary time.
    """

    __slots__ = (
        "site", "index", "perf", "scheduler", "mixes_decode", "token_budget", "bs", "pool",
        "kv_capacity", "waiting", "running", "n_running", "ctx_base", "iters", "hist",
        "state", "prefilling", "chunks", "seg_start", "seg_k", "seg_n", "seg_ctx0", "seg_dur",
        "seg_energy", "seg_allocs", "wake_s", "version", "n_seq", "n_abandon", "last_admitted",
        "last_preempted", "preemptions", "recomputed_tokens", "hit_tokens", "lookup_tokens",
        "queued_tokens",
    )

    def __init__(self, site: int, index: int, perf: ReplicaPerf, scheduler, token_budget: int,
                 block_size_tokens: int = 16):
        self.site = site
        self.index = index
        self.perf = perf
        self.scheduler = scheduler
        self.mixes_decode = scheduler.mixes_decode
        self.token_budget = token_budget
        self.bs = block_size_tokens
        self.pool = KVBlockPool(perf.kv_capacity_tokens // block_size_tokens, block_size_tokens)
        self.kv_capacity = self.pool.total * block_size_tokens  # tokens
        self.waiting: deque[Request] = deque()
        self.queued_tokens = 0  # sum of the waiting requests' targets (the prefill backlog)
        self.running: list = []  # heap of (end_iter, request id, Request): the decoding batch
        self.n_running = 0
        self.ctx_base = 0
        self.iters = 0
        # Decoding requests by block phase p = base % block size (stored at p and p + block
        # size, so that any run of phases is one slice): the ones needing a block at iteration
        # x are those of phase (1 - x) % block size.
        self.hist = [0] * (2 * block_size_tokens)
        self.state = IDLE
        self.prefilling: list[Request] = []  # admitted, prefill not complete (admission order)
        self.chunks: list = []  # the current prefill iteration's (request, tokens)
        self.seg_start = 0.0
        self.seg_k = 0
        self.seg_n = 0
        self.seg_ctx0 = 0.0
        self.seg_dur = 0.0
        self.seg_energy = 0.0
        self.seg_allocs = 0  # KV blocks the current decode segment allocates (booked at its start)
        self.wake_s = 0.0
        self.version = 0
        self.n_seq = 0
        self.n_abandon = 0
        self.last_admitted = 0  # requests moved from waiting to running by the last start()
        self.last_preempted = 0  # requests moved back to waiting by the last start()
        self.preemptions = 0
        self.recomputed_tokens = 0
        self.hit_tokens = 0
        self.lookup_tokens = 0

    # ------------------------------------------------------------------ signals
    def load(self) -> int:
        """Requests queued or in service (the in-site balancer's signal)."""
        return len(self.waiting) + self.n_running + len(self.prefilling)

    def enqueue(self, r: Request) -> None:
        """A request arrives at this replica's waiting queue (tail)."""
        self.waiting.append(r)
        self.queued_tokens += r.target

    def cached_blocks(self, r: Request) -> int:
        """Leading KV blocks of r's prompt in this replica's prefix cache now: what admission
        would hit if it happened now (the same cap as :meth:`admit_head`: at least one prompt
        token is computed)."""
        n_max = (r.target - 1) // self.bs
        if n_max > r.n_hashed:
            n_max = r.n_hashed
        ref = self.pool.ref
        if not ref or n_max <= 0:
            return 0
        return len(list(takewhile(ref.__contains__, block_keys(r.hashes, r.hash_k, 0, n_max))))

    def kv_used_blocks(self, now: float) -> float:
        """KV blocks in use at `now` (router signal): a decode segment's blocks are booked at
        its start; they are counted here in proportion to the segment's elapsed time."""
        used = self.pool.private + self.pool.n_ref
        if self.state == DECODE and self.seg_allocs:
            frac = (now - self.seg_start) / self.seg_dur
            if frac < 1.0:
                return used - self.seg_allocs * (1.0 - frac)
        return used

    def decode_blocks_needed(self) -> int:
        """New blocks the decoding batch needs for the next iteration."""
        if not self.n_running:
            return 0
        return self.hist[(1 - self.iters) % self.bs]

    def can_admit(self, max_batch: int) -> bool:
        """Could the head of the queue start at the next boundary (slots and KV blocks)?"""
        if not self.waiting or self.n_running + len(self.prefilling) >= max_batch:
            return False
        q = min(self.waiting[0].target, self.token_budget)
        return -(-q // self.bs) <= self.pool.available()

    # ------------------------------------------------------------------ scheduler moves
    def chunk_fits(self, r: Request, q: int) -> bool:
        """Can partially prefilled `r` get the blocks of its next q tokens (after the decoders'
        blocks of this iteration)?"""
        new = -(-(r.done + q) // self.bs) - len(r.shared) - r.priv
        return new + (self.decode_blocks_needed() if self.mixes_decode else 0) <= self.pool.available()

    def grow_chunk(self, r: Request, q: int) -> None:
        new = -(-(r.done + q) // self.bs) - len(r.shared) - r.priv
        if new > 0:
            r.priv += new
            self.pool.private += new
            if self.pool.evictable:
                self.pool.reclaim()

    def admit_head(self, budget: int, whole: bool, first: bool) -> tuple[Request | None, int]:
        """Admit the head of the waiting queue with its first chunk (at most `budget` tokens,
        or its whole prompt if `whole`: then a prompt over budget goes only alone, `first`).
        Returns (request, chunk tokens), or (None, 0) if it cannot start now."""
        r = self.waiting[0]
        bs = self.bs
        target = r.target
        n_hit = n_hit_free = 0
        keys = _EMPTY
        if r.n_hashed:
            cap = (target - 1) // bs
            if cap > r.n_hashed:
                cap = r.n_hashed
            if cap > 0:
                keys = list(block_keys(r.hashes, r.hash_k, 0, cap))
                n_hit, n_hit_free = self.pool.lookup(keys)
        done = n_hit * bs
        q = target - done
        if whole:
            if q > budget and not first:
                return None, 0
        elif q > budget:
            q = budget
        new = -(-(done + q) // bs) - n_hit
        pool = self.pool
        if self.mixes_decode:
            reserve = self.hist[(1 - self.iters) % bs] if self.n_running else 0
        else:  # vLLM V0 keeps a 1% watermark of free blocks for the decoding batch
            reserve = pool.total // 100 or 1
        if new + n_hit_free + reserve > pool.total - pool.private - pool.n_ref:
            return None, 0
        self.waiting.popleft()
        self.queued_tokens -= target
        if n_hit:
            keys = keys[:n_hit]
            pool.acquire(keys)
            r.shared = keys
        else:
            r.shared = []
        r.priv = new
        pool.private += new
        if pool.evictable:
            pool.reclaim()
        r.done = done
        self.lookup_tokens += target
        self.hit_tokens += done
        if r.lost:
            r.lost = r.lost - done if r.lost > done else 0
        self.n_seq += 1
        r.seq = self.n_seq
        r.state = PREFILLING
        self.prefilling.append(r)
        self.last_admitted += 1
        return r, q

    def preempt_latest(self) -> Request:
        """Preempt the most recently admitted running request (recompute); return it."""
        victim = self.prefilling[-1] if self.prefilling else None
        best = victim.seq if victim is not None else -1
        for e in self.running:
            if e[2].seq > best:
                victim, best = e[2], e[2].seq
        if victim.state == DECODING:
            self.running = [e for e in self.running if e[2] is not victim]
            heapq.heapify(self.running)
            gen = victim.gen + 1 + (self.iters - victim.i0)
            computed = victim.base + self.iters - 1
            self._drop_decoder(victim)
            victim.gen = gen
        else:
            self.prefilling.remove(victim)
            computed = victim.done
            self._drop_prefilling(victim)
        victim.lost += computed
        victim.target = victim.prompt_tokens + victim.gen
        victim.done = 0
        victim.state = QUEUED
        victim.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(victim)
        self.queued_tokens += victim.target
        self.last_preempted += 1
        return victim

    # ------------------------------------------------------------------ block release
    def _free(self, r: Request, private_blocks: int, computed_tokens: int) -> None:
        """Return r's blocks: full hashed private blocks stay cached (evictable), tail first;
        then its references to cached blocks are dropped, tail first."""
        pool = self.pool
        pool.private -= private_blocks
        shared = r.shared
        n_sh = len(shared)
        if r.n_hashed > n_sh:
            full = computed_tokens // self.bs
            if full > r.n_hashed:
                full = r.n_hashed
            for key in reversed(list(block_keys(r.hashes, r.hash_k, n_sh, full))):
                pool.donate(key)
        if n_sh:
            pool.release(reversed(shared))
            r.shared = []
        r.priv = 0

    def _drop_decoder(self, r: Request) -> None:
        """Remove a decoding request's accounting (the caller removes it from the heap)."""
        ctx = r.base + self.iters - 1
        blocks = -(-ctx // self.bs)
        p = r.base % self.bs
        self.hist[p] -= 1
        self.hist[p + self.bs] -= 1
        self.ctx_base -= r.base
        self.n_running -= 1
        self._free(r, blocks - len(r.shared), ctx)

    def _drop_prefilling(self, r: Request) -> None:
        self._free(r, r.priv, r.done)

    # ------------------------------------------------------------------ transitions
    def start(self, now: float, max_batch: int) -> bool:
        """At an iteration boundary: start the next iteration or segment. True if busy."""
        self.last_admitted = 0
        self.last_preempted = 0
        if self.waiting or self.prefilling:
            chunks = self.scheduler.plan_iteration(self, max_batch)
        else:
            chunks = None  # nothing to prefill: a decode segment (its block check is below)
        perf = self.perf
        k = 0
        if not chunks and self.n_running:
            pool = self.pool
            while self.n_running:
                k = self.running[0][0] - self.iters
                free = pool.total - pool.private - pool.n_ref
                if self.n_running * ((k + self.bs - 1) // self.bs) > free:  # else all fit
                    k = self._iters_fitting(free, k)
                if k > 0:
                    break
                self.preempt_latest()
            if not self.n_running and self.waiting:  # everyone was preempted: start over
                chunks = self.scheduler.plan_iteration(self, max_batch)
        if chunks:
            q_sum = 0
            attn = 0.0
            ctx = 0
            for r, q in chunks:
                c = r.done
                q_sum += q
                attn += q * (c + q * 0.5)
                ctx += c
            d = self.n_running if self.mixes_decode else 0
            if d:
                need = self.hist[(1 - self.iters) % self.bs]
                if need:
                    self.pool.private += need
                    if self.pool.evictable:
                        self.pool.reclaim()
                ctx += self.ctx_base + d * self.iters
            t_iter, t_comp, t_mem = perf.iter_time(q_sum, attn, d, ctx, len(chunks))
            self.chunks = chunks
            self.state = PREFILL
            self.seg_start = now
            self.seg_k = 1
            self.seg_dur = t_iter
            self.seg_energy = perf.iter_energy_j(t_iter, t_comp, t_mem)
            self.wake_s = now + t_iter
            return True
        d = self.n_running
        if d:
            allocs = self._decode_allocs(k)
            self.seg_allocs = allocs
            if allocs:
                self.pool.private += allocs
                if self.pool.evictable:
                    self.pool.reclaim()
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

    def _iters_fitting(self, free_blocks: int, k: int) -> int:
        """How many of the next k decode iterations get their new blocks from free_blocks."""
        d, bs = self.n_running, self.bs
        if d * ((k + bs - 1) // bs) <= free_blocks:
            return k  # at most one block per request every bs iterations
        cycles = free_blocks // d  # every bs consecutive iterations allocate exactly d blocks
        used = cycles * d
        x = self.iters + cycles * bs
        hist = self.hist
        while True:
            used += hist[(1 - x) % bs]
            if used > free_blocks:
                j = x - self.iters
                return j if j < k else k
            x += 1

    def _decode_allocs(self, k: int) -> int:
        """Blocks the decoding batch allocates over its next k iterations."""
        bs = self.bs
        full, r = divmod(k, bs)
        n = self.n_running * full
        if r:
            # iterations x = it, it+1, ..., it+r-1 (mod bs) need phases j0, j0-1, ..., j0-r+1
            j0 = (1 - self.iters) % bs + bs
            n += sum(self.hist[j0 - r + 1:j0 + 1])
        return n

    def cut_segment(self, now: float) -> bool:
        """End the current decode segment at the next iteration boundary (a request arrived
        that could be admitted, or one in the batch was abandoned). True if the wake-up time
        moved earlier."""
        if self.state != DECODE:
            return False
        done = self.perf.decode_iters_within(self.seg_n, self.seg_ctx0, now - self.seg_start)
        k = done + 1
        if k >= self.seg_k:
            return False
        allocs = self._decode_allocs(k)
        self.pool.private -= self.seg_allocs - allocs
        self.seg_allocs = allocs
        dur, energy = self.perf.decode_segment(self.seg_n, self.seg_ctx0, k)
        self.seg_k, self.seg_dur, self.seg_energy = k, dur, energy
        self.wake_s = self.seg_start + dur
        return True

    def finish_segment(self, now: float) -> tuple[list[Request], list[Request], list[Request]]:
        """At wake-up: advance the batch; return (requests that got their first token,
        requests that finished, requests abandoned by their clients and now removed)."""
        first: list[Request] = []
        if self.state == PREFILL:
            if self.mixes_decode:
                self.iters += 1  # the mixed iteration also gave every decoder one token
            chunks = self.chunks
            self.chunks = []
            completed = []
            for r, q in chunks:
                r.done += q
                if r.lost:
                    rc = q if q < r.lost else r.lost
                    self.recomputed_tokens += rc
                    r.lost -= rc
                if r.done >= r.target:
                    completed.append(r)
            if completed:
                self.prefilling = [r for r in self.prefilling if r.done < r.target]
        else:
            self.iters += self.seg_k
            completed = ()
        done = self._pop_finished()
        it = self.iters
        bs = self.bs
        for r in completed:
            if r.n_hashed > len(r.shared):  # its full prompt blocks enter the prefix cache
                pool = self.pool
                full = r.prompt_tokens // bs
                if full > r.n_hashed:
                    full = r.n_hashed
                keys = list(block_keys(r.hashes, r.hash_k, len(r.shared), full))
                pool.promote_all(keys)
                r.shared += keys
                r.priv -= len(keys)
            if r.gen == 0:
                r.first_token_s = now
                first.append(r)
            remaining = r.output_tokens - r.gen - 1
            if remaining <= 0 or r.timed_out:
                self._free(r, r.priv, r.target)
                r.state = DONE
                done.append(r)
                continue
            r.priv = 0  # from now on its blocks follow from its context (_drop_decoder)
            r.i0 = it
            r.end_iter = it + remaining
            r.base = r.target + 1 - it
            self.ctx_base += r.base
            p = r.base % bs
            self.hist[p] += 1
            self.hist[p + bs] += 1
            self.n_running += 1
            r.state = DECODING
            heapq.heappush(self.running, (r.end_iter, r.id, r))
        abandoned = self._remove_abandoned() if self.n_abandon else []
        self.state = IDLE
        return first, done, abandoned

    def _pop_finished(self) -> list[Request]:
        done = []
        running = self.running
        it = self.iters
        if not running or running[0][0] > it:
            return done
        bs, hist, pool = self.bs, self.hist, self.pool
        while running and running[0][0] <= it:
            r = heapq.heappop(running)[2]
            base = r.base
            p = base % bs
            hist[p] -= 1
            hist[p + bs] -= 1
            self.ctx_base -= base
            self.n_running -= 1
            ctx = base + it - 1
            if r.shared or r.n_hashed:
                self._free(r, -(-ctx // bs) - len(r.shared), ctx)
            else:
                pool.private -= -(-ctx // bs)
            r.state = DONE
            done.append(r)
        return done

    def _remove_abandoned(self) -> list[Request]:
        out = [r for r in self.prefilling if r.timed_out]
        if out:
            self.prefilling = [r for r in self.prefilling if not r.timed_out]
            for r in out:
                self._drop_prefilling(r)
        gone = [e[2] for e in self.running if e[2].timed_out]
        if gone:
            self.running = [e for e in self.running if not e[2].timed_out]
            heapq.heapify(self.running)
            for r in gone:
                self._drop_decoder(r)
            out += gone
        for r in out:
            r.state = DONE
        self.n_abandon = 0
        return out

    def abandon(self, r: Request, now: float) -> bool:
        """The client of `r` gave up. A queued request leaves now (True); one in the batch is
        flagged and leaves at the next iteration boundary (False; its GPU time is spent)."""
        if r.state == QUEUED:
            self.waiting.remove(r)
            self.queued_tokens -= r.target
            r.state = DONE
            return True
        r.timed_out = True
        self.n_abandon += 1
        return False

    def partial_energy(self, now: float) -> tuple[float, float]:
        """(busy seconds, dynamic J) of the current segment up to `now` (pro rata)."""
        if self.state == IDLE or self.seg_dur <= 0:
            return 0.0, 0.0
        frac = min(max((now - self.seg_start) / self.seg_dur, 0.0), 1.0)
        return frac * self.seg_dur, frac * self.seg_energy

    def evict_all(self) -> list[Request]:
        """The replica's site failed: hand back every queued or running request and reset
        (the KV cache, prefix cache included, is lost)."""
        out = list(self.prefilling) + [e[2] for e in self.running] + list(self.waiting)
        for r in out:
            r.done = 0
            r.priv = 0
            r.shared = []
            r.target = r.prompt_tokens
            r.gen = 0
            r.lost = 0  # (timed_out stays: a client that gave up is not re-routed)
        self.waiting.clear()
        self.queued_tokens = 0
        self.running = []
        self.prefilling = []
        self.chunks = []
        self.n_running = 0
        self.ctx_base = 0
        self.hist = [0] * (2 * self.bs)
        self.pool.clear()
        self.n_abandon = 0
        self.state = IDLE
        self.version += 1
        return out

    # ------------------------------------------------------------------ checks
    def kv_census(self) -> int:
        """Blocks held, recomputed from the requests themselves (for invariant tests)."""
        held_private = sum(r.priv for r in self.prefilling)
        for e in self.running:
            r = e[2]
            held_private += -(-(r.base + self.iters - 1) // self.bs) - len(r.shared)
        if self.state == DECODE:
            held_private += self._decode_allocs(self.seg_k)
        elif self.state == PREFILL and self.mixes_decode and self.n_running:
            held_private += self.hist[(1 - self.iters) % self.bs]
        refs: dict = {}
        for r in self.prefilling:
            for k in r.shared:
                refs[k] = refs.get(k, 0) + 1
        for e in self.running:
            for k in e[2].shared:
                refs[k] = refs.get(k, 0) + 1
        pool = self.pool
        assert held_private == pool.private, (held_private, pool.private)
        assert refs == {k: c for k, c in pool.ref.items() if c}, "cache reference counts"
        assert len(pool.evictable) == sum(1 for c in pool.ref.values() if c == 0)
        assert pool.private + pool.n_ref + len(pool.evictable) <= pool.total
        assert self.queued_tokens == sum(r.target for r in self.waiting), "queued tokens"
        return pool.private + pool.n_ref
