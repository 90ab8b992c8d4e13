"""accept_balance.py: the shared connection counts and the decision to accept, without sockets.

The live behaviour (keep-alive connections go to the worker holding fewer) is in test_workers.py.
"""
from __future__ import annotations

import os

from dicomweb_wsgi.accept_balance import GRACE_S, NOT_SERVING, PAUSE_S, ConnectionCounts, balance_accepts


class FakeListener:
    """What balance_accepts uses of a waitress listening dispatcher."""

    def __init__(self) -> None:
        self.active_channels: dict[int, object] = {}
        self.accepted = 0

    def readable(self) -> bool:
        return True

    def handle_accept(self) -> None:
        self.accepted += 1
        self.active_channels[100 + self.accepted] = object()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.pauses: list[float] = []

    def __call__(self) -> float:
        return self.now

    def pause(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


def balanced(counts: ConnectionCounts, index: int = 0) -> tuple[FakeListener, FakeClock]:
    listener, clock = FakeListener(), FakeClock()
    balance_accepts([listener], counts, index, clock=clock, pause=clock.pause)
    return listener, clock


def test_counts_start_not_serving_and_are_shared_with_a_forked_child():
    counts = ConnectionCounts(3)
    assert [counts[i] for i in range(3)] == [NOT_SERVING] * 3
    pid = os.fork()
    if pid == 0:  # the child must never return into pytest
        try:
            counts[1] = 7
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert counts[1] == 7


def test_may_accept_only_when_no_serving_worker_holds_fewer():
    counts = ConnectionCounts(3)
    counts[0], counts[1], counts[2] = 2, 2, NOT_SERVING
    assert counts.may_accept(0, 2)          # a tie: either may take it
    assert not counts.may_accept(0, 3)      # worker 1 holds fewer
    counts.retire(1)
    assert counts[1] == NOT_SERVING and counts.may_accept(0, 9)  # nobody else serves
    counts[2] = 0
    assert not counts.may_accept(0, 1) and counts.may_accept(2, 0)


def test_readable_publishes_the_connections_held():
    counts = ConnectionCounts(2)
    listener, _ = balanced(counts, index=1)
    listener.active_channels.update({5: object(), 6: object()})
    assert listener.readable() is True
    assert counts[1] == 2
    del listener.active_channels[5]
    listener.readable()
    assert counts[1] == 1


def test_least_loaded_worker_accepts_and_publishes_at_once():
    counts = ConnectionCounts(2)
    counts[1] = 1
    listener, clock = balanced(counts)
    listener.handle_accept()
    assert listener.accepted == 1 and counts[0] == 1 and clock.pauses == []
    listener.handle_accept()  # 1 against 1: still among the least loaded
    assert listener.accepted == 2 and counts[0] == 2


def busier_by_one() -> tuple[ConnectionCounts, FakeListener, FakeClock]:
    """Worker 0 holds one connection, worker 1 none."""
    counts = ConnectionCounts(2)
    counts[1] = 0
    listener, clock = balanced(counts)
    listener.active_channels[1] = object()
    return counts, listener, clock


def test_busier_worker_leaves_the_connection_then_takes_it_after_the_grace():
    counts, listener, clock = busier_by_one()
    for _ in range(3):
        listener.handle_accept()
    assert listener.accepted == 0 and clock.pauses == [PAUSE_S] * 3
    # The other worker never takes it (stopped, or its slot is stale): the loop keeps finding it queued.
    while listener.accepted == 0:
        listener.handle_accept()
        assert len(clock.pauses) < 2 * GRACE_S / PAUSE_S
    assert clock.now - 1000.0 >= GRACE_S and counts[0] == 2


def test_a_new_run_of_declines_gets_a_new_grace():
    _, listener, clock = busier_by_one()
    listener.handle_accept()
    clock.now += 10 * GRACE_S  # the other worker took that connection; much later, another arrives
    listener.handle_accept()
    assert listener.accepted == 0 and len(clock.pauses) == 2


def test_declining_stops_once_the_other_worker_holds_as_many():
    counts, listener, clock = busier_by_one()
    listener.handle_accept()
    counts[1] = 1  # the other worker accepted one
    listener.handle_accept()
    assert listener.accepted == 1 and len(clock.pauses) == 1
