"""Paged KV memory of one replica, with vLLM's automatic prefix caching semantics.

The KV cache is ``total`` blocks of ``block_size`` tokens. A block is either

* *private*: held by one request (the partial last block of a prompt, generated tokens, or any
  block whose content has no known hash); counted, not named;
* *cached*: a full block named by the hash of its token prefix (``key``), with a reference
  count; shared by every running request whose prompt starts with that prefix;
* *evictable*: a cached block nobody references any more. Its content stays reusable until
  the space is needed: evictable blocks are reclaimed least recently freed first, as vLLM's free
  block queue does (a freed request's blocks are queued tail first, so its last blocks go
  first);
* *free*.

``available()`` (free + evictable) is what an allocation may use; ``used()`` (private +
referenced) is the router-visible KV occupancy. A block cached on one replica does not help
another: every replica owns its own pool.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["KVBlockPool"]


class KVBlockPool:
    """Block accounting and the prefix cache of one replica."""

    __slots__ = ("total", "block_size", "private", "ref", "n_ref", "evictable", "evictions")

    def __init__(self, total_blocks: int, block_size: int) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.total = total_blocks
        self.block_size = block_size
        self.private = 0  # blocks held privately by requests
        self.ref: dict[int, int] = {}  # cached block key -> reference count (0: evictable)
        self.n_ref = 0  # cached blocks with a reference count > 0
        self.evictable: OrderedDict[int, None] = OrderedDict()  # ref 0, least recently freed first
        self.evictions = 0

    # ------------------------------------------------------------------ occupancy
    def used(self) -> int:
        """Blocks held by requests (private or referenced cached blocks)."""
        return self.private + self.n_ref

    def available(self) -> int:
        """Blocks an allocation may take: free ones and evictable cached ones."""
        return self.total - self.private - self.n_ref

    def reclaim(self) -> None:
        """Evict least-recently-freed cached blocks until private + cached fit in the pool."""
        over = self.private + self.n_ref + len(self.evictable) - self.total
        if over > 0:
            ev, ref = self.evictable, self.ref
            for _ in range(min(over, len(ev))):
                key, _ = ev.popitem(last=False)
                del ref[key]
            self.evictions += over

    # ------------------------------------------------------------------ prefix cache
    def lookup(self, keys) -> tuple[int, int]:
        """(number of leading keys cached, how many of those are evictable now)."""
        ref = self.ref
        n = n_evictable = 0
        for key in keys:
            c = ref.get(key)
            if c is None:
                break
            n += 1
            if c == 0:
                n_evictable += 1
        return n, n_evictable

    def acquire(self, keys) -> None:
        """Reference cached blocks (all present: checked by ``lookup``)."""
        ref, ev = self.ref, self.evictable
        for key in keys:
            c = ref[key]
            if c == 0:
                del ev[key]
                self.n_ref += 1
            ref[key] = c + 1

    def promote(self, key: int) -> None:
        """A private full block got its hash: it becomes a referenced cached block (or, if
        the same content is already cached, the private copy is dropped and the cached one is
        referenced)."""
        self.private -= 1
        c = self.ref.get(key)
        if c is None:
            self.ref[key] = 1
            self.n_ref += 1
        else:
            if c == 0:
                del self.evictable[key]
                self.n_ref += 1
            self.ref[key] = c + 1

    def promote_all(self, keys) -> None:
        """:meth:`promote` each key, in order."""
        ref, ev = self.ref, self.evictable
        n_ref = self.n_ref
        for key in keys:
            c = ref.get(key)
            if c is None:
                ref[key] = 1
                n_ref += 1
            else:
                if c == 0:
                    del ev[key]
                    n_ref += 1
                ref[key] = c + 1
        self.n_ref = n_ref
        self.private -= len(keys)

    def release(self, keys) -> None:
        """Drop one reference to each key, in the order given (pass tail first); blocks that
        nobody references become evictable, most recently released last."""
        ref, ev = self.ref, self.evictable
        for key in keys:
            c = ref[key] - 1
            ref[key] = c
            if c == 0:
                self.n_ref -= 1
                ev[key] = None

    def donate(self, key: int) -> bool:
        """A freed private full block with a known hash stays in the cache as evictable (if its
        content is not cached already); the caller has already returned it from ``private``.
        True if it was kept."""
        if key in self.ref:
            return False
        self.ref[key] = 0
        self.evictable[key] = None
        return True

    def clear(self) -> None:
        """Everything is lost (the replica failed)."""
        self.private = 0
        self.ref.clear()
        self.n_ref = 0
        self.evictable.clear()
