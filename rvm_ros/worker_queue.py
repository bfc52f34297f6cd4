"""Calls handed to the one thread that owns some state (a camera's tracker and mask).

Services run on the ROS executor while the camera worker owns the tracking state. A service
``call``s a function: while a worker is attached it is queued, the worker runs it between frames
and the caller waits on its future; with no worker (node inactive, an offline replay) it runs in
the calling thread, one call at a time, and a worker attaching meanwhile waits for it. Either
way one thread at a time touches the state, and the lock guards the queue and the ownership
flags only, never a call.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any


class WorkerQueue:
    """FIFO of calls for the owning worker; ``call`` from any thread, the rest from the owner."""

    def __init__(self, wake: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._free = threading.Condition(self._lock)  # notified when a direct call ends
        self._calls: deque[tuple[Callable[[], Any], Future]] = deque()
        self._owner: int | None = None  # thread id of the attached worker
        self._direct = False  # a call runs in its caller's thread (no worker)
        self._wake = wake or (lambda: None)

    def attach(self) -> None:
        """The calling thread becomes the owner (after a running direct call finishes)."""
        with self._lock:
            while self._direct:
                self._free.wait()
            self._owner = threading.get_ident()

    def detach(self) -> None:
        """Stop owning; calls queued meanwhile run here now, so no caller is left waiting."""
        with self._lock:
            self._owner = None
            self._direct = True  # new callers wait until these have run
            calls = self._take_all()
        try:
            self._run(calls)
        finally:
            self._end_direct()

    def run_pending(self) -> None:
        """Owner: run the queued calls in arrival order, answering each caller's future."""
        with self._lock:
            calls = self._take_all()
        self._run(calls)

    def call(self, fn: Callable[[], Any], timeout: float) -> Any:
        """``fn()`` on the owner (waiting up to ``timeout`` s for it to start), or here when no
        worker is attached. Raises TimeoutError if the worker did not take it in time (then it
        never runs), else whatever ``fn`` raises."""
        if self._owner == threading.get_ident():  # the owner itself: nothing to hand over
            return fn()
        future: Future = Future()
        with self._lock:
            while self._direct:
                self._free.wait()
            direct = self._direct = self._owner is None
            if not direct:
                self._calls.append((fn, future))
        if direct:
            try:
                return fn()
            finally:
                self._end_direct()
        self._wake()
        try:
            return future.result(timeout)
        except FutureTimeout:
            if future.cancel():
                msg = f"the camera worker did not take the request within {timeout:g} s"
                raise TimeoutError(msg) from None
            return future.result()  # it started just now: its effect is applied, so answer it

    def _take_all(self) -> list[tuple[Callable[[], Any], Future]]:
        calls = list(self._calls)
        self._calls.clear()
        return calls

    def _end_direct(self) -> None:
        with self._lock:
            self._direct = False
            self._free.notify_all()

    @staticmethod
    def _run(calls: list[tuple[Callable[[], Any], Future]]) -> None:
        for fn, future in calls:
            if not future.set_running_or_notify_cancel():  # its caller gave up
                continue
            try:
                future.set_result(fn())
            except Exception as exc:  # the caller gets it; the owner carries on
                future.set_exception(exc)
