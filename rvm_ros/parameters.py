"""``rvm_node``'s parameters: one table, and everything built from it.

Each entry gives a parameter's ROS name, default (which fixes its ROS type), description, range
or choices, and whether it is read only at start. From the table the node declares its
parameters (with ``ParameterDescriptor`` ranges and choices) and checks every value it is
given, :class:`rvm_ros.camera.PipelineConfig` takes its defaults, ``rvm_ros.launch_args`` makes
the launch arguments that set node parameters, parameter files are read (``rvm-ros bag-eval``), and
a test holds ``config/rvm.yaml`` to the same keys and defaults.

Startup-only parameters are read once when the node is constructed (the diagnostics timer runs
in every lifecycle state), so they are declared read-only: a later set would silently do
nothing. The others are read on each ``configure``: a change applies from the next configure.

No rclpy at import: the camera pipeline and the launch file use the table without a ROS node.
"""

from __future__ import annotations

import array
import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rvm_core.readout.tracker import METHODS, TrackerConfig
from rvm_ros.image_codec import DEFAULT_MAX_PIXELS
from rvm_ros.masks import MASK_METHODS

NODE_NAME = "rvm_node"

# Parameters of ROS itself that a node's parameter file may set besides the table's.
_ROS_NAMES = ("use_sim_time",)
_ROS_PREFIXES = ("qos_overrides.",)

_TYPE_NAMES = {bool: "bool", int: "integer", float: "double", str: "string"}


@dataclass(frozen=True)
class NodeParameter:
    """One node parameter: ROS name, default (it fixes the type), meaning and limits."""

    name: str
    default: Any
    description: str
    range: tuple[float, float] | None = None  # inclusive; per element for an array
    choices: tuple[str, ...] = ()
    startup_only: bool = False  # read once at construction, declared read-only
    pipeline: bool = False  # a PipelineConfig field, named with '_' for '.'

    @property
    def element_type(self) -> type:
        """The Python type of the value, or of each element for an array parameter."""
        return type(self.default[0]) if isinstance(self.default, list) else type(self.default)

    @property
    def type_name(self) -> str:
        """The ROS type in words: ``integer``, ``double``, ``string array``, ..."""
        name = _TYPE_NAMES[self.element_type]
        return f"{name} array" if isinstance(self.default, list) else name

    def check(self, value: Any) -> str:
        """Why ``value`` is not acceptable for this parameter; empty when it is."""
        value = python_value(value)
        want = self.element_type
        items = value if isinstance(value, list) else [value]
        if isinstance(self.default, list) != isinstance(value, list) or not all(
            type(v) is want for v in items
        ):
            return f"{self.name} must be of type {self.type_name}, got {value!r}"
        if self.range is not None:
            lo, hi = self.range
            bad = [v for v in items if not lo <= v <= hi]
            if bad:
                return f"{self.name}={value!r} is outside [{_num(lo)}, {_num(hi)}]"
        if self.choices and value not in self.choices:
            return f"{self.name}={value!r}: choose from {', '.join(self.choices)}"
        return ""

    def descriptor(self) -> Any:
        """The rcl_interfaces ParameterDescriptor: type, description, range, choices."""
        from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
        from rclpy.parameter import Parameter

        d = ParameterDescriptor(
            name=self.name,
            type=Parameter.Type.from_parameter_value(self.default).value,
            description=self.description,
            read_only=self.startup_only,
        )
        constraints = []
        if self.choices:
            # ROS has no choice constraint: the node's set-parameters check enforces it.
            constraints.append(f"one of: {', '.join(self.choices)}")
        if self.range is not None:
            lo, hi = self.range
            if isinstance(self.default, list):  # ROS ranges apply to scalars only
                constraints.append(f"each element in [{_num(lo)}, {_num(hi)}]")
            elif self.element_type is int:
                d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
            else:
                d.floating_point_range = [
                    FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)
                ]
        d.additional_constraints = "; ".join(constraints)
        return d


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


_P = NodeParameter

