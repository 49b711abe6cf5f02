"""The import layers: medxai's packages form no cycle, and the import-linter contract in
pyproject.toml (run by `make lint`, which `make test` runs) fails on an upward import."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "medxai"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    is_pkg = parts[-1] == "__init__"
    if is_pkg:
        parts = parts[:-1]
    return ".".join(parts), is_pkg


def _imported(node: ast.AST, module: str, is_pkg: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        if not node.level:
            return [node.module or ""]
        base = module.split(".")
        base = base if is_pkg else base[:-1]
        base = base[: len(base) - node.level + 1]
        return [".".join(base + ([node.module] if node.module else []))]
    return []


def package_graph() -> dict[str, set[str]]:
    """Edges between medxai's top-level packages/modules (``medxai.X``), lazy imports included."""
    edges: dict[str, set[str]] = {}
    for f in SRC.rglob("*.py"):
        module, is_pkg = _module_name(f)
        src = ".".join(module.split(".")[:2])
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            for target in _imported(node, module, is_pkg):
                dst = ".".join(target.split(".")[:2])
                if dst.startswith("medxai.") and dst != src:
                    edges.setdefault(src, set()).add(dst)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return [*stack[stack.index(m):], m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_find_cycle_sees_a_cycle_and_its_absence():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}}) is None


def test_package_import_graph_is_acyclic():
    edges = package_graph()
    assert edges["medxai.cli"] >= {"medxai.pipeline", "medxai.train"}  # the graph is read, not empty
    assert find_cycle(edges) is None


def _lint(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(tree / "pyproject.toml")], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=120)


def test_layers_contract_kept_and_broken_by_an_upward_import(tmp_path):
    shutil.copytree(SRC, tmp_path / "src" / "medxai", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    kept = _lint(tmp_path)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    heads = tmp_path / "src" / "medxai" / "models" / "heads.py"
    heads.write_text(heads.read_text(encoding="utf-8") + "\nimport medxai.cli  # noqa: E402,F401\n", encoding="utf-8")
    broken = _lint(tmp_path)
    assert broken.returncode != 0
    assert "medxai.models.heads -> medxai.cli" in broken.stdout
