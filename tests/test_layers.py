"""The layers contract is executable: it holds for the tree, and an upward import breaks it.

``make check`` runs import-linter over the real tree; here the same contract
(pyproject.toml's) runs over a copy of the tree with one upward import added,
and must fail naming it. Also: the vocabulary imports nothing else of
Pixelgate, and nothing anywhere imports the folders by their bare names.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).with_name("lint-imports")
FOLDERS = ("core", "adapters", "metrics", "proxy")


def _view(tmp_path: Path) -> Path:
    """A ``pixelgate`` package like the installed one, from copies of the folders."""
    pkg = tmp_path / "pixelgate"
    shutil.copytree(ROOT / "pixelgate", pkg, symlinks=True)
    for folder in FOLDERS:
        (pkg / folder).unlink()
        shutil.copytree(ROOT / folder, pkg / folder, ignore=shutil.ignore_patterns("__pycache__", "static"))
    return pkg


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    if not LINT.exists():
        pytest.fail("lint-imports is not installed: make test installs requirements-dev.lock")
    return subprocess.run(
        [str(LINT), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=cwd, capture_output=True, text=True, timeout=120, check=False,
    )


def test_the_tree_keeps_the_contract(tmp_path: Path) -> None:
    _view(tmp_path)
    result = _lint(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "imports"),
    [
        ("core/upward.py", "pixelgate.adapters.base"),
        ("adapters/upward.py", "pixelgate.proxy.relay"),
        ("metrics/upward.py", "pixelgate.adapters"),
    ],
)
def test_an_upward_import_breaks_the_contract(tmp_path: Path, module: str, imports: str) -> None:
    pkg = _view(tmp_path)
    (pkg / module).write_text(f"import {imports}\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and imports in result.stdout, result.stdout


def test_no_module_imports_a_folder_by_its_bare_name() -> None:
    """``import proxy`` would load a second copy of the code in a checkout (and fail installed)."""
    offenders = []
    for path in [*ROOT.glob("*/**/*.py")]:
        if path.parts[len(ROOT.parts)] in (".venv", "pixelgate", "build"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in FOLDERS]
    assert not offenders
