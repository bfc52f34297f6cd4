"""The package's Fast DDS profile (config/fastdds.xml): shared memory large enough for raw frames.

Environment variables are read when rclpy creates the DDS participant (``rclpy.init``), so
``use_rvm_dds_profile`` must run before it. A user's own ``FASTDDS_DEFAULT_PROFILES_FILE`` (or
``FASTDDS_BUILTIN_TRANSPORTS``) always wins.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

PROFILE_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"
# Variables that mean the user configured Fast DDS transports themselves.
_USER_SETTINGS = (PROFILE_ENV, "FASTDDS_BUILTIN_TRANSPORTS", "FASTRTPS_DEFAULT_PROFILES_FILE")


def dds_profile_path() -> str:
    """config/fastdds.xml from the installed share directory, else from this source checkout."""
    try:
        from ament_index_python.packages import get_package_share_directory

        path = Path(get_package_share_directory("rvm_ros")) / "config" / "fastdds.xml"
        if path.is_file():
            return str(path)
    except Exception:  # not installed as a ROS package (pip / source checkout)
        pass
    return str(Path(__file__).resolve().parent.parent / "config" / "fastdds.xml")


def use_rvm_dds_profile(env: MutableMapping[str, str] | None = None) -> str | None:
    """Point Fast DDS at the package profile unless the user set one -> the profile used."""
    env = os.environ if env is None else env
    if any(k in env for k in _USER_SETTINGS):  # set, even empty: the user decided
        return env.get(PROFILE_ENV) or None
    if env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") != "rmw_fastrtps_cpp":
        return None  # another DDS: the XML means nothing to it
    path = dds_profile_path()
    if os.path.isfile(path):
        env[PROFILE_ENV] = path
        return path
    return None
