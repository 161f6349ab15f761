"""The code blocks of README.md and docs/ are tests (pytest-codeblocks, on through pyproject.toml).

Each block runs as a reader would run it, in a fresh empty folder, so that what it writes
(checkpoints, results) lands there and is removed; and on one torch thread, as the tests' tiny
models do (on a busy 2-core machine several threads wait for each other far longer than they
work). The context a block assumes (a model, data) sits right above it in the Markdown, in an
HTML comment that pages do not show, joined to it by ``<!--pytest-codeblocks:cont-->``; a block
that cannot run here says why in its ``<!--pytest.mark.skip(reason=...)-->``, and a shell block
runs only when marked ``<!--pytest.mark.shell-->``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

import pytest

# pytest-xdist's workers already fill the cores, so each runs one OpenMP thread (torch's and the
# kernels'), unless the caller chose a count: on a shared 2-core machine two threads per worker
# wait for each other at every parallel region whenever one is descheduled (three of the suite's
# tests beside five busy processes: 30% less CPU on one thread). The kernels' threaded paths keep
# their own tests, which set the count explicitly.
if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"


@contextlib.contextmanager
def _one_torch_thread():
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A shell block runs only when it says it may (``<!--pytest.mark.shell-->``): an unmarked one
    (an install, a server, a Ray cluster) would otherwise run in CI as it stands."""
    block = getattr(item, "obj", None)
    if getattr(block, "syntax", None) in ("bash", "sh") and item.get_closest_marker("shell") is None:
        pytest.fail(
            f'{item.nodeid}: a shell block needs <!--pytest.mark.skip(reason="...")--> (why it cannot run here) '
            "or <!--pytest.mark.shell--> (it is quick and writes only to its folder) on the line above it",
            pytrace=False,
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    if item.path.suffix != ".md":
        yield
        return
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="fomo-core-docs-") as folder, _one_torch_thread():
        os.chdir(folder)
        try:
            yield
        finally:
            os.chdir(cwd)
