"""Spread connections evenly over ``serve --workers N``: a worker holding more lets a less loaded one accept.

The workers share one listening socket; the kernel wakes them all for a new connection and whichever
calls ``accept`` first gets it, which is chance. Clients keep their connections for many requests
(a modality pushing a study, a viewer's handful of connections), so chance can leave three of four
connections on one worker, queued behind one GIL, next to an idle worker: with 2 workers, 7 of 30
groups of 4 keep-alive connections landed 3+1 or 4+0.

Each worker publishes how many connections it holds in its slot of a shared memory array that the
parent maps before the fork. A worker takes a new connection only if no other serving worker holds
fewer; otherwise it leaves the connection in the queue and pauses ``PAUSE_S`` for the other to take
it. After ``GRACE_S`` of leaving the same queue alone it accepts anyway, so a worker that stopped
looping (or a slot left behind by a crash) delays a connection by at most that. Balancing is
best-effort: two workers may read each other's counts at the same moment and both accept.
"""
from __future__ import annotations

import mmap
import time
from typing import Any, Callable

NOT_SERVING = -1      # a slot whose worker is starting, stopping or dead: it takes no connections
PAUSE_S = 0.0002      # a declining worker's pause before it looks at the queue again
GRACE_S = 0.1         # then it accepts anyway


class ConnectionCounts:
    """One slot per worker in anonymous shared memory: the connections it holds, or ``NOT_SERVING``.

    Made by the parent before it forks, so every worker maps the same pages.
    """

    def __init__(self, workers: int) -> None:
        self._mem = mmap.mmap(-1, 8 * workers)
        self._slots = memoryview(self._mem).cast("q")
        for index in range(workers):
            self._slots[index] = NOT_SERVING

    def __getitem__(self, index: int) -> int:
        return self._slots[index]

    def __setitem__(self, index: int, value: int) -> None:
        self._slots[index] = value

    def retire(self, index: int) -> None:
        """Worker ``index`` takes no more connections (it is stopping, or it has died)."""
        self._slots[index] = NOT_SERVING

    def may_accept(self, index: int, held: int) -> bool:
        """Whether worker ``index``, holding ``held`` connections, is among the least loaded serving workers."""
        for other, count in enumerate(self._slots):
            if other != index and 0 <= count < held:
                return False
        return True


class _Declining:
    """When the current run of declined accepts began (None: not declining)."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.last = 0.0


def balance_accepts(servers: list[Any], counts: ConnectionCounts, index: int,
                    clock: Callable[[], float] = time.monotonic, pause: Callable[[float], None] = time.sleep) -> None:
    """Make this worker's waitress listening dispatchers (``servers``) accept only when it is least loaded.

    Each dispatcher's ``readable`` (asked on every loop pass) publishes the count, and its
    ``handle_accept`` declines while another serving worker holds fewer connections.
    """
    state = _Declining()

    def held() -> int:
        return sum(len(server.active_channels) for server in servers)

    for server in servers:
        readable, accept = server.readable, server.handle_accept

        def publishing_readable(readable: Callable[[], bool] = readable) -> bool:
            counts[index] = held()
            return readable()

        def balanced_accept(accept: Callable[[], None] = accept) -> None:
            mine = held()
            if not counts.may_accept(index, mine):
                now = clock()
                if state.since is None or now - state.last > GRACE_S:
                    state.since = now  # a new run of declines (the last one ended long ago)
                state.last = now
                if now - state.since < GRACE_S:
                    pause(PAUSE_S)
                    return
            state.since = None
            accept()
            counts[index] = held()

        server.readable = publishing_readable
        server.handle_accept = balanced_accept
