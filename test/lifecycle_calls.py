"""Client calls of a managed node's lifecycle services (``get_state``, ``change_state``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _service(node_name: str, service: str) -> str:
    return f"{'' if node_name.startswith('/') else '/'}{node_name}/{service}"


def get_state(client: Any, spin_until: Callable[..., bool], node_name: str) -> str:
    """The lifecycle state label ("unconfigured", "inactive", "active", ...) of ``node_name``."""
    from lifecycle_msgs.srv import GetState

    cli = client.create_client(GetState, _service(node_name, "get_state"))
    assert spin_until(cli.service_is_ready, timeout_sec=10.0)
    fut = cli.call_async(GetState.Request())
    assert spin_until(fut.done, timeout_sec=10.0)
    return fut.result().current_state.label


def change_state(
    client: Any, spin_until: Callable[..., bool], node_name: str, transition: int
) -> bool:
    """Ask ``node_name`` for a transition (a ``lifecycle_msgs/Transition`` id) -> success."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState

    cli = client.create_client(ChangeState, _service(node_name, "change_state"))
    assert spin_until(cli.service_is_ready, timeout_sec=10.0)
    fut = cli.call_async(ChangeState.Request(transition=Transition(id=transition)))
    assert spin_until(fut.done, timeout_sec=30.0)
    return fut.result().success
