"""A router-side approximate prefix index: which prompt prefixes were recently sent where.

Routers that do not receive KV events from their engines (SGLang's router, vLLM
production-stack's prefix-aware routing, Ray Serve's prefix-aware router, AIBrix's
prefix-cache routing) remember, per endpoint, the prefixes of the prompts they sent there and
assume those prefixes are still cached. This is that memory: per endpoint, an LRU set of block
hashes with a bounded number of entries. It can be wrong both ways: it still names blocks the
engine has evicted, and it does not know blocks another router (or a retry) put there.

A prompt is a chain of block hashes (hash ``i`` names the prompt's whole prefix up to the end
of block ``i``, as in vLLM, Dynamo and Mooncake traces), so the match of a chain at an endpoint
is the number of its leading hashes in that endpoint's set. The precise counterpart (what the
engines really hold, as KV-event-driven scorers see it) is computed by the simulator from the
replicas' caches.

This module imports nothing from gridenv or numpy: the HTTP router keeps one per endpoint set.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["PrefixIndex", "ROUTER_BLOCK_TOKENS"]

#: Tokens per entry of a router's index by default (a router hashes its prompts in coarser
#: blocks than the engine's 16-token KV blocks): the simulator's index and the HTTP service's
#: default ``request.block_size_tokens``.
ROUTER_BLOCK_TOKENS = 128


class PrefixIndex:
    """Per-endpoint LRU sets of block hashes, each bounded to ``capacity_blocks`` entries."""

    __slots__ = ("capacity_blocks", "_sets")

    def __init__(self, n_endpoints: int, capacity_blocks) -> None:
        caps = ([int(capacity_blocks)] * n_endpoints if isinstance(capacity_blocks, (int, float))
                else [int(c) for c in capacity_blocks])
        if len(caps) != n_endpoints or any(c < 1 for c in caps):
            raise ValueError(f"prefix index: need {n_endpoints} capacities >= 1, got {caps}")
        self.capacity_blocks = caps
        self._sets: list[OrderedDict] = [OrderedDict() for _ in range(n_endpoints)]

    def __len__(self) -> int:
        return len(self._sets)

    def size(self, endpoint: int) -> int:
        """Hashes remembered for `endpoint`."""
        return len(self._sets[endpoint])

    def match(self, endpoint: int, chain) -> int:
        """Number of leading hashes of `chain` remembered for `endpoint` (no LRU update)."""
        s = self._sets[endpoint]
        n = 0
        for h in chain:
            if h not in s:
                break
            n += 1
        return n

    def match_all(self, chain) -> list[int]:
        """:meth:`match` for every endpoint."""
        if not chain:
            return [0] * len(self._sets)
        first = chain[0]
        out = []
        for s in self._sets:
            if first not in s:  # the common case: nothing of this prompt was sent there
                out.append(0)
                continue
            n = 0
            for h in chain:
                if h not in s:
                    break
                n += 1
            out.append(n)
        return out

    def fractions(self, chain, entry_tokens: float, prompt_tokens: int) -> list[float]:
        """Per endpoint, the share of a `prompt_tokens` prompt its matched entries of
        `entry_tokens` tokens cover (at most 1)."""
        per_entry = entry_tokens / prompt_tokens
        return [min(m * per_entry, 1.0) for m in self.match_all(chain)]

    def insert(self, endpoint: int, chain) -> None:
        """The router sent a prompt with `chain` to `endpoint`: remember (refresh) its hashes,
        evicting the least recently used beyond the capacity."""
        s = self._sets[endpoint]
        for h in chain:
            if h in s:
                s.move_to_end(h)
            else:
                s[h] = None
        over = len(s) - self.capacity_blocks[endpoint]
        for _ in range(over if over > 0 else 0):
            s.popitem(last=False)

    def forget(self, endpoint: int) -> None:
        """Drop everything remembered for `endpoint` (it restarted: its cache is empty)."""
        self._sets[endpoint].clear()
