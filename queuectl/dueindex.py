"""The worker's in-memory order of pending jobs, so that a claim never lists pending/.

Fed by a full scan at start (and now and then), and by watchdog events in between. A name leaves
the index when this worker claims it, when the pool's claim board (claimboard.py) says another
worker of the pool did, or when our rename of it fails (a worker outside the pool won it).
"""

import heapq


class DueIndex:
    MAX_DOCS = 1024  # parsed jobs kept for the next claims (a claim then needs no second read)

    def __init__(self):
        self._docs = {}  # name -> the job as read when indexed, for up to MAX_DOCS names
        self._keys = {}  # name -> sort key, for names we know are (or were) in pending/
        self._scheduled = []  # heap of (not_before, key): not yet due
        self._ready = []  # heap of key = (-priority, not_before, created_at, name): due

    def __len__(self):
        return len(self._keys)

    def __contains__(self, name):
        return name in self._keys

    def add(self, name, priority, not_before, created_at, doc=None):
        if name in self._keys:
            return
        if doc is not None and len(self._docs) < self.MAX_DOCS:
            self._docs[name] = doc
        key = (-priority, not_before, created_at, name)
        self._keys[name] = key
        heapq.heappush(self._scheduled, (not_before, key))

    def take_doc(self, name):
        """The job read when NAME was indexed (names in pending/ are never rewritten), or None."""
        return self._docs.pop(name, None)

    def retain(self, names):
        """Forget every name not in NAMES (after a full scan)."""
        for name in [n for n in self._keys if n not in names]:
            del self._keys[name]
            self._docs.pop(name, None)

    def discard(self, name):
        """Forget NAME at once: it left pending/ (another worker claimed it). Its heap entries
        are skipped when met (lazy deletion: no heap is searched)."""
        if self._keys.pop(name, None) is not None:
            self._docs.pop(name, None)

    def top_due(self, now, m):
        """The keys (-priority, not_before, created_at, name) of the M best due jobs, best first,
        all left in the index."""
        self._promote(now)
        out = []
        while self._ready and len(out) < m:
            key = heapq.heappop(self._ready)
            if self._keys.get(key[3]) == key:
                out.append(key)
        for key in out:
            heapq.heappush(self._ready, key)
        return out

    def _promote(self, now):
        while self._scheduled and self._scheduled[0][0] <= now:
            _, key = heapq.heappop(self._scheduled)
            if self._keys.get(key[3]) == key:
                heapq.heappush(self._ready, key)

    def pop_due(self, now):
        """The name of the best due job (priority, then not-before, then age), or None."""
        self._promote(now)
        while self._ready:
            key = heapq.heappop(self._ready)
            if self._keys.get(key[3]) == key:
                del self._keys[key[3]]
                return key[3]
        return None

    def next_due(self):
        """When the earliest scheduled job becomes due (epoch seconds), or None."""
        while self._scheduled and self._keys.get(self._scheduled[0][1][3]) != self._scheduled[0][1]:
            heapq.heappop(self._scheduled)
        return self._scheduled[0][0] if self._scheduled else None

    def has_due(self, now):
        self._promote(now)
        while self._ready and self._keys.get(self._ready[0][3]) != self._ready[0]:
            heapq.heappop(self._ready)
        return bool(self._ready)
