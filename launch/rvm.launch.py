"""Launch rvm_node: ``ros2 launch rvm_ros rvm.launch.py image_topic:=/camera/image_raw``.

A managed (lifecycle) node. ``autostart:=true`` (default): it configures and activates itself.
``autostart:=false``: it stays unconfigured for a lifecycle manager (nav2_lifecycle_manager,
``ros2 lifecycle set /rvm_node configure`` then ``activate``).

Arguments, defaults and choices come from ``rvm_ros.launch_args`` (those that set node
parameters from the node's parameter table), shared with ``python -m rvm_ros.launch_local``
which starts the same node where ``ros2 launch`` is missing.
The node gets the package's Fast DDS profile (config/fastdds.xml, shared memory for raw frames)
unless the environment already configures Fast DDS (launch argument ``dds_profile``).
"""

from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

from rvm_ros.launch_args import LAUNCH_ARGUMENTS, default_params_file, node_config


def _node(context: LaunchContext) -> list[LifecycleNode]:
    values = {name: LaunchConfiguration(name).perform(context) for name in LAUNCH_ARGUMENTS}
    cfg = node_config(values)  # the same translation launch_local uses
    return [
        LifecycleNode(
            package=cfg["package"],
            executable=cfg["executable"],
            name=cfg["name"],
            namespace=cfg["namespace"],
            parameters=[cfg["params_file"], cfg["parameters"]],
            remappings=cfg["remappings"],
            arguments=["--ros-args", "--log-level", cfg["log_level"]],
            additional_env=cfg["env"],
            output="screen",
            emulate_tty=True,
        )
    ]


def generate_launch_description() -> LaunchDescription:
    """One lifecycle rvm_node: params file, image remapping, namespace, sim time, autostart."""
    args = [
        DeclareLaunchArgument(
            name,
            default_value=default_params_file() if name == "params_file" else arg.default,
            description=arg.description,
            choices=list(arg.choices) or None,
        )
        for name, arg in LAUNCH_ARGUMENTS.items()
    ]
    return LaunchDescription([*args, OpaqueFunction(function=_node)])
