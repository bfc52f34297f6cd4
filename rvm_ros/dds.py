"""Files of the package's share directory, and the Fast DDS setup of its processes.

The package's Fast DDS profile (config/fastdds.xml) holds raw frames in shared memory. Fast DDS
reads its environment variables when rclpy creates the DDS participant (``rclpy.init``), so
``use_rvm_dds_profile`` must run before it. With the automatic choice (``profile=""``) a user's
own ``FASTDDS_DEFAULT_PROFILES_FILE`` (or ``FASTDDS_BUILTIN_TRANSPORTS``) always wins.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

PROFILE_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"
BUILTIN_ENV = "FASTDDS_BUILTIN_TRANSPORTS"
# Variables that mean the user configured Fast DDS transports themselves.
FASTDDS_VARS = (PROFILE_ENV, BUILTIN_ENV, "FASTRTPS_DEFAULT_PROFILES_FILE")
# Named choices of ``dds_env``'s ``profile`` (anything else is the path of an XML profile).
NAMED_PROFILES = ("", "rvm", "none", "default", "large_data")


def share_file(rel: str) -> str:
    """``rel`` in the installed rvm_ros share directory, else in this source checkout."""
    try:
        from ament_index_python.packages import get_package_share_directory

        path = Path(get_package_share_directory("rvm_ros")) / rel
        if path.is_file():
            return str(path)
    except Exception:  # not installed as a ROS package (pip / source checkout)
        pass
    return str(Path(__file__).resolve().parent.parent / rel)


def dds_profile_path() -> str:
    """The package's Fast DDS profile, config/fastdds.xml."""
    return share_file("config/fastdds.xml")


def dds_env(profile: str = "", environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a process started from ``environ`` (default: this one's), with the
    Fast DDS setup ``profile`` asks for.

    ``""``: the package profile unless ``environ`` configures Fast DDS (or another RMW);
    ``rvm``: the package profile; ``none``/``default``: Fast DDS's default transports;
    ``large_data``: Fast DDS's builtin LARGE_DATA transports; else the path of an XML profile.
    Any choice but ``""`` replaces the Fast DDS variables of ``environ``.
    """
    env = dict(os.environ if environ is None else environ)
    choice = profile.strip()
    if not choice:
        if any(k in env for k in FASTDDS_VARS):  # set, even empty: the user decided
            return env
        if env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") != "rmw_fastrtps_cpp":
            return env  # another DDS: the XML means nothing to it
        path = dds_profile_path()
        if os.path.isfile(path):
            env[PROFILE_ENV] = path
        return env
    for key in FASTDDS_VARS:
        env.pop(key, None)
    name = choice.lower()
    if name == "rvm":
        env[PROFILE_ENV] = dds_profile_path()
    elif name in ("none", "default"):  # set: rvm_node then leaves Fast DDS's defaults alone
        env[BUILTIN_ENV] = "DEFAULT"
    elif name == "large_data":
        env[BUILTIN_ENV] = "LARGE_DATA"
    else:
        env[PROFILE_ENV] = choice
    return env


def use_rvm_dds_profile(profile: str = "") -> str | None:
    """Apply ``dds_env(profile)`` to this process's Fast DDS variables -> the XML profile used."""
    env = dds_env(profile)
    for key in FASTDDS_VARS:
        if key in env:
            os.environ[key] = env[key]
        else:
            os.environ.pop(key, None)
    return env.get(PROFILE_ENV) or None
