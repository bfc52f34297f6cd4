"""launch/rvm.launch.py, config/rvm.yaml and the launcher that works without ros2 launch."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rvm_ros.launch_args import LAUNCH_ARGUMENTS, node_config, ros_args
from rvm_ros.parameters import PARAMETERS, node_parameters, parameter_file_values

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lifecycle_calls import change_state, get_state  # noqa: E402
from rvm_test_models import tiny_onnx  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
LAUNCH = REPO / "launch" / "rvm.launch.py"
HAS_LAUNCH_ROS = importlib.util.find_spec("launch_ros") is not None


def test_params_file_matches_the_parameter_table():
    """config/rvm.yaml, read by rclpy's parameter-file parser: the table's keys and defaults."""
    values = parameter_file_values(REPO / "config" / "rvm.yaml")
    assert set(values) == set(PARAMETERS)
    for name, value in values.items():
        default = PARAMETERS[name].default
        assert type(value) is type(default), name  # rclpy rejects a type change
        assert value == default, f"{name}: yaml {value!r} != declared default {default!r}"


def test_node_parameters_yaml_over_declared_defaults(tmp_path):
    """bag-eval reads a params file as the node would: YAML values over defaults."""
    path = tmp_path / "p.yaml"
    path.write_text(
        "/**/rvm_node:\n  ros__parameters:\n    warmup_steps: 0\n    tracks: {max: 7}\n"
        "    qos_overrides: {/cam: {subscription: {depth: 5}}}\n"
    )
    params = node_parameters(path)
    assert params["warmup_steps"] == 0 and params["tracks.max"] == 7
    assert params["feature_dtype"] == PARAMETERS["feature_dtype"].default  # not in the file
    assert set(params) == set(PARAMETERS)
    path.write_text("rvm_node:\n  ros__parameters:\n    tracks.grid: [2, 3]\n")
    assert node_parameters(path)["tracks.grid"] == [2, 3]
    path.write_text("/**:\n  ros__parameters:\n    device: cpu\n")
    assert node_parameters(path)["device"] == "cpu"


@pytest.mark.parametrize(
    "text, says",
    [
        ("/**/rvm_node:\n  ros__parameters:\n    threads: [1\n", "not valid YAML at line"),
        ("- just\n- a list\n", "not a ROS parameter file for rvm_node"),
        ("other_node:\n  ros__parameters:\n    threads: 2\n", "not a ROS parameter file"),
        ("/**/rvm_node:\n  threads: 2\n", "not a ROS parameter file"),
        ("/**/rvm_node:\n  ros__parameters:\n    treads: 2\n", "unknown parameter 'treads'"),
        (
            "/**/rvm_node:\n  ros__parameters:\n    max_gap_sec: 1\n",
            "must be of type double, got 1",
        ),
        ("/**/rvm_node:\n  ros__parameters:\n    device: gpu\n", "device='gpu': choose from"),
        ("/**/rvm_node:\n  ros__parameters:\n    threads: -2\n", "threads=-2 is outside [0,"),
        ("", "not a ROS parameter file"),
    ],
)
def test_bad_parameter_file_is_one_line_error(tmp_path, text, says):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        node_parameters(path)
    message = str(info.value)
    assert says in message and message.startswith(f"{path}: ") and "\n" not in message, message


def test_missing_parameter_file_is_one_line_error(tmp_path):
    with pytest.raises(ValueError, match=r"nope.yaml: no such file$"):
        node_parameters(tmp_path / "nope.yaml")


def test_launch_arguments_for_node_parameters_come_from_the_table():
    """Description, choices and default of each node-parameter launch argument: the table's."""
    device = LAUNCH_ARGUMENTS["device"]
    assert device.choices == ("", *PARAMETERS["device"].choices) and device.default == ""
    assert device.description.startswith(PARAMETERS["device"].description)
    assert LAUNCH_ARGUMENTS["model_path"].description.startswith(
        PARAMETERS["model_path"].description
    )
    autostart = LAUNCH_ARGUMENTS["autostart"]
    assert autostart.default == "true" and PARAMETERS["autostart"].default is True
    assert autostart.description == PARAMETERS["autostart"].description
    for arg in LAUNCH_ARGUMENTS.values():  # ros2 launch refuses a default outside its choices
        assert not arg.choices or arg.default in arg.choices
    assert node_config({"device": "cuda"})["parameters"]["device"] == "cuda"
    with pytest.raises(ValueError, match=r"^device:='gpu': choose from '', 'auto', 'cpu'"):
        node_config({"device": "gpu"})


def test_launch_local_refuses_bad_arguments_with_one_line():
    for args, says in (
        (["device:=gpu"], "device:='gpu': choose from"),
        (["nonsense"], "'nonsense' is not key:=value"),
        (["colour:=red"], "unknown argument 'colour'"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "rvm_ros.launch_local", "--print", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode != 0 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith("launch_local: error: ") and says in proc.stderr


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
    declare_kwargs = {
        kw.arg
        for call in ast.walk(tree)
        if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "DeclareLaunchArgument"
        for kw in call.keywords
    }
    assert {"default_value", "description", "choices"} <= declare_kwargs
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
