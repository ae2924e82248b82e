"""The import graph of the project's packages, and the layering DESIGN.md draws over it.

Every import counts, also one inside a function: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGES = ("schemas", "bus", "kernel", "handlers", "sagas", "gateway", "console", "soma")

# What each layer may import besides itself. The CLI (soma) sits on top and may use anything.
ALLOWED: dict[str, set[str]] = {
    "schemas": set(),
    "bus": {"schemas"},
    "kernel": {"schemas", "bus"},
    "handlers": {"schemas", "bus", "kernel"},
    "sagas": {"schemas", "bus", "kernel"},
    "gateway": {"schemas", "bus", "kernel"},
    "console": {"schemas", "bus", "kernel"},
    "soma": set(PACKAGES),
}


def unit(module: str) -> str:
    """The unit a module belongs to: its top-level package, or ``handlers.<name>`` for a
    handler, since handlers must not import each other."""
    parts = module.split(".")
    if parts[0] == "handlers" and len(parts) > 1:
        return f"handlers.{parts[1]}"
    return parts[0]


def imported(tree: ast.AST, module: str) -> Iterator[tuple[int, str]]:
    package = module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            for alias in node.names:  # ``from handlers import policy`` names a handler
                yield node.lineno, f"{name}.{alias.name}"


def violations(root: Path) -> list[str]:
    """Every import under ``root`` that crosses a layer the wrong way, as ``path:line: a -> b``."""
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root)
            module = ".".join(relative.with_suffix("").parts)
            source = unit(module)
            layer = source.split(".")[0]
            tree = ast.parse(path.read_text(), str(path))
            for line, name in imported(tree, module):
                target = unit(name)
                top = target.split(".")[0]
                if top not in PACKAGES or target == source or top == source:
                    continue
                if top not in ALLOWED[layer] or (layer == "handlers" and top == "handlers"):
                    found.append(f"{relative}:{line}: {source} -> {name}")
    return sorted(set(found))