TABLE: tuple[NodeParameter, ...] = (
    _P("model_path", "", "ONNX model file (empty: $RVM_MODEL, else the shipped default)"),
    _P("device", "auto", "ONNX Runtime device", choices=("auto", "cpu", "cuda", "tensorrt")),
    _P(
        "trt_cache_dir", "", "TensorRT engine cache directory (empty: $XDG_CACHE_HOME/rvm/tensorrt)"
    ),
    # 1 by default: the shipped model steps faster on one thread than on two on a 2-core
    # machine (`rvm bench runtime`), and the tracker and executor keep the other core.
    _P("threads", 1, "ONNX Runtime intra-op threads (0: one per core)", (0, 1024)),
    _P(
        "warmup_steps",
        -1,
        "extra steps on a camera's first frame after a (re)start; -1: the model's (warm start)",
        (-1, 100),
    ),
    _P("image_topics", ["image"], "camera topics (sensor_msgs/Image; '.../compressed': jpeg/png)"),
    _P(
        "feature_dtype",
        "float16",
        "element type of published features",
        choices=("float16", "float32"),
    ),
    _P("publish_debug_image", True, "publish <camera>/rvm/debug_image (PCA colours + tracks)"),
    _P(
        "tracks.grid",
        [8, 8],
        "auto-seeded track grid [rows, cols]; [0, 0] disables seeding",
        (0, 1024),
        pipeline=True,
    ),
    _P("tracks.max", 256, "maximum tracks per camera", (0, 100000), pipeline=True),
    _P(
        "tracks.reseed_when_lost",
        True,
        "re-seed a grid cell when its track is lost",
        pipeline=True,
    ),
    _P(
        "tracks.lost_frames",
        15,
        "invisible frames before a track is dropped",
        (1, 100000),
        pipeline=True,
    ),
    _P(
        "tracks.method",
        TrackerConfig.method,
        "tracker readout: rvm (features), hybrid (features + LK), lk, dis (DIS optical flow)",
        choices=METHODS,
        pipeline=True,
    ),
    _P(
        "reset_on_time_jump",
        True,
        "reset a camera when its stamps go back or jump",
        pipeline=True,
    ),
    _P(
        "max_gap_sec",
        1.0,
        "a gap between processed stamps above this resets (s)",
        (0.0, 1e6),
        pipeline=True,
    ),
    _P("stats_period_sec", 5.0, "period of ~/stats and the stats log line (s); 0: off", (0, 3600)),
    _P(
        "max_image_pixels",
        DEFAULT_MAX_PIXELS,
        "larger images are rejected",
        (1, 2**31 - 1),
        pipeline=True,
    ),
    _P("depth_max", 10000, "16UC1 value shown as white (mm)", (1, 65535), pipeline=True),
    _P(
        "autostart",
        True,
        "configure and activate on start (false: wait for lifecycle calls)",
        startup_only=True,
    ),
    _P(
        "diagnostics.period_sec",
        1.0,
        "period of /diagnostics (s); 0: off",
        (0, 3600),
        startup_only=True,
    ),
    _P(
        "diagnostics.warn_after_sec",
        1.0,
        "a camera is WARN when no frame was processed for this long (s)",
        (0, 1e6),
    ),
    _P("diagnostics.stale_after_sec", 5.0, "... and STALE after this long (s)", (0, 1e6)),
    _P(
        "diagnostics.min_fps",
        0.0,
        "a camera below this processed rate is WARN; 0: no check",
        (0, 1e4),
    ),
    _P(
        "masks.context",
        7,
        "previous frames the mask propagation attends to, besides the seed frame",
        (1, 100),
        pipeline=True,
    ),
    _P(
        "masks.method",
        "dis",
        "mask readout: dis (DIS optical-flow warp, real time) or features (feature "
        "nearest neighbours, guided upsampling)",
        choices=MASK_METHODS,
        pipeline=True,
    ),
    _P(
        "masks.max_pixels",
        DEFAULT_MAX_PIXELS,
        "larger SetMask label images are refused",
        (1, 2**31 - 1),
    ),
)

PARAMETERS: dict[str, NodeParameter] = {p.name: p for p in TABLE}


def default(name: str) -> Any:
    """The declared default of parameter ``name`` (a copy: lists stay unshared)."""
    return copy.deepcopy(PARAMETERS[name].default)


def defaults() -> dict[str, Any]:
    """Every parameter's declared default, by ROS name."""
    return {name: default(name) for name in PARAMETERS}


def python_value(value: Any) -> Any:
    """A parameter value as plain Python: rclpy hands integer/double arrays as array.array."""
    if isinstance(value, (array.array, tuple)):
        return list(value)
    return value


def is_ros_parameter(name: str) -> bool:
    """Whether ``name`` belongs to ROS itself (use_sim_time, qos_overrides.*), not the table."""
    return name in _ROS_NAMES or name.startswith(_ROS_PREFIXES)


def check_values(values: Mapping[str, Any]) -> str:
    """The first reason one of ``values`` (by ROS name) is not acceptable; empty if none."""
    for name, value in values.items():
        if name in PARAMETERS:
            reason = PARAMETERS[name].check(value)
        elif is_ros_parameter(name):
            continue
        else:
            reason = f"unknown parameter {name!r}"
        if reason:
            return reason
    return ""


def parameter_file_values(path: str | Path, node_name: str = NODE_NAME) -> dict[str, Any]:
    """The values a ROS parameter file gives node ``node_name`` (``/**``, ``/**/<name>``,
    ``<name>`` entries), read by rclpy's parameter-file parser and checked against the table.

    Raises ValueError with one line naming the file and what is wrong.
    """
    import yaml
    from rclpy.parameter import parameter_dict_from_yaml_file, parameter_value_to_python

    path = Path(path)
    try:
        if not path.is_file():
            raise ValueError("no such file")
        raw = parameter_dict_from_yaml_file(
            str(path), use_wildcard=True, target_nodes=[node_name, f"/**/{node_name}"]
        )
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ValueError(f"{path}: not valid YAML{where}: {problem}") from None
    except (RuntimeError, AttributeError, TypeError, KeyError):
        # rclpy's parser raises these (with Python's own texts) for any other layout.
        raise ValueError(
            f"{path}: not a ROS parameter file for {node_name}: expected "
            f"'{node_name}', '/**/{node_name}' or '/**' with 'ros__parameters' under it"
        ) from None
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    values = {name: python_value(parameter_value_to_python(p.value)) for name, p in raw.items()}
    reason = check_values(values)
    if reason:
        raise ValueError(f"{path}: {reason}")
    return {name: v for name, v in values.items() if name in PARAMETERS}


def node_parameters(path: str | Path) -> dict[str, Any]:
    """The node's parameters by ROS name as it would start with parameter file ``path``."""
    return {**defaults(), **parameter_file_values(path)}
