"""Iteration schedulers of a serving engine: which requests prefill how many tokens, which decode.

A scheduler is a small stateless policy; the :class:`~gridenv.core.engine.Replica` keeps the
state (queues, KV blocks) and offers the moves a scheduler may make: admit the head of the
waiting queue with a prefill chunk, give a partially prefilled request its next chunk, preempt
the most recently admitted request (recompute). ``plan_iteration`` returns the prefill chunks of
the next iteration as ``[(request, tokens), ...]``; an empty plan means a pure decode iteration
(the replica then runs a closed-form decode segment up to the next event).

Registered schedulers (``SCHEDULERS``; pick one with ``engine: {scheduler: ...}``):

* ``vllm-v1`` (default): vLLM V1's unified scheduler (vllm/v1/core/sched/scheduler.py). A token
  budget per iteration (``max_num_batched_tokens``) is spent on the running requests first (one
  token per decoding request, then the next chunk of each partially prefilled request, in
  admission order), then on waiting requests, FCFS, chunked to what is left. When a running
  request needs a KV block that cannot be allocated, the most recently admitted running request
  is preempted (recompute), and no waiting request is admitted in that iteration.
* ``vllm-v0``: vLLM V0's default scheduler without chunked prefill: prefill first. When waiting
  requests can be admitted, an iteration prefills whole prompts (up to the token budget, at
  least one prompt) and the decoding requests wait; otherwise every running request decodes.
"""

from __future__ import annotations

__all__ = ["Scheduler", "VllmV1Scheduler", "VllmV0Scheduler", "SCHEDULERS", "scheduler",
           "DEFAULT_SCHEDULER", "default_token_budget"]


class Scheduler:
    """Plans one iteration of a replica."""

    name = ""
    #: True if decoding requests run in the same iteration as prefill chunks (mixed batches).
    mixes_decode = True

    def plan_iteration(self, rep, max_batch: int) -> list:
        raise NotImplementedError


class VllmV1Scheduler(Scheduler):
    """Decodes first, then chunked prefill of partial, then waiting requests, in one budget."""

    name = "vllm-v1"
    mixes_decode = True

    def plan_iteration(self, rep, max_batch: int) -> list:
        preempted = False
        # Every decoding request gets its token; one whose context crosses a block boundary
        # needs a new block.
        pool = rep.pool
        while rep.n_running and rep.hist[(1 - rep.iters) % rep.bs] > pool.total - pool.private - pool.n_ref:
            rep.preempt_latest()
            preempted = True
        budget = rep.token_budget - rep.n_running
        chunks = []
        # Partially prefilled requests, in admission order.
        i = 0
        prefilling = rep.prefilling
        while i < len(prefilling) and budget > 0:
            r = prefilling[i]
            q = r.target - r.done
            if q > budget:
                q = budget
            while not rep.chunk_fits(r, q):
                preempted = True
                if rep.preempt_latest() is r:
                    break
            else:
                rep.grow_chunk(r, q)
                chunks.append((r, q))
                budget -= q
                i += 1
                continue
            break  # r itself was preempted; later ones were preempted before it
        if preempted:
            return chunks
        # Waiting requests, FCFS, no overtaking: the head waits for slots or KV blocks.
        while rep.waiting and budget > 0 and rep.n_running + len(prefilling) < max_batch:
            r, q = rep.admit_head(budget, whole=False, first=not chunks)
            if not q:
                break
            chunks.append((r, q))
            budget -= q
        return chunks


class VllmV0Scheduler(Scheduler):
    """Prefill first, whole prompts; decoding requests wait during a prefill iteration."""

    name = "vllm-v0"
    mixes_decode = False

    def plan_iteration(self, rep, max_batch: int) -> list:
        budget = rep.token_budget
        chunks = []
        while rep.waiting and rep.n_running + len(rep.prefilling) < max_batch:
            r, q = rep.admit_head(budget, whole=True, first=not chunks)
            if not q:
                break
            chunks.append((r, q))
            budget -= q
        return chunks


#: Scheduler registry: name -> class.
SCHEDULERS: dict[str, type[Scheduler]] = {
    VllmV1Scheduler.name: VllmV1Scheduler,
    VllmV0Scheduler.name: VllmV0Scheduler,
}

DEFAULT_SCHEDULER = "vllm-v1"


def scheduler(name: str) -> Scheduler:
    """An instance of a registered scheduler; a clear error lists the known ones."""
    try:
        return SCHEDULERS[name]()
    except KeyError:
        raise KeyError(f"unknown scheduler {name!r}; known: {sorted(SCHEDULERS)}") from None


def default_token_budget(scheduler_name: str, gpu_name: str, gpu_memory_bytes: float,
                         max_context_tokens: int) -> int:
    """vLLM's default ``max_num_batched_tokens`` for an OpenAI-compatible server.

    V1 (vllm/engine/arg_utils.py, ``EngineArgs._set_default_args``): 8192 on GPUs with at least
    70 GiB that are not A100 (H100), else 2048 (A100, after vLLM PR #17885, and L4). V0 without
    chunked prefill: ``max(max_model_len, 2048)``, so that any admissible prompt fits.
    """
    if scheduler_name == VllmV0Scheduler.name:
        return max(max_context_tokens, 2048)
    if gpu_memory_bytes >= 70 * 2**30 and "a100" not in gpu_name.lower():
        return 8192
    return 2048
