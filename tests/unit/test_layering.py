"""The package layout is the architecture: each subpackage imports only from the layers below it
(engine knows no model or media; models know no ranks; audio out knows no stages). Imports only
needed for type checking (`if TYPE_CHECKING:`) are exempt."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "foley_dist"
BASE = {"errors", "config", "conf", "console"}
ALLOWED = {
    "engine": BASE | {"engine"},
    "media": BASE | {"media"},
    "models": BASE | {"models"},
    "audio": BASE | {"engine", "media", "audio"},
    "planning": BASE | {"engine", "media", "models", "audio", "planning"},
    "tools": BASE | {"engine", "models", "tools"},
}


def _imports(tree: ast.Module) -> set[str]:
    """First component under foley_dist of every import, outside `if TYPE_CHECKING:` blocks."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "foley_dist":
            parts = node.module.split(".")
            found.update([parts[1]] if len(parts) > 1 else [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("foley_dist."))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_imports_only_point_downward(layer):
    files = sorted((PACKAGE / layer).rglob("*.py"))
    assert files, f"foley_dist/{layer}/ is empty"
    bad = {f.relative_to(PACKAGE).as_posix(): sorted(_imports(ast.parse(f.read_text())) - ALLOWED[layer]) for f in files}
    assert not {k: v for k, v in bad.items() if v}, f"upward imports from {layer}/"
