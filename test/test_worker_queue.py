"""WorkerQueue: calls run on the attached owner thread, in the caller's without one."""

from __future__ import annotations

import threading

import pytest

from rvm_ros.worker_queue import WorkerQueue


def _owner(stop: threading.Event) -> tuple[WorkerQueue, threading.Thread]:
    """A queue and a thread that attaches, serves it until ``stop``, then detaches."""
    attached = threading.Event()
    wake = threading.Event()
    queue = WorkerQueue(wake.set)

    def run() -> None:
        queue.attach()
        attached.set()
        while not stop.is_set():
            wake.wait(0.05)
            wake.clear()
            queue.run_pending()
        queue.detach()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert attached.wait(10.0)
    return queue, thread


def test_without_owner_the_caller_runs_it() -> None:
    queue = WorkerQueue()
    assert queue.call(threading.get_ident, timeout=1.0) == threading.get_ident()


def test_owner_runs_calls_in_order_and_returns_results_and_errors() -> None:
    stop = threading.Event()
    queue, owner = _owner(stop)
    seen: list[int] = []

    def record(i: int) -> int:
        seen.append(i)
        return threading.get_ident()

    assert {queue.call(lambda i=i: record(i), timeout=10.0) for i in range(5)} == {owner.ident}
    assert seen == list(range(5))
    with pytest.raises(ZeroDivisionError):
        queue.call(lambda: 1 / 0, timeout=10.0)
    stop.set()
    owner.join(10.0)
    assert queue.call(threading.get_ident, timeout=1.0) == threading.get_ident()


def test_owner_that_does_not_serve_times_out_and_the_call_never_runs() -> None:
    queue, ran = WorkerQueue(), []
    attached, release = threading.Event(), threading.Event()

    def idle_owner() -> None:  # owns the queue but serves only after the caller gave up
        queue.attach()
        attached.set()
        release.wait(10.0)
        queue.run_pending()
        queue.detach()

    owner = threading.Thread(target=idle_owner, daemon=True)
    owner.start()
    assert attached.wait(10.0)
    with pytest.raises(TimeoutError, match="did not take the request within 0.05 s"):
        queue.call(lambda: ran.append(1), timeout=0.05)
    release.set()
    owner.join(10.0)
    assert ran == []


def test_detach_runs_what_was_queued() -> None:
    queued, results = threading.Event(), []
    queue = WorkerQueue(queued.set)  # called once a call is queued
    queue.attach()
    caller = threading.Thread(target=lambda: results.append(queue.call(lambda: 7, 10.0)))
    caller.start()
    assert queued.wait(10.0)
    queue.detach()
    caller.join(10.0)
    assert results == [7]
