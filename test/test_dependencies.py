"""Declared dependencies match imports: whatever the node's modules import (lazily too) is
declared where its users install from, setup.py's base install (pip) and package.xml (a ROS
workspace), so a deployment without the torch/dev extras does not fail on a missing module."""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
from pathlib import Path

from import_graph import imports

REPO = Path(__file__).resolve().parent.parent
# Commands that also need the PyTorch side (they export or replay with it): not deployment.
NOT_DEPLOYMENT = {"bag_eval.py", "cli.py", "demo.py"}
# Imported inside a try with a fallback: optional by design.
OPTIONAL = {"PIL": "mask_client reads palette PNGs with Pillow when it is there"}
# pip distribution -> the rosdep key package.xml declares it under (onnxruntime: pip only).
ROSDEP = {
    "numpy": "python3-numpy",
    "pyyaml": "python3-yaml",
    "opencv-python-headless": "python3-opencv",
}


def _file(module: str) -> Path | None:
    """The source file of a project module (``rvm_core.x.y``), None if not ours."""
    path = REPO / Path(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _third_partyimports() -> set[str]:
    """Top-level third-party modules of the deployment modules and the project code they use."""
    todo = [p for p in (REPO / "rvm_ros").glob("*.py") if p.name not in NOT_DEPLOYMENT]
    seen: set[Path] = set()
    found: set[str] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in imports(path):
            top = module.split(".")[0]
            if top in ("rvm_core", "rvm_ros"):
                todo += [f for f in (_file(module),) if f is not None]
            elif top not in sys.stdlib_module_names:
                found.add(top)
    return found


def _base_requirements() -> set[str]:
    """Distribution names of the installed rvm's requirements outside every extra."""
    reqs = md.requires("rvm") or []
    return {re.split(r"[~=<>;\[ ]", r, maxsplit=1)[0].lower() for r in reqs if "extra ==" not in r}


def test_deployment_imports_are_declared_in_setup_and_package_xml():
    """Every third-party import of the node side is a base requirement (pip) and, for ROS
    packages and rosdep-packaged libraries, an exec_depend of package.xml."""
    found = _third_partyimports() - set(OPTIONAL)
    dists = md.packages_distributions()
    package_xml = (REPO / "package.xml").read_text()
    ros_deps = set(re.findall(r"<(?:exec_)?depend>([\w-]+)</", package_xml))
    base = _base_requirements()
    missing = []
    for module in sorted(found):
        pip = {d.lower() for d in dists.get(module, [])}
        if any(d.startswith("ros-") for d in pip):  # a ROS package: declared in package.xml
            if module not in ros_deps:
                missing.append(f"{module}: not in package.xml")
            continue
        if not pip & base:
            missing.append(f"{module} ({', '.join(sorted(pip)) or '?'}): not in setup.py's base")
        for dist in pip & set(ROSDEP):
            if ROSDEP[dist] not in ros_deps:
                missing.append(f"{module}: rosdep key {ROSDEP[dist]} not in package.xml")
    assert not missing, missing
    assert "torch" not in found and "av" not in found
