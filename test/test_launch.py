"""launch/rvm.launch.py, config/rvm.yaml and the launcher that works without ros2 launch."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rvm_ros.bag_eval import flatten_parameters, node_parameters
from rvm_ros.launch_args import LAUNCH_ARGUMENTS, node_config, ros_args
from rvm_ros.node import PARAMETERS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lifecycle_calls import change_state, get_state  # noqa: E402
from rvm_test_models import tiny_onnx  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
LAUNCH = REPO / "launch" / "rvm.launch.py"
HAS_LAUNCH_ROS = importlib.util.find_spec("launch_ros") is not None


def test_params_file_matches_declared_parameters():
    doc = yaml.safe_load((REPO / "config" / "rvm.yaml").read_text())
    (key,) = doc
    assert key.endswith("rvm_node")
    params = flatten_parameters(doc[key]["ros__parameters"])
    assert set(params) == set(PARAMETERS)
    for name, value in params.items():
        default = PARAMETERS[name][0]
        assert type(value) is type(default), name  # rclpy rejects a type change
        assert value == default, f"{name}: yaml {value!r} != declared default {default!r}"


def test_node_parameters_yaml_over_declared_defaults(tmp_path):
    """bag-eval and the demo read a params file as the node would: YAML values over defaults."""
    path = tmp_path / "p.yaml"
    path.write_text(
        "/**/rvm_node:\n  ros__parameters:\n    warmup_steps: 0\n    tracks: {max: 7}\n"
    )
    params = node_parameters(path)
    assert params["warmup_steps"] == 0 and params["tracks.max"] == 7
    assert params["feature_dtype"] == PARAMETERS["feature_dtype"][0]  # not in the file: default
    assert set(params) == set(PARAMETERS)


@pytest.mark.skipif(HAS_LAUNCH_ROS, reason="launch_ros present: test_launch_description runs")
def test_launch_file_static():
    """launch_ros is not installable here: check the launch file's structure statically."""
    tree = ast.parse(LAUNCH.read_text())
    imports = {
        (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert ("launch_ros.actions", "LifecycleNode") in imports
    assert ("launch.actions", "DeclareLaunchArgument") in imports
    assert ("rvm_ros.launch_args", "LAUNCH_ARGUMENTS") in imports
    assert ("rvm_ros.launch_args", "node_config") in imports
    funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in funcs
    node_kwargs = {
        kw.arg
        for call in ast.walk(tree)
        if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "LifecycleNode"
        for kw in call.keywords
    }
    assert {"package", "executable", "name", "namespace", "parameters", "remappings"} <= node_kwargs
    assert "additional_env" in node_kwargs  # the DDS profile
    assert {"params_file", "image_topic", "namespace", "use_sim_time", "autostart"} <= set(
        LAUNCH_ARGUMENTS
    )


@pytest.mark.skipif(not HAS_LAUNCH_ROS, reason="launch_ros is not installable on this machine")
def test_launch_description():  # pragma: no cover - runs where ROS 2 is installed
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    spec = importlib.util.spec_from_file_location("rvm_launch", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ld = module.generate_launch_description()
    declared = {e.name for e in ld.entities if isinstance(e, DeclareLaunchArgument)}
    assert declared == set(LAUNCH_ARGUMENTS)
    ctx = LaunchContext()
    for e in ld.entities:
        if isinstance(e, DeclareLaunchArgument):
            e.visit(ctx)
    (fn,) = [e for e in ld.entities if isinstance(e, OpaqueFunction)]
    (node,) = fn.execute(ctx)
    assert node.node_package == "rvm_ros" and node.node_executable == "rvm_node"


def test_node_config_and_ros_args():
    cfg = node_config({"image_topic": "/front/image_raw", "namespace": "front", "model_path": "m"})
    assert cfg["remappings"] == [("image", "/front/image_raw")]
    assert cfg["parameters"] == {"use_sim_time": False, "autostart": True, "model_path": "m"}
    args = ros_args(cfg)
    assert args[:3] == ["--ros-args", "-r", "__node:=rvm_node"]
    assert "__ns:=/front" in args and "image:=/front/image_raw" in args
    assert args[args.index("--params-file") + 1].endswith("config/rvm.yaml")
    with pytest.raises(ValueError):
        node_config({"use_sim_time": "maybe"})
    with pytest.raises(ValueError):
        node_config({"no_such_argument": "1"})
    with pytest.raises(ValueError):
        node_config({"autostart": "later"})
    assert node_config({"autostart": "false"})["parameters"]["autostart"] is False
    assert node_config({"dds_profile": "none"})["env"] == {"FASTDDS_BUILTIN_TRANSPORTS": "DEFAULT"}
    assert node_config({"dds_profile": "/x.xml"})["env"] == {
        "FASTDDS_DEFAULT_PROFILES_FILE": "/x.xml"
    }


def test_dds_env_respects_the_users_fast_dds_setup():
    from rvm_ros.launch_args import dds_env

    mine = dds_env("", {})
    assert mine["FASTDDS_DEFAULT_PROFILES_FILE"].endswith("config/fastdds.xml")
    assert Path(mine["FASTDDS_DEFAULT_PROFILES_FILE"]).is_file()
    assert dds_env("", {"FASTDDS_DEFAULT_PROFILES_FILE": "/theirs.xml"}) == {}
    assert dds_env("", {"FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA"}) == {}
    assert dds_env("", {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}) == {}


def _stop(proc: subprocess.Popen) -> None:
    """End a launched node: SIGTERM, then SIGKILL after 10 s."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_launch_local_starts_the_node(make_node, spin_until):
    """launch_local with the launch arguments: namespace, remapping, params file, sim time."""
    model = tiny_onnx((64, 64))
    cmd = [sys.executable, "-m", "rvm_ros.launch_local"]
    cmd += ["image_topic:=/lt/camera/image_raw", "namespace:=lt", f"model_path:={model}"]
    cmd += ["use_sim_time:=true"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        probe = make_node("rvm_launch_probe")
        want = {"/lt/camera/image_raw/rvm/features", "/lt/camera/image_raw/rvm/tracks"}
        want |= {"/lt/rvm_node/stats"}

        def ready() -> bool:
            return want <= {name for name, _ in probe.get_topic_names_and_types()}

        assert spin_until(ready, timeout_sec=30.0), "node topics did not appear"
        from rcl_interfaces.srv import GetParameters

        cli = probe.create_client(GetParameters, "/lt/rvm_node/get_parameters")
        assert spin_until(cli.service_is_ready, timeout_sec=10.0)
        names = ["use_sim_time", "tracks.grid", "image_topics", "autostart", "model_path"]
        fut = cli.call_async(GetParameters.Request(names=names))
        assert spin_until(fut.done, timeout_sec=10.0)
        v = fut.result().values
        assert v[0].bool_value is True
        assert list(v[1].integer_array_value) == [8, 8]  # from config/rvm.yaml
        assert list(v[2].string_array_value) == ["image"]
        assert v[3].bool_value is True
        assert v[4].string_value == str(model)
        assert get_state(probe, spin_until, "/lt/rvm_node") == "active"
    finally:
        _stop(proc)
    time.sleep(0.1)


def test_launch_local_without_autostart_waits_for_lifecycle(make_node, spin_until):
    """autostart:=false: unconfigured until a lifecycle manager configures and activates it."""
    from lifecycle_msgs.msg import Transition

    model = tiny_onnx((64, 64))
    cmd = [sys.executable, "-m", "rvm_ros.launch_local", "image_topic:=/la/image"]
    cmd += ["namespace:=la", f"model_path:={model}", "autostart:=false"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        probe = make_node("rvm_launch_probe")
        assert get_state(probe, spin_until, "/la/rvm_node") == "unconfigured"
        assert probe.count_publishers("/la/image/rvm/features") == 0
        for t in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
            assert change_state(probe, spin_until, "/la/rvm_node", t)
        assert get_state(probe, spin_until, "/la/rvm_node") == "active"
        assert spin_until(lambda: probe.count_publishers("/la/image/rvm/features") == 1, 10.0)
    finally:
        _stop(proc)


def test_one_dds_env_for_children_and_this_process(monkeypatch):
    """dds_env gives a child's environment for every choice; use_rvm_dds_profile applies it."""
    import os

    from rvm_ros.dds import dds_env, dds_profile_path, share_file, use_rvm_dds_profile
    from rvm_ros.launch_args import default_params_file

    assert Path(share_file("config/fastdds.xml")) == Path(dds_profile_path())
    assert Path(default_params_file()) == Path(share_file("config/rvm.yaml"))
    assert Path(default_params_file()).is_file()
    theirs = {"FASTDDS_DEFAULT_PROFILES_FILE": "/theirs.xml", "PATH": "/bin"}
    assert dds_env("", theirs) == theirs  # the user's choice wins over the automatic one
    forced = dds_env("rvm", theirs)  # an explicit choice replaces it
    assert forced == {"FASTDDS_DEFAULT_PROFILES_FILE": dds_profile_path(), "PATH": "/bin"}
    assert dds_env("large_data", theirs) == {
        "FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA",
        "PATH": "/bin",
    }
    assert dds_env("none", theirs)["FASTDDS_BUILTIN_TRANSPORTS"] == "DEFAULT"
    # Set through monkeypatch, which puts all three back as they were after the test.
    monkeypatch.setenv("FASTDDS_DEFAULT_PROFILES_FILE", "/before.xml")
    monkeypatch.setenv("FASTRTPS_DEFAULT_PROFILES_FILE", "/before.xml")
    monkeypatch.setenv("FASTDDS_BUILTIN_TRANSPORTS", "SHM")
    assert use_rvm_dds_profile("/x.xml") == "/x.xml"
    assert os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] == "/x.xml"
    assert "FASTDDS_BUILTIN_TRANSPORTS" not in os.environ
    assert "FASTRTPS_DEFAULT_PROFILES_FILE" not in os.environ
    assert node_config({"dds_profile": "large_data"})["env"] == {
        "FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA"
    }
