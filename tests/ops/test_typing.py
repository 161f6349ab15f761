"""The typed surface: py.typed ships, the ops' overloads keep the caller's array type for a type
checker (mypy on tests/typecheck_arrays.py), and torch is never imported at run time for it."""

from __future__ import annotations

import ast
import importlib.resources
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SNIPPET = Path(__file__).resolve().parents[1] / "typecheck_arrays.py"


def test_the_package_is_marked_typed():
    assert importlib.resources.files("fomo_core").joinpath("py.typed").is_file()


def test_importing_fomo_core_does_not_import_torch():
    code = "import sys, fomo_core; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "False"


@pytest.mark.slow  # mypy reads the numpy and torch stubs: ~12 s of CPU
def test_mypy_sees_ndarray_in_ndarray_out_and_tensor_in_tensor_out(tmp_path):
    pytest.importorskip("mypy")
    pytest.importorskip("torch")
    expected_errors = {
        number for number, line in enumerate(SNIPPET.read_text().splitlines(), 1) if line.endswith("# wrong")
    }
    assert len(expected_errors) == 4
    command = [
        sys.executable,
        "-m",
        "mypy",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--follow-imports=silent",
        "--no-error-summary",
        "--hide-error-context",
        "--show-error-codes",
        str(SNIPPET),
    ]
    # From outside the checkout, so that the installed package (with py.typed) is the one checked.
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "MYPYPATH": ""})
    flagged = {int(m.group(1)) for m in re.finditer(rf"{re.escape(SNIPPET.name)}:(\d+): error", result.stdout)}
    assert flagged == expected_errors, result.stdout + result.stderr
    assert all("[assert-type]" in line for line in result.stdout.splitlines() if ": error" in line), result.stdout


def _union_annotations(path: Path) -> list[str]:
    """file:line of every annotation written with ``|`` (PEP 604) in one file."""
    annotations = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            annotations += [
                arg.annotation for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg] if arg
            ]
            annotations.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
    return [
        f"{path.name}:{sub.lineno}"
        for annotation in annotations
        if annotation is not None
        for sub in ast.walk(annotation)
        if isinstance(sub, ast.BinOp) and isinstance(sub.op, ast.BitOr)
    ]


def test_annotations_are_written_so_that_python_3_9_can_evaluate_them():
    # The package supports Python 3.9 (requires-python), where typing.get_type_hints (dataclasses'
    # tools, the documentation, users' introspection) cannot evaluate ``X | None``: annotations say
    # Optional[X] / Union[X, Y]. Ruff can only be told not to rewrite them (UP007 and UP045 are
    # off in pyproject.toml); this keeps new code to the same style.
    root = Path(__file__).resolve().parents[2]
    files = sorted([*root.glob("fomo_core/**/*.py"), *root.glob("adapters/*.py"), *root.glob("simulate/*.py")])
    assert len(files) > 40
    assert [where for path in files for where in _union_annotations(path)] == []
