"""The preprocessing modules import one another in one direction only: no module imports, even
inside a function, a module that imports it back (the external mask and the pipelines once did)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "brainage" / "preprocess"


def _imports(path: Path) -> set[str]:
    """The ``brainage.preprocess`` modules that ``path`` imports anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("brainage.preprocess."):
            found.add(node.module.rsplit(".", 1)[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "brainage.preprocess":
            found.update(alias.name for alias in node.names if (PACKAGE / f"{alias.name}.py").is_file())
    return found


def test_no_preprocessing_module_imports_one_that_imports_it_back() -> None:
    graph = {path.stem: _imports(path) - {path.stem} for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    assert "pipelines" in graph["cache"] and "external_mask" in graph["pipelines"]  # the graph is read, not empty

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(step == goal or (step not in seen and reaches(step, goal, seen | {step})) for step in graph.get(start, ()))

    circles = sorted(name for name in graph if reaches(name, name, {name}))
    assert not circles, f"import circle through {', '.join(circles)}"
