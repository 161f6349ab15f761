"""What a new user meets first: the version flags, ``python -m fomo_core``, one-line errors naming
the extra to install when an optional dependency is missing, and the names of the two candidate
evaluations (old names kept)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import fomo_core as fc
from fomo_core._optional import MissingExtraError, optional_import
from fomo_core.simulate.cli import main


def run_python(code: str) -> subprocess.CompletedProcess:
    """A fresh interpreter (outside the checkout, so that the installed package is imported)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=300)


def test_version_flag_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"fomo-core {fc.__version__}"


def test_python_dash_m_runs_the_command_line():
    result = subprocess.run(
        [sys.executable, "-m", "fomo_core", "--version"], capture_output=True, text=True, cwd="/", timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"fomo-core {fc.__version__}"
    info = subprocess.run([sys.executable, "-m", "fomo_core", "info"], capture_output=True, text=True, cwd="/")
    assert info.returncode == 0 and f"version: {fc.__version__}" in info.stdout


# sys.modules[name] = None makes `import name` fail exactly as an uninstalled package does.
@pytest.mark.parametrize(
    "blocked, statement, message",
    [
        (
            "torch",
            "import fomo_core.adapters.torch",
            "fomo_core.adapters.torch needs PyTorch: pip install 'fomo-core[torch]'",
        ),
        (
            "torch",
            "import fomo_core.adapters.torch_evaluate",
            "fomo_core.adapters.torch needs PyTorch: pip install 'fomo-core[torch]'",
        ),
        (
            "flwr",
            "import fomo_core.adapters.flower",
            "fomo_core.adapters.flower needs Flower: pip install 'fomo-core[flower]'",
        ),
        (
            "matplotlib",
            "from fomo_core.simulate.plots import plot_accuracy; plot_accuracy({'methods': {}}, 'x.png')",
            "fomo_core.simulate.plots needs matplotlib: pip install 'fomo-core[demo]'",
        ),
    ],
)
def test_a_missing_optional_dependency_is_one_line_naming_the_extra(blocked, statement, message):
    result = run_python(f"import sys; sys.modules[{blocked!r}] = None; {statement}")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"fomo_core._optional.MissingExtraError: {message}"
    assert "halted" not in result.stderr  # the raw ModuleNotFoundError is not chained in


def test_the_demo_without_its_extras_exits_with_one_line():
    result = run_python(
        "import sys; sys.modules['sklearn'] = sys.modules['mlxtend'] = None\n"
        "from fomo_core.simulate.cli import main\n"
        "sys.exit(main(['demo', '--no-progress', '--no-plots', '--out', '/tmp/fomo-core-never-written']))"
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fomo-core: error: fomo-core demo needs "), result.stderr
    assert lines[0].endswith(": pip install 'fomo-core[demo]'")


def test_optional_import_names_each_package_and_leaves_other_errors_alone():
    for package, extra in [("tqdm", "demo"), ("mlxtend", "demo"), ("sklearn", "sklearn")]:
        with pytest.raises(MissingExtraError, match=rf"^the feature needs .+: pip install 'fomo-core\[{extra}\]'$"):
            with optional_import("the feature"):
                raise ModuleNotFoundError(f"No module named {package!r}", name=package)
    with pytest.raises(MissingExtraError, match=r"needs torchvision: pip install torchvision$"):
        with optional_import("CIFAR-10"):
            raise ModuleNotFoundError("No module named 'torchvision'", name="torchvision")
    with pytest.raises(ModuleNotFoundError) as raised:  # not ours to explain: passes through as it was
        with optional_import("the feature"):
            raise ModuleNotFoundError("No module named 'grpc'", name="grpc")
    assert not isinstance(raised.value, MissingExtraError)


def test_missing_extra_error_is_still_an_import_error():
    assert issubclass(MissingExtraError, ModuleNotFoundError)


def test_each_evaluation_has_its_own_name_and_the_old_names_still_work():
    torch_adapter = pytest.importorskip("fomo_core.adapters.torch")
    from fomo_core.adapters import torch_evaluate

    assert fc.evaluate_candidates is fc.evaluate_dense
    assert torch_adapter.evaluate_module is not fc.evaluate_dense
    for module in (torch_adapter, torch_evaluate):
        assert "evaluate_candidates" not in module.__all__
        with pytest.warns(
            DeprecationWarning, match=rf"{module.__name__}\.evaluate_candidates is deprecated.+evaluate_module"
        ):
            old = module.evaluate_candidates
        assert old is torch_adapter.evaluate_module
    with pytest.warns(DeprecationWarning, match="call fomo_core.adapters.torch.evaluate_module"):
        from fomo_core.adapters.torch import evaluate_candidates  # noqa: F401 (the import warns)
    with pytest.raises(AttributeError, match="has no attribute 'evaluate_everything'"):
        torch_adapter.evaluate_everything  # noqa: B018 (only other names raise as before)


def test_every_public_name_is_one_object_wherever_it_is_exported():
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    pytest.importorskip("flwr")
    adapters = ("torch", "torch_evaluate", "numpy", "flower")
    modules = [fc] + [importlib.import_module(f"fomo_core.adapters.{name}") for name in adapters]
    seen: dict = {}
    for module in modules:
        for name in module.__all__:
            value = getattr(module, name)
            first = seen.setdefault(name, (module.__name__, value))
            assert first[1] is value, f"{module.__name__}.{name} is not {first[0]}.{name}"


@pytest.mark.parametrize("first", ["Plan", "plan"])
def test_plan_is_the_function_whichever_of_its_module_s_names_is_used_first(first):
    # (a fresh interpreter: the names load on first use, once per process; importing the module
    # fomo_core.plan binds it as the package's attribute ``plan``, over the function)
    code = (
        f"import sys, fomo_core as fc; fc.{first}; m = sys.modules['fomo_core.plan']; "
        "print(fc.plan is m.plan, fc.Plan is m.Plan)"
    )
    # (from outside the checkout, whose fomo_core/ source folder has no compiled extension)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.stdout.split() == ["True", "True"], out.stderr
