"""Launch arguments shared by ``launch/rvm.launch.py`` and ``python -m rvm_ros.launch_local``.

One source of truth: the launch file declares exactly these arguments with these defaults and
choices, and the local launcher (for machines without ``ros2 launch``) turns the same values into
``--ros-args`` for ``rvm_node``. The arguments that set node parameters take their description,
choices and default from the node's parameter table (``rvm_ros.parameters``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from rvm_ros.parameters import NODE_NAME, PARAMETERS

PACKAGE = "rvm_ros"
EXECUTABLE = "rvm_node"
# Remapped by the image_topic argument: the node subscribes to the relative topic "image".
IMAGE_TOPIC_PARAM_DEFAULT = "image"


def default_params_file() -> str:
    """config/rvm.yaml from the installed share directory, else from this source checkout."""
    from rvm_ros.dds import share_file

    return share_file("config/rvm.yaml")


def default_model_path() -> str:
    """The shipped default model: $RVM_MODEL, else rvm_ros/data/rvm_default.onnx."""
    env = os.environ.get("RVM_MODEL")
    if env:
        return env
    return str(Path(__file__).resolve().parent / "data" / "rvm_default.onnx")


class LaunchArgument(NamedTuple):
    """One launch argument: default and choices are strings, as launch arguments are."""

    default: str
    description: str
    choices: tuple[str, ...] = ()  # empty: any value


def _ros_text(value: object) -> str:
    """A parameter value as a launch argument string (``true``, not ``True``)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _node_parameter(name: str, from_params_file: bool) -> LaunchArgument:
    """The launch argument setting node parameter ``name``, from the parameter table.

    ``from_params_file``: empty (the default) keeps the params file's value; else the argument
    defaults to the parameter's declared default and always sets it.
    """
    p = PARAMETERS[name]
    if from_params_file:
        choices = ("", *p.choices) if p.choices else ()
        return LaunchArgument("", f"{p.description} (empty: the value in params_file)", choices)
    return LaunchArgument(_ros_text(p.default), p.description, p.choices)


LAUNCH_ARGUMENTS: dict[str, LaunchArgument] = {
    "params_file": LaunchArgument(
        "", "parameter YAML for rvm_node (empty: the package's config/rvm.yaml)"
    ),
    "image_topic": LaunchArgument(
        "/camera/image_raw", "camera topic the node's 'image' input is remapped to"
    ),
    "namespace": LaunchArgument("", "namespace of the node (and of its relative topics)"),
    "use_sim_time": LaunchArgument("false", "use /clock (bag replay with --clock)"),
    "model_path": _node_parameter("model_path", from_params_file=True),
    "device": _node_parameter("device", from_params_file=True),
    "log_level": LaunchArgument("info", "ROS log level of the node"),
    "autostart": _node_parameter("autostart", from_params_file=False),
    "dds_profile": LaunchArgument(
        "",
        "Fast DDS XML profile for the node (empty: the package's config/fastdds.xml unless the "
        "environment sets one; none: Fast DDS defaults; large_data: Fast DDS's LARGE_DATA)",
    ),
}


def _flag(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0"):
        raise ValueError(f"{name} must be true or false, got {text!r}")
    return value in ("true", "1")


def dds_env(profile: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Environment variables the node needs on top of ``environ`` for launch argument
    ``dds_profile`` (launch's ``additional_env`` can only add)."""
    from rvm_ros.dds import dds_env as child_env

    base = dict(os.environ if environ is None else environ)
    return {k: v for k, v in child_env(profile, base).items() if base.get(k) != v}


def node_config(values: dict[str, str]) -> dict:
    """Launch argument values (strings) -> how to start the node (used by both launchers).

    ``model_path``/``device`` override the params file only when non-empty.
    """
    v = {name: arg.default for name, arg in LAUNCH_ARGUMENTS.items()}
    v.update({k: val for k, val in values.items() if val is not None})
    unknown = sorted(set(values) - set(LAUNCH_ARGUMENTS))
    if unknown:
        raise ValueError(f"unknown launch arguments: {', '.join(unknown)}")
    for name, arg in LAUNCH_ARGUMENTS.items():
        if arg.choices and v[name] not in arg.choices:
            allowed = ", ".join(map(repr, arg.choices))
            raise ValueError(f"{name}:={v[name]!r}: choose from {allowed}")
    parameters: dict[str, object] = {
        "use_sim_time": _flag("use_sim_time", v["use_sim_time"]),
        "autostart": _flag("autostart", v["autostart"]),
    }
    for key in ("model_path", "device"):  # empty: the params file's value
        if v[key]:
            parameters[key] = v[key]
    return {
        "package": PACKAGE,
        "executable": EXECUTABLE,
        "name": NODE_NAME,
        "namespace": v["namespace"],
        "params_file": v["params_file"] or default_params_file(),
        "parameters": parameters,
        "remappings": [(IMAGE_TOPIC_PARAM_DEFAULT, v["image_topic"])],
        "log_level": v["log_level"],
        "env": dds_env(v["dds_profile"]),
    }


def ros_args(cfg: dict) -> list[str]:
    """node_config(...) -> ``--ros-args ...`` for ``rvm_node`` (what launch_ros would pass)."""
    out = ["--ros-args", "-r", f"__node:={cfg['name']}"]
    if cfg["namespace"]:
        out += ["-r", f"__ns:=/{cfg['namespace'].strip('/')}"]
    out += ["--params-file", cfg["params_file"]]
    for key, value in cfg["parameters"].items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        out += ["-p", f"{key}:={text}"]
    for src, dst in cfg["remappings"]:
        out += ["-r", f"{src}:={dst}"]
    out += ["--log-level", cfg["log_level"]]
    return out
