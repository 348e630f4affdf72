"""The router service's own approximate prefix index (which prompt prefixes it sent where).

A request body may carry its prompt's block hashes (``request.block_hashes``: hash ``i`` names
the prompt's whole prefix up to the end of block ``i``; ``request.block_size_tokens`` tokens per
hash, default :data:`DEFAULT_BLOCK_SIZE_TOKENS`). The service then

* looks the chain up in its index: per endpoint, the number of leading hashes it remembers
  sending there, as a fraction of the prompt (``matched * block_size_tokens / prompt_tokens``,
  capped at 1: exactly the simulator's ``prefix_indexed_frac``), which becomes that endpoint's
  ``prefix_indexed_frac`` unless the caller sent one; and
* records the chain at the endpoint it picks (nothing when it sheds).

This is the index the simulated router keeps (:class:`gridenv.core.prefix_index.PrefixIndex`:
per endpoint an LRU set of hashes, bounded in entries), so fed the same sequence of (hashes,
chosen endpoint) it gives the same fractions as the environment (tests/router/test_prefix.py).
The default bound per endpoint is the endpoint's KV capacity in 128-token entries (its
replicas x KV capacity tokens / 128, the simulator's bound); ``--prefix-index-entries`` sets
one bound for every endpoint. Memory is bounded: entries x (hash <= 128 characters or a 64-bit
integer + an ordered-dict slot, about 150-300 bytes).

Thread-safe (one lock around each lookup and each record). One index per process: with
``--workers N`` each uvicorn worker keeps its own, and sees only the requests it served.
"""

from __future__ import annotations

import os
import threading

from gridenv.core.prefix_index import ROUTER_BLOCK_TOKENS, PrefixIndex

__all__ = ["RouterPrefixIndex", "prompt_block_hashes", "DEFAULT_BLOCK_SIZE_TOKENS", "MAX_HASH_CHARS", "HASH_INT_MIN", "HASH_INT_MAX",
           "default_capacity_entries"]

#: Prompt tokens per block hash when the body does not say (the simulator's router index entry).
DEFAULT_BLOCK_SIZE_TOKENS = ROUTER_BLOCK_TOKENS
#: Longest string hash accepted (a hex SHA-256 is 64 characters).
MAX_HASH_CHARS = 128
#: Integer hashes: signed or unsigned 64-bit.
HASH_INT_MIN = -(1 << 63)
HASH_INT_MAX = (1 << 64) - 1


def prompt_block_hashes(token_ids, block_size_tokens: int = DEFAULT_BLOCK_SIZE_TOKENS) -> list[int]:
    """The chained hashes of a prompt's full blocks, for ``request.block_hashes``.

    Hash ``i`` digests hash ``i - 1`` and the token ids of block ``i`` (BLAKE2b, 8 bytes, as
    an unsigned 63-bit integer), so it names the whole prefix up to the end of block ``i``, the
    way vLLM's prefix-cache block hashes chain. A partial last block gets no hash. Any stable
    chained hash works: the service only compares them."""
    import hashlib

    if type(block_size_tokens) is not int or block_size_tokens < 1:
        raise ValueError(f"block_size_tokens: expected an integer >= 1, got {block_size_tokens!r}")
    ids = [int(t) for t in token_ids]
    out: list[int] = []
    parent = b""
    for start in range(0, len(ids) - block_size_tokens + 1, block_size_tokens):
        h = hashlib.blake2b(parent, digest_size=8)
        h.update(b",".join(str(t).encode() for t in ids[start:start + block_size_tokens]))
        parent = h.digest()
        out.append(int.from_bytes(parent, "little") >> 1)
    return out


def default_capacity_entries(statics) -> list[int]:
    """Per endpoint: its KV capacity (replicas x tokens per replica) in 128-token entries."""
    return [max(1, int(r) * int(c) // DEFAULT_BLOCK_SIZE_TOKENS)
            for r, c in zip(statics.replicas, statics.kv_capacity_tokens)]


class RouterPrefixIndex:
    """Per-endpoint bounded LRU sets of block hashes, locked; see the module docstring."""

    __slots__ = ("site_names", "capacity_entries", "_index", "_lock", "lookups", "records")

    def __init__(self, site_names, capacity_entries) -> None:
        self.site_names = tuple(site_names)
        self._index = PrefixIndex(len(self.site_names), capacity_entries)
        self.capacity_entries: list[int] = list(self._index.capacity_blocks)
        self._lock = threading.Lock()
        self.lookups = 0
        self.records = 0

    @classmethod
    def for_statics(cls, statics, capacity_entries: int | None = None) -> "RouterPrefixIndex":
        """An index for a policy's sites: `capacity_entries` per endpoint, or the default bound."""
        caps = default_capacity_entries(statics) if capacity_entries is None else int(capacity_entries)
        return cls(statics.site_names, caps)

    def fractions(self, chain, block_size_tokens: int, prompt_tokens: int) -> list[float]:
        """Per endpoint: the fraction of the prompt whose hashes the index holds there."""
        with self._lock:
            self.lookups += 1
            return self._index.fractions(chain, block_size_tokens, prompt_tokens)

    def matched(self, chain) -> list[int]:
        """Per endpoint: leading hashes of `chain` held there."""
        with self._lock:
            return self._index.match_all(chain)

    def record(self, endpoint: int, chain) -> None:
        """The prompt with `chain` was sent to `endpoint` (index into site_names)."""
        with self._lock:
            self._index.insert(endpoint, chain)
            self.records += 1

    def forget(self, endpoint: int) -> None:
        """Drop what is remembered for `endpoint` (it restarted with an empty cache)."""
        with self._lock:
            self._index.forget(endpoint)

    def stats(self) -> dict:
        """Entries held and the bound, per endpoint; lookups and records so far (this process)."""
        with self._lock:
            sizes = [self._index.size(i) for i in range(len(self.site_names))]
            lookups, records = self.lookups, self.records
        return {"scope": "per worker process", "worker_pid": os.getpid(),
                "default_block_size_tokens": DEFAULT_BLOCK_SIZE_TOKENS,
                "entries": dict(zip(self.site_names, sizes)),
                "capacity_entries": dict(zip(self.site_names, self.capacity_entries)),
                "lookups": lookups, "records": records}
