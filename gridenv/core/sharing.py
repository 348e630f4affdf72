"""Synthetic prompt sharing: system prompts per application, shared documents, conversations.

``apply_sharing`` rewrites a synthetic episode's requests class by class according to each
class's ``prefix`` section (:class:`gridenv.core.scenario.PrefixSharing`) and gives every
request the prefix chain a prefix cache can match: a ``range`` of block keys (O(1) memory), one
key per KV block of ``engine.block_size_tokens`` tokens. Keys live in disjoint namespaces per
(kind, class, application / document / conversation), so two requests share a key only if they
share that block's whole token prefix.

* ``system_prompt`` / ``documents``: a request draws an application (document), uniformly or by
  Zipf popularity; its prompt becomes the shared prefix followed by its own text. Its chain
  names the full blocks of the shared prefix.
* ``multi_turn``: each drawn arrival of the class starts a conversation with probability
  ``1 / turns_mean`` (so the class keeps about its share of the request rate); a conversation
  has a geometric number of turns (mean ``turns_mean``), turn k arriving an exponential think
  time after turn k-1. Turn k's prompt is turn k-1's prompt + answer + new user text, and its
  chain names the full blocks of its prompt + answer, so the next turn can hit both. With
  ``context_tokens``, a conversation first draws one of ``count`` shared contexts (uniformly
  or by Zipf popularity), which heads every turn's prompt: its full blocks have keys shared by
  every conversation on that context, the blocks after them keys of the conversation alone.

With a cache that never evicts, one replica serving a whole conversation hits, at turn k, every
full block of turn k-1's prompt and answer (``implied_multi_turn_hits``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["apply_sharing", "implied_multi_turn_hits", "KIND_CODES"]

KIND_CODES = {"system_prompt": 1, "documents": 2, "multi_turn": 3}
_CONTEXT_CODE = 4  # namespace of multi_turn's shared contexts
_NS_SHIFT = 48  # namespace bits above the group id
_GROUP_SHIFT = 24  # group (app / document / conversation) bits above the block index


def _namespace(kind: str, class_index: int) -> int:
    code = _CONTEXT_CODE if kind == "context" else KIND_CODES[kind]
    return (code * 8 + class_index) << _NS_SHIFT


def _popularity(rng: np.random.Generator, count: int, zipf_s: float, size: int) -> np.ndarray:
    if zipf_s <= 0.0:
        return rng.integers(count, size=size)
    w = 1.0 / np.arange(1, count + 1) ** zipf_s
    return rng.choice(count, size=size, p=w / w.sum())


def _group_cumsum(x: np.ndarray, group_start: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sum of x restarting at each group (groups are contiguous runs)."""
    cs = np.cumsum(x)
    offset = np.repeat(cs[group_start] - x[group_start], np.diff(np.append(group_start, len(x))))
    return cs - offset


