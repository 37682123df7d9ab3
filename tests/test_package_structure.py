"""The package reads as the pipeline: imports flow one way down the stages, and the library hides no imports.

Parsed from the source with ``ast`` (nothing is imported), so a violation names its file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import deltalora
from deltalora import PIPELINE, SHARED

ROOT = Path(deltalora.__file__).parent


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out.append((name, path))
    return out


def _imports(name: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported deltalora module, line, inside a function?) for every import of ``deltalora`` in a file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    local = {
        id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(f)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        found += [(t, node.lineno, id(node) in local) for t in targets if t.split(".")[0] == "deltalora"]
    return found


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _violations() -> tuple[list[str], list[str]]:
    later, hidden = [], []
    for name, path in _modules():
        me = _stage(name)
        where = path.relative_to(ROOT.parent)
        for target, line, in_function in _imports(name, path):
            them = _stage(target)
            if me in PIPELINE and them in PIPELINE and PIPELINE.index(them) > PIPELINE.index(me):
                later.append(f"{where}:{line} ({me}) imports {target} ({them}), a later stage")
            if me in SHARED and them in PIPELINE:
                later.append(f"{where}:{line}: shared module {me} imports the stage {them}")
            if in_function and me != "cli":
                hidden.append(f"{where}:{line} imports {target} inside a function")
    return later, hidden


def test_every_module_belongs_to_a_stage_or_is_shared():
    loose = [
        str(p.relative_to(ROOT.parent))
        for n, p in _modules()
        if n != "deltalora" and _stage(n) not in (*PIPELINE, *SHARED)
    ]
    assert not loose, f"modules outside the pipeline's stages: {loose}; move each into its stage's package"


def test_imports_flow_down_the_pipeline():
    later, _ = _violations()
    assert not later, "\n".join(later)


def test_library_imports_are_at_module_top():
    """Function-local imports of deltalora hide the import graph; only the CLI defers them (to keep --help fast)."""
    _, hidden = _violations()
    assert not hidden, "\n".join(hidden)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from ..training import x\n", "imports deltalora.training"),
        ("def f():\n    from .. import paths\n", "inside a function"),
    ],
)
def test_the_checks_catch_a_violation(tmp_path, monkeypatch, source, expected):
    """A backwards import planted in a copy of a deltas module is reported with its file and line."""
    fake = tmp_path / "deltalora" / "deltas" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text(source)
    monkeypatch.setattr("tests.test_package_structure.ROOT", tmp_path / "deltalora")
    later, hidden = _violations()
    assert any(expected in v and "deltas/bad.py:" in v for v in later + hidden)
