"""The names a pool's workers claimed lately, in memory the pool shares (issue 11: no herd).

Every worker keeps its own index of pending/ (dueindex.py). Without news of the others' claims,
each name would be tried by every worker of the pool in turn, and all but one rename would fail:
about (count - 1) failed renames per job, which is CPU that grows with the worker count. Watching
pending/ for renames out (IN_MOVED_FROM) would cost each worker one decoded inotify event per job,
the same growth again. So the supervisor maps one anonymous shared page set before it forks, and
a worker that won a rename writes the name there; the others drop it from their index before they
pick their next candidate: a few memory reads per claim, no system call.

The board is advice, never a lock: the claim is still the rename, and a worker outside the pool
(another host, another `worker start`) is not on the board and stays safe. Each worker writes only
its own ring (one writer, no lock); a reader that fell a whole ring behind loses those names, and
then pays one failed rename for each it tries.
"""

import mmap
import struct

RING = 128  # names per worker's ring
NAME_BYTES = 254  # longer names are not published (a claim of one costs the others a failed rename)
CLAIMED, RETURNED = 0, 1  # a name left pending/ (claimed); came back under the same name (put back)
_SEQ = struct.Struct("=Q")
_ENTRY = 2 + NAME_BYTES
_SLOT = _SEQ.size + RING * _ENTRY


class ClaimBoard:
    def __init__(self, count):
        self.count = count
        self._mem = mmap.mmap(-1, max(1, count) * _SLOT)  # anonymous and shared: seen by forked children

    def reader(self, slot):
        return BoardView(self, slot)


class BoardView:
    """One worker's view of the board: its own ring to write, the others' to read."""

    def __init__(self, board, slot):
        self.board = board
        self.slot = slot
        self.count = board.count
        mem = board._mem
        self._mem = mem
        self._seen = [_SEQ.unpack_from(mem, i * _SLOT)[0] for i in range(board.count)]  # news from now on

    def publish(self, name, kind=CLAIMED):
        raw = name.encode("utf-8", "surrogateescape")
        if len(raw) > NAME_BYTES:
            return
        base = self.slot * _SLOT
        seq = _SEQ.unpack_from(self._mem, base)[0]
        at = base + _SEQ.size + (seq % RING) * _ENTRY
        self._mem[at:at + 2 + len(raw)] = bytes((kind, len(raw))) + raw
        _SEQ.pack_into(self._mem, base, seq + 1)  # after the entry: a reader never sees it half-written
        self._seen[self.slot] = seq + 1

    def news(self):
        """(kind, name) the other workers published since the last call, in each one's order
        (some may be missed, none made up)."""
        out = []
        mem = self._mem
        for i in range(self.count):
            if i == self.slot:
                continue
            base = i * _SLOT
            seq = _SEQ.unpack_from(mem, base)[0]
            seen = self._seen[i]
            if seq == seen:
                continue
            got = []
            for s in range(max(seen, seq - RING + 1), seq):  # seq - RING's slot is the one written next
                at = base + _SEQ.size + (s % RING) * _ENTRY
                n = mem[at + 1]
                got.append((s, mem[at], bytes(mem[at + 2:at + 2 + n]).decode("utf-8", "surrogateescape")))
            # entry S is rewritten by the write of S + RING, begun once seq reached S + RING: such an
            # entry may be torn, so it is not believed (names missed cost a failed rename, no more)
            now_seq = _SEQ.unpack_from(mem, base)[0]
            out.extend((kind, name) for s, kind, name in got if s + RING > now_seq)
            self._seen[i] = seq
        return out
