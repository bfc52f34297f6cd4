"""The project's one ``key=value`` parser (rvm_core.config.parse_key_values) and its users."""

from __future__ import annotations

import math

import pytest

from rvm_core.config import parse_key_values


def test_values_are_typed_as_yaml_with_floats_for_exponents():
    got = parse_key_values(
        ["lr=1e-4", "steps=7", "on=true", "name=fast", "betas=[0.9, 0.95]", "x=a=b", "e=", "i=inf"]
    )
    assert got == {
        "lr": 1e-4,
        "steps": 7,
        "on": True,
        "name": "fast",
        "betas": [0.9, 0.95],
        "x": "a=b",
        "e": None,
        "i": math.inf,
    }
    assert isinstance(got["lr"], float) and isinstance(got["steps"], int)


def test_untyped_values_and_other_separators_stay_strings():
    assert parse_key_values(["a:=1", "b:=true"], sep=":=", typed=False) == {"a": "1", "b": "true"}
    assert parse_key_values(["k=1", "k=2"]) == {"k": 2}  # the last one wins, as on a command line


@pytest.mark.parametrize(
    "item, sep, says",
    [
        ("nonsense", "=", "'nonsense' is not key=value"),
        ("=3", "=", "'=3' is not key=value"),
        (" =3", "=", "' =3' is not key=value"),
        ("a=1", ":=", "'a=1' is not key:=value"),
        ("a=[1,", "=", "a: cannot read value '[1,' ("),
        ("a={b: [", "=", "a: cannot read value '{b: [' ("),
    ],
)
def test_bad_items_are_one_line_errors(item, sep, says):
    with pytest.raises(ValueError) as info:
        parse_key_values([item], sep=sep)
    assert str(info.value).startswith(says) and "\n" not in str(info.value)


def test_training_and_eval_overrides_use_it():
    """Both callers report the parser's error and take its typed values."""
    from rvm_core.eval.commands import _tracker_config
    from rvm_core.train.config import load_config

    with pytest.raises(ValueError, match="'optim.lr' is not key=value"):
        load_config(None, ["optim.lr"])
    assert load_config(None, ["optim.lr=2e-4"]).optim.lr == 2e-4
    cfg = _tracker_config("dis", ["search_radius=3", "dis.preset=fast", "center=false"])
    assert (cfg.search_radius, cfg.dis.preset, cfg.center) == (3, "fast", False)
    with pytest.raises(ValueError, match="'search_radius' is not key=value"):
        _tracker_config("rvm", ["search_radius"])
    with pytest.raises(ValueError, match="unknown TrackerConfig key"):
        _tracker_config("rvm", ["serch_radius=3"])
