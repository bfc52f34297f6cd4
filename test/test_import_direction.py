"""Dependencies point one way: ``rvm_core`` (the PyTorch side) never imports ``rvm_ros``, and
the node side of ``rvm_ros`` runs without PyTorch and PyAV, as a robot's install has neither."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from import_graph import imports

REPO = Path(__file__).resolve().parent.parent
# Commands that use the PyTorch side on purpose (a random-weight export when no model is
# shipped; video files decoded with PyAV): everything else in rvm_ros is the node side.
COMMANDS = {"bag_eval", "cli", "demo"}
BLOCKED = ("torch", "av")


def _node_side() -> list[str]:
    """Module names of the node side: every rvm_ros module but the commands."""
    names = sorted(p.stem for p in (REPO / "rvm_ros").glob("*.py") if p.stem != "__init__")
    return [f"rvm_ros.{n}" for n in names if n not in COMMANDS]


def _files(module: str) -> list[Path]:
    """Source files Python runs to import a project module: its packages' ``__init__`` too."""
    parts = module.split(".")
    out = []
    for n in range(1, len(parts) + 1):
        path = REPO / Path(*parts[:n])
        for candidate in (path / "__init__.py", path.with_suffix(".py")):
            if candidate.is_file():
                out.append(candidate)
    return out


def test_rvm_core_never_imports_rvm_ros():
    """No module of rvm_core imports rvm_ros, at module level or inside a function."""
    offenders = [
        f"{path.relative_to(REPO)} imports {module}"
        for path in sorted((REPO / "rvm_core").rglob("*.py"))
        for module in sorted(imports(path))
        if module.split(".")[0] == "rvm_ros"
    ]
    assert not offenders, "\n".join(offenders)


def test_node_side_imports_with_torch_and_av_blocked():
    """Every node-side module imports in a process where ``import torch`` / ``import av`` fail."""
    modules = _node_side()
    assert "rvm_ros.node" in modules and "rvm_ros.runtime" in modules
    script = textwrap.dedent(
        f"""
        import importlib, importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {BLOCKED!r}:
                    raise ImportError(f"{{name}} is blocked: the node side must not need it")
                return None

        sys.meta_path.insert(0, Block())
        for name in {modules!r}:
            importlib.import_module(name)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r})
        assert not loaded, loaded
        print("imported", len({modules!r}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"imported {len(modules)}" in proc.stdout


def test_node_side_never_reaches_torch_or_av_lazily_either():
    """Imports inside functions (run only on some paths) of the node side and of the project
    modules it uses reach neither torch nor av: a static walk, so no path is left untried."""
    todo = [(f, m) for m in _node_side() for f in _files(m)]
    seen: set[Path] = set()
    offenders = []
    while todo:
        path, via = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in imports(path, submodules=True):
            top = module.split(".")[0]
            if top in BLOCKED:
                offenders.append(f"{path.relative_to(REPO)} (from {via}) imports {module}")
            elif top in ("rvm_core", "rvm_ros"):
                todo += [(f, via) for f in _files(module)]
    assert not offenders, "\n".join(sorted(offenders))


def test_each_side_has_its_own_command():
    """``rvm`` is the PyTorch side's command and ``rvm-ros`` the ROS side's."""
    import importlib.metadata as md

    scripts = {e.name: e.value for e in md.entry_points(group="console_scripts")}
    assert scripts["rvm"] == "rvm_core.cli:main"
    assert scripts["rvm-ros"] == "rvm_ros.cli:main"
