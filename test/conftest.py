"""Shared pytest fixtures.

ROS 2 fixtures (usable by any node test):

* ``ros_domain_id``: the ROS_DOMAIN_ID of this test run, unique per run (derived from the pid)
  so concurrent runs on one machine do not see each other's topics. Discovery is also limited to
  this host.
* ``rclpy_context``: an rclpy Context initialised for one test and shut down after it.
* ``make_node``: ``make_node(name, **kwargs)`` creates a node in that context; destroyed after.
* ``executor``: a SingleThreadedExecutor bound to that context (nodes made by ``make_node`` are
  added to it).
* ``spin_until``: ``spin_until(predicate, timeout_sec=10.0, step=None)`` spins the executor until
  ``predicate()`` is true, calling ``step()`` (e.g. publish again) between spins; returns the
  final value of ``predicate()``.

rclpy is imported lazily, so tests that do not use these fixtures run without ROS installed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

# Unique per run unless set explicitly; valid Fast DDS domains on Linux are 0..101 and 215..232.
_DOMAIN_ID = int(os.environ.get("RVM_TEST_ROS_DOMAIN_ID", 1 + os.getpid() % 100))
os.environ["ROS_DOMAIN_ID"] = str(_DOMAIN_ID)
# Keep DDS discovery on this machine (Jazzy and newer; ROS_LOCALHOST_ONLY for Humble).
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


@pytest.fixture(scope="session")
def ros_domain_id() -> int:
    return _DOMAIN_ID


@pytest.fixture
def rclpy_context(ros_domain_id: int) -> Iterator[Any]:
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context, domain_id=ros_domain_id)
    try:
        yield context
    finally:
        context.try_shutdown()


@pytest.fixture
def executor(rclpy_context: Any) -> Iterator[Any]:
    from rclpy.executors import SingleThreadedExecutor

    ex = SingleThreadedExecutor(context=rclpy_context)
    try:
        yield ex
    finally:
        ex.shutdown(timeout_sec=1.0)


@pytest.fixture
def make_node(rclpy_context: Any, executor: Any) -> Iterator[Callable[..., Any]]:
    import rclpy

    nodes: list[Any] = []

    def _make(name: str, **kwargs: Any) -> Any:
        node = rclpy.create_node(name, context=rclpy_context, **kwargs)
        nodes.append(node)
        executor.add_node(node)
        return node

    try:
        yield _make
    finally:
        for node in reversed(nodes):
            executor.remove_node(node)
            node.destroy_node()


@pytest.fixture
def spin_until(executor: Any) -> Callable[..., bool]:
    def _spin_until(
        predicate: Callable[[], bool],
        timeout_sec: float = 10.0,
        step: Callable[[], None] | None = None,
    ) -> bool:
        deadline = time.monotonic() + timeout_sec
        while not predicate():
            if time.monotonic() > deadline:
                return bool(predicate())
            if step is not None:
                step()
            executor.spin_once(timeout_sec=0.05)
        return True

    return _spin_until
