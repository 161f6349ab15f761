"""The core imports neither the adapters nor the simulator's wing, and the adapters do not import
the wing: the import-linter contracts of pyproject.toml ([tool.importlinter]) hold on the installed
package, the first lists every core module, and one upward import in a core module breaks it."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter")
tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
# fomo_core/ holds the core; ``python -m fomo_core`` (its __main__) is the one module there that
# starts the simulator's wing (simulate/, installed as fomo_core.simulate), so it is no source.
NOT_CORE = {"fomo_core.__main__"}


def _contracts() -> list:
    return tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]


def _contract() -> dict:
    return _contracts()[0]  # the core's


def _lint_imports(config: Path, cwd: Path) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("lint-imports")
    command = [str(script) if script.exists() else shutil.which("lint-imports") or "lint-imports"]
    return subprocess.run([*command, str(config), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_every_core_module_is_a_source_of_the_contract_and_the_wing_is_forbidden():
    contract = _contract()
    core = {"fomo_core"} | {f"fomo_core.{p.stem}" for p in (ROOT / "fomo_core").glob("*.py") if p.stem != "__init__"}
    core -= NOT_CORE
    assert set(contract["source_modules"]) == core
    assert [p.name for p in (ROOT / "fomo_core").iterdir() if (p / "__init__.py").exists()] == []
    forbidden = set(contract["forbidden_modules"])
    assert {"fomo_core.adapters", "fomo_core.adapters.**", "fomo_core.simulate", "fomo_core.simulate.**"} <= forbidden
    adapters = _contracts()[1]
    assert adapters["source_modules"] == ["fomo_core.adapters"] and adapters["forbidden_modules"] == [
        "fomo_core.simulate"
    ]


def test_the_installed_package_keeps_the_contract(tmp_path):
    # From outside the checkout: lint-imports puts its working folder first on sys.path, and the
    # checkout's fomo_core/ has no adapters/ (they are installed as fomo_core.adapters).
    result = _lint_imports(PYPROJECT, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(rf"^{re.escape(_contract()['name'])} KEPT$", result.stdout, re.M), result.stdout
    for contract in _contracts():
        assert re.search(rf"^{re.escape(contract['name'])} KEPT$", result.stdout, re.M), result.stdout
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_one_upward_import_in_a_core_module_breaks_the_contract(tmp_path):
    # A copy of the package under another name (an installed fomo_core would be found first),
    # with the adapters where they are installed and one core module importing one of them.
    probe = tmp_path / "fomo_probe"
    shutil.copytree(ROOT / "fomo_core", probe, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    for wing in ("adapters", "simulate"):  # where they are installed
        shutil.copytree(ROOT / wing, probe / wing, ignore=shutil.ignore_patterns("__pycache__"))
    for path in probe.rglob("*.py"):
        path.write_text(path.read_text().replace("fomo_core", "fomo_probe"))
    guard = probe / "guard.py"
    guard.write_text(guard.read_text() + "\nfrom .adapters import numpy as _numpy  # noqa\n")
    # the same contract, its names moved to the copy (JSON strings, lists and booleans are TOML)
    lines = ["[tool.importlinter]", 'root_package = "fomo_probe"', "[[tool.importlinter.contracts]]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in _contract().items()]
    config = tmp_path / "pyproject.toml"
    config.write_text("\n".join(lines).replace("fomo_core", "fomo_probe") + "\n")
    result = _lint_imports(config, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Contracts: 0 kept, 1 broken." in result.stdout
    assert re.search(r"fomo_probe\.guard is not allowed to import\s+fomo_probe\.adapters\.numpy", result.stdout)


def test_no_core_module_names_the_adapters_or_the_wing_in_a_string():
    # what import-linter cannot see: a module loaded by name (importlib, "module:attribute"
    # registries); a message that names an adapter's function for the user is no dependency
    target = re.compile(r"fomo_core\.(adapters|simulate)(\.\w+)*(:\w+)?")
    found = []
    for path in sorted((ROOT / "fomo_core").glob("*.py")):
        if f"fomo_core.{path.stem}" in NOT_CORE:
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if target.fullmatch(node.value):
                    found.append(f"{path.name}:{node.lineno}")
    assert len(list((ROOT / "fomo_core").glob("*.py"))) > 20
    assert found == []
