"""The example CRM is a client of crm_mailtrack's public surface only: it imports nothing
but the package's top-level public names, never reaches into the extension's state, and
never writes or reads the extension's tables with SQL of its own."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import crm_mailtrack
from crm_mailtrack import metadata

APP = Path(__file__).resolve().parent.parent / "example_app"
SOURCES = sorted(APP.rglob("*.py"))
TEMPLATES = sorted((APP / "templates").rglob("*.html"))


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every import statement of a source file."""
    out: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module, [alias.name for alias in node.names]))
    return out


def test_example_app_imports_only_public_top_level_names() -> None:
    assert SOURCES
    offending = []
    for path in SOURCES:
        for module, names in _imports(path):
            if module == "crm_mailtrack":
                offending += [f"{path.name}: {name}" for name in names if name not in crm_mailtrack.__all__]
            elif module.startswith("crm_mailtrack."):
                offending.append(f"{path.name}: {module}")
    assert offending == []


def test_example_app_does_not_reach_into_the_extension_or_its_tables() -> None:
    tables = sorted(metadata.tables, key=len, reverse=True)
    assert "mailtrack_events" in tables
    table_name = re.compile(r"\b(" + "|".join(map(re.escape, tables)) + r")\b")
    reach = re.compile(r"extensions\[\s*[\"']mailtrack[\"']\s*\]|get_state\b|\._[a-z]\w*_loader\b")
    offending = []
    for path in [*SOURCES, *TEMPLATES]:
        text = path.read_text()
        offending += [f"{path.name}: {m.group(0)}" for m in table_name.finditer(text)]
        offending += [f"{path.name}: {m.group(0)}" for m in reach.finditer(text)]
    assert offending == []