def apply_sharing(scenario, rng, class_names, t, origin, cls_local, prompt, output):
    """(t, origin, cls_local, prompt, output, chains, chain_blocks) with sharing applied,
    sorted by time (stable)."""
    w = scenario.workload
    bs = scenario.engine.block_size_tokens
    n = len(t)
    chains: list = [()] * n
    blocks = np.zeros(n, dtype=np.int64)
    extra = []  # expanded conversations: (t, origin, cls, prompt, output, chains, blocks)
    drop = np.zeros(n, dtype=bool)
    for ci, cname in enumerate(class_names):
        spec = w.classes[cname].prefix
        if spec is None:
            continue
        idx = np.flatnonzero(cls_local == ci)
        ns = _namespace(spec.kind, ci)
        if spec.kind in ("system_prompt", "documents"):
            group = _popularity(rng, spec.count, spec.zipf_s, len(idx))
            prompt[idx] += spec.tokens
            nb = spec.tokens // bs
            for j, g in zip(idx, group):
                base = ns + (int(g) << _GROUP_SHIFT)
                chains[j] = range(base, base + nb)
            blocks[idx] = nb
            continue
        # multi_turn: replace the class's arrivals by conversations
        drop[idx] = True
        starts = idx[rng.random(len(idx)) < 1.0 / spec.turns_mean]
        n_turns = rng.geometric(1.0 / spec.turns_mean, size=len(starts))
        total = int(n_turns.sum())
        if total == 0:
            continue
        first = np.cumsum(n_turns) - n_turns  # index of each conversation's first turn
        conv = np.repeat(np.arange(len(starts)), n_turns)
        gaps = rng.exponential(spec.think_time_s, size=total)
        gaps[first] = 0.0
        times = t[starts][conv] + _group_cumsum(gaps, first)
        new_text = w.classes[cname].prompt_tokens.sample(rng, total)
        answer = w.classes[cname].output_tokens.sample(rng, total)
        p = _group_cumsum(new_text, first) + _group_cumsum(answer, first) - answer
        if spec.context_tokens:
            p += spec.context_tokens
            nb = (p + answer) // bs
            conv_chains = _context_chains(rng, spec, ci, bs, conv, nb, first, n_turns, ns)
        else:
            nb = (p + answer) // bs
            conv_chains = [range(ns + (int(c) << _GROUP_SHIFT), ns + (int(c) << _GROUP_SHIFT) + int(b))
                           for c, b in zip(conv, nb)]
        keep = times < scenario.horizon_s
        extra.append((times[keep], origin[starts][conv][keep], np.full(int(keep.sum()), ci),
                      p[keep], answer[keep], [c for c, k in zip(conv_chains, keep) if k], nb[keep]))
    if extra:
        keep_idx = np.flatnonzero(~drop)
        t = np.concatenate([t[keep_idx]] + [e[0] for e in extra])
        origin = np.concatenate([origin[keep_idx]] + [e[1] for e in extra])
        cls_local = np.concatenate([cls_local[keep_idx]] + [e[2] for e in extra])
        prompt = np.concatenate([prompt[keep_idx]] + [e[3] for e in extra]).astype(np.int64)
        output = np.concatenate([output[keep_idx]] + [e[4] for e in extra]).astype(np.int64)
        chains = [chains[i] for i in keep_idx] + [c for e in extra for c in e[5]]
        blocks = np.concatenate([blocks[keep_idx]] + [e[6] for e in extra])
        order = np.argsort(t, kind="stable")
        t, origin, cls_local = t[order], origin[order], cls_local[order]
        prompt, output, blocks = prompt[order], output[order], blocks[order]
        chains = [chains[i] for i in order]
    return t, origin, cls_local, prompt, output, chains, blocks


def _context_chains(rng, spec, class_index, bs, conv, nb, first, n_turns, ns) -> list:
    """Chains of conversations that start with a shared context: the context's full blocks,
    then the conversation's own. One tuple per conversation (its last turn's chain); every turn
    is a slice of it, so the block keys are stored once per conversation."""
    ctx = _popularity(rng, spec.count, spec.zipf_s, len(first))
    ctx_ns = _namespace("context", class_index)
    n_ctx = spec.context_tokens // bs
    ctx_keys = {}
    chains = []
    for c, (f, k) in enumerate(zip(first, n_turns)):
        g = int(ctx[c])
        head = ctx_keys.get(g)
        if head is None:
            base = ctx_ns + (g << _GROUP_SHIFT)
            head = ctx_keys[g] = tuple(range(base, base + n_ctx))
        last = int(nb[f + k - 1])
        base = ns + (c << _GROUP_SHIFT)
        full = head + tuple(range(base, base + last - n_ctx))
        chains.extend(full[: int(b)] for b in nb[f: f + k])
    return chains


def implied_multi_turn_hits(prompt_tokens: np.ndarray, output_tokens: np.ndarray, bs: int) -> int:
    """Prompt tokens a never-evicting cache on one replica serves from cache over the turns of
    ONE conversation (arrays in turn order): at turn k >= 2, the full blocks of turn k-1's
    prompt + answer whose KV was computed (all but the last answer token), capped, as vLLM does, so that at least one prompt token is computed."""
    hits = 0
    for k in range(1, len(prompt_tokens)):
        prev = (int(prompt_tokens[k - 1]) + int(output_tokens[k - 1]) - 1) // bs
        cap = (int(prompt_tokens[k]) - 1) // bs
        hits += min(prev, cap) * bs
    return hits
