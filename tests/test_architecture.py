"""The layers stay honest: the rules docs/architecture.md states, checked on the source."""
from __future__ import annotations

import ast
import re
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "dicomweb_wsgi"


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names.add(base)
            names.update(f"{base}.{alias.name}" if node.module else f"{base}{alias.name}" for alias in node.names)
    return names


def _modules() -> list[pathlib.Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_architecture_only_sqlite_storage_modules_import_sqlite3():
    offenders = [p.relative_to(PACKAGE).as_posix() for p in _modules()
                 if any(n == "sqlite3" or n.startswith("sqlite3.") for n in _imports(p))
                 and not (p.parent.name == "storage" and p.name.startswith("sqlite_"))]
    assert offenders == []


@pytest.mark.parametrize("path", sorted((PACKAGE / "storage").glob("*.py")), ids=lambda p: p.name)
def test_architecture_storage_imports_neither_pydicom_nor_http_nor_errors(path):
    forbidden = ("pydicom", "webob", "waitress", "..http", "..errors", "..app", "..transactions", "..archive")
    bad = [n for n in _imports(path) if n.startswith(forbidden)]
    assert bad == []


def test_architecture_only_app_calls_start_response():
    offenders = [p.relative_to(PACKAGE).as_posix() for p in _modules()
                 if "start_response(" in p.read_text(encoding="utf-8") and p.name != "app.py"]
    assert offenders == []


def test_architecture_only_routes_spell_service_urls():
    # Handlers build URLs from request values, never register them: only routes.py calls Route(.
    offenders = [p.relative_to(PACKAGE).as_posix() for p in _modules()
                 if "Route(\"" in p.read_text(encoding="utf-8") and p.name != "routes.py"]
    assert offenders == []


def test_architecture_nothing_writes_to_wsgi_errors():
    offenders = [p.relative_to(PACKAGE).as_posix() for p in _modules()
                 if re.search(r"[\"']wsgi\.errors[\"']", p.read_text(encoding="utf-8"))]
    assert offenders == []
