"""What a source file imports, read statically (function bodies too): the import tests' walker."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def imports(path: Path, submodules: bool = False) -> set[str]:
    """Absolute module names a file imports anywhere, function bodies too (relative resolved);
    with ``submodules``, also ``pkg.name`` for every ``from pkg import name`` (which may be a
    module)."""
    parts = path.relative_to(REPO).with_suffix("").parts
    package = ".".join(parts if parts[-1] == "__init__" else parts[:-1]).removesuffix(".__init__")
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module
            out.add(module)
            if submodules:
                out |= {f"{module}.{a.name}" for a in node.names}
    return out
