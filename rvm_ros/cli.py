"""The ``rvm-ros`` command line: the ROS side's jobs (``demo``, ``bag-eval``, ``make-bag``).

They use the node's own pipeline and messages, plus the PyTorch side where a job needs it
(decoding a video file for ``make-bag``, a random-weight export when no model is shipped), which
is why they live here and not in ``rvm`` (:mod:`rvm_core.cli`, which never imports this package).
"""

from __future__ import annotations

import sys

from rvm_core.cli import Run, Setup, build_parser, run_command
from rvm_ros.bag_eval import bag_eval_args, cmd_bag_eval, cmd_make_bag, make_bag_args
from rvm_ros.demo import cmd_demo, demo_args

# name -> (help, declare arguments, run)
COMMANDS: dict[str, tuple[str, Setup, Run]] = {
    "demo": ("run rvm_node on the bundled clip: record, draw, summarise", demo_args, cmd_demo),
    "bag-eval": (
        "replay a rosbag2 through the node's pipeline (+TAP-Vid)",
        bag_eval_args,
        cmd_bag_eval,
    ),
    "make-bag": ("write a video as a sensor_msgs/Image rosbag2", make_bag_args, cmd_make_bag),
}


def main(argv: list[str] | None = None) -> int:
    """Run the ``rvm-ros`` command; expected failures print one line and exit with status 1."""
    return run_command(build_parser(COMMANDS, "rvm-ros", __doc__), argv)


if __name__ == "__main__":
    sys.exit(main())
