"""Start rvm_node like ``launch/rvm.launch.py`` does, without ``ros2 launch`` (not available here).

    python -m rvm_ros.launch_local image_topic:=/camera/image_raw namespace:=front
    python -m rvm_ros.launch_local --print   # show the command instead of running it

Takes the launch file's ``name:=value`` arguments (same names and defaults, from
``rvm_ros.launch_args``) and runs ``rvm_node --ros-args ...`` in this process, with the same
environment (the Fast DDS profile). ``autostart:=false`` leaves the lifecycle node unconfigured
for a lifecycle manager (``ros2 lifecycle set /rvm_node configure``, then ``activate``).
"""

from __future__ import annotations

import shlex
import sys

from rvm_core.config import parse_key_values
from rvm_ros.launch_args import LAUNCH_ARGUMENTS, node_config, ros_args


def parse(argv: list[str]) -> dict[str, str]:
    """``name:=value`` items -> dict (unknown names are an error, as in ros2 launch)."""
    try:
        values = parse_key_values(argv, sep=":=", typed=False)
    except ValueError as exc:
        raise SystemExit(f"launch_local: error: {exc}") from None
    unknown = [name for name in values if name not in LAUNCH_ARGUMENTS]
    if unknown:
        known = ", ".join(LAUNCH_ARGUMENTS)
        raise SystemExit(f"launch_local: error: unknown argument {unknown[0]!r}; known: {known}")
    return values


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    show = "--print" in argv
    try:
        cfg = node_config(parse([a for a in argv if a != "--print"]))
    except ValueError as exc:  # a value outside an argument's choices
        raise SystemExit(f"launch_local: error: {exc}") from None
    args = ros_args(cfg)
    if show:
        env = [f"{k}={v}" for k, v in cfg["env"].items()]
        print(shlex.join([*env, "rvm_node", *args]))
        return 0
    import os

    os.environ.update(cfg["env"])  # before rclpy.init: the DDS participant reads it
    from rvm_ros.node import main as node_main

    return node_main(["rvm_node", *args])


if __name__ == "__main__":
    sys.exit(main())
