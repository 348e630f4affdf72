"""Paged KV on demand and recompute preemption, on one replica driven directly, and the two
schedulers' iteration plans."""

from __future__ import annotations

from gridenv.core.catalog import GPUS, MODELS
from gridenv.core.engine import DECODING, QUEUED, Replica, Request
from gridenv.core.perf import ReplicaPerf
from gridenv.core.schedulers import scheduler


def _request(i: int, prompt: int, output: int) -> Request:
    r = Request(i, 0.0, 0, prompt, output, 0, 0, False, 1.0, 1.0)
    r.state = QUEUED
    return r


def _run(rep: Replica, reqs: list[Request], max_batch: int = 8) -> dict:
    """Serve `reqs` (all queued at t = 0) to the end; return finish time per request id."""
    rep.waiting.extend(reqs)
    finished: dict[int, float] = {}
    t = 0.0
    while rep.start(t, max_batch):
        t = rep.wake_s
        _, done, _ = rep.finish_segment(t)
        for r in done:
            finished[r.id] = t
    return finished


class SpyReplica(Replica):
    """Records, per preemption: (victim id, blocks freed, tokens discarded, generated, target)."""

    __slots__ = ("events",)

    def preempt_latest(self) -> Request:
        used = self.pool.used()
        lost = {r.id: r.lost for r in self.prefilling}
        lost.update({e[2].id: e[2].lost for e in self.running})
        victim = super().preempt_latest()
        self.events.append((victim.id, used - self.pool.used(), victim.lost - lost[victim.id],
                            victim.gen, victim.target))
        return victim


def test_preemption_frees_kv_and_the_request_completes_later_with_its_recompute_counted() -> None:
    """Llama-3-70B on 2 x H100 holds 534 blocks (8544 tokens). Two requests of 4000 prompt
    tokens are admitted together (500 blocks), then their decodes grow until a block cannot be
    allocated: the later one is preempted, its blocks freed, and it is prefilled again over its
    prompt and the tokens it had generated."""
    perf = ReplicaPerf(GPUS["H100"], MODELS["llama-3-70b"], 2)
    rep = SpyReplica(0, 0, perf, scheduler("vllm-v1"), 8192, 16)
    first, second = _request(1, 4000, 3000), _request(2, 4000, 3000)
    events = rep.events = []
    finished = _run(rep, [first, second])
    assert set(finished) == {1, 2}
    assert events and events[0][0] == 2  # the most recently admitted request goes first
    victim_id, freed, lost, gen, target = events[0]
    assert gen > 0 and target == 4000 + gen  # recompute covers prompt + generated tokens
    assert lost == 4000 + gen - 1  # its KV (all but the last sampled token) was discarded
    assert freed == -(-lost // 16)  # every block it held came back
    assert first.preemptions == 0 and second.preemptions == len(events) == rep.preemptions
    assert finished[2] > finished[1]
    assert rep.recomputed_tokens == sum(e[2] for e in events) and second.lost == 0
    assert rep.pool.used() == 0 and rep.n_running == 0 and not rep.waiting


def test_kv_is_allocated_on_demand_not_for_the_output_length() -> None:
    """Admission takes the prompt's blocks only; a decoding request takes a new block each time
    its context crosses a 16-token boundary."""
    perf = ReplicaPerf(GPUS["H100"], MODELS["llama-3-8b"], 1)
    rep = Replica(0, 0, perf, scheduler("vllm-v1"), 8192, 16)
    r = _request(1, 100, 1000)  # 100 prompt tokens: 7 blocks; 1100 tokens would be 69
    rep.waiting.append(r)
    assert rep.start(0.0, 8)
    assert rep.pool.used() == 7
    rep.finish_segment(rep.wake_s)
    assert r.state == DECODING
    assert rep.start(rep.wake_s, 8) and rep.state == 2  # one decode segment to completion
    assert rep.pool.used() == -(-(100 + 1000 - 1) // 16)  # booked to the end of the segment
    rep.cut_segment(rep.seg_start + 0.5 * rep.seg_dur)  # an arrival cuts it halfway
    k = rep.seg_k
    assert rep.pool.used() == -(-(100 + k) // 16)


def test_vllm_v1_chunks_long_prompts_and_v0_prefills_them_whole() -> None:
    perf = ReplicaPerf(GPUS["L4"], MODELS["llama-3-8b"], 1, weight_dtype="fp8")
    for name, budget, iterations in (("vllm-v1", 2048, 4), ("vllm-v0", 8192, 1)):
        rep = Replica(0, 0, perf, scheduler(name), budget, 16)
        r = _request(1, 7000, 2)
        rep.waiting.append(r)
        prefill_iters = 0
        t = 0.0
        while rep.start(t, 8):
            prefill_iters += rep.state == 1
            t = rep.wake_s
            rep.finish_segment(t)
        assert prefill_iters == iterations, name


def test_vllm_v1_runs_decodes_alongside_prefill_and_v0_pauses_them() -> None:
    perf = ReplicaPerf(GPUS["H100"], MODELS["llama-3-8b"], 1)
    for name, advances in (("vllm-v1", True), ("vllm-v0", False)):
        rep = Replica(0, 0, perf, scheduler(name), 8192, 16)
        _run(rep, [])
        rep.waiting.append(_request(1, 500, 100))
        rep.start(0.0, 8)
        rep.finish_segment(rep.wake_s)  # request 1 decodes from now on
        rep.waiting.append(_request(2, 500, 100))
        it = rep.iters
        rep.start(rep.wake_s, 8)
        assert rep.state == 1  # a prefill iteration
        rep.finish_segment(rep.wake_s)
        assert (rep.iters == it + 1) is advances, name
