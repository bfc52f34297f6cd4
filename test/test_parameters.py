"""The node's parameter table (rvm_ros.parameters) and what is built from it, without a node."""

from __future__ import annotations

import dataclasses

import pytest

from rvm_core.readout.tracker import METHODS, TrackerConfig
from rvm_ros.camera import PipelineConfig
from rvm_ros.parameters import PARAMETERS, TABLE, check_values, defaults


def test_one_entry_per_parameter_and_defaults_pass_their_own_check():
    assert len(PARAMETERS) == len(TABLE)
    for p in TABLE:
        assert p.check(p.default) == "", p.name
        assert p.description and not (p.range and p.choices), p.name
        assert p.descriptor().name == p.name


def test_pipeline_config_is_the_tables_pipeline_parameters():
    """Field names are the ROS names with '_' for '.'; the defaults are the table's."""
    fields = {f.name: f.default for f in dataclasses.fields(PipelineConfig)}
    pipeline = {p.name.replace(".", "_"): p.default for p in TABLE if p.pipeline}
    assert set(fields) == set(pipeline)
    for name, value in pipeline.items():
        want = tuple(value) if isinstance(value, list) else value
        assert fields[name] == want, name
    assert PipelineConfig.from_params(defaults()) == PipelineConfig()
    cfg = PipelineConfig.from_params({"tracks.grid": [2, 3], "masks.context": 3, "threads": 4})
    assert (cfg.tracks_grid, cfg.masks_context) == ((2, 3), 3)


def test_tracker_default_method_is_one_value():
    """The node's tracks.method default is TrackerConfig's; its choices are the readouts."""
    assert PARAMETERS["tracks.method"].default == TrackerConfig().method
    assert PipelineConfig().tracks_method == TrackerConfig().method
    assert PARAMETERS["tracks.method"].choices == METHODS


@pytest.mark.parametrize(
    "values, says",
    [
        ({"tracks.max": 1.5}, "tracks.max must be of type integer, got 1.5"),
        ({"publish_debug_image": 1}, "publish_debug_image must be of type bool, got 1"),
        ({"image_topics": "image"}, "image_topics must be of type string array, got 'image'"),
        ({"tracks.grid": [8, "8"]}, "tracks.grid must be of type integer array, got [8, '8']"),
        ({"warmup_steps": -2}, "warmup_steps=-2 is outside [-1, 100]"),
        ({"diagnostics.min_fps": 1e9}, "diagnostics.min_fps=1000000000.0 is outside [0, 10000]"),
        ({"feature_dtype": "bf16"}, "feature_dtype='bf16': choose from float16, float32"),
        ({"trackz.max": 3}, "unknown parameter 'trackz.max'"),
    ],
)
def test_bad_values_have_one_line_reasons(values, says):
    assert check_values(values) == says


def test_ros_parameters_are_not_the_tables_business():
    assert check_values({"use_sim_time": True, "qos_overrides./x.subscription.depth": 5}) == ""


def test_diagnostics_config_defaults_are_the_tables():
    from rvm_ros.diagnostics import DiagnosticsConfig

    for f in dataclasses.fields(DiagnosticsConfig):
        assert f.default == PARAMETERS[f"diagnostics.{f.name}"].default, f.name
