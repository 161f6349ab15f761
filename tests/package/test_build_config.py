"""The build's CUDA rule, by configuring CMakeLists.txt (no compiling): a machine that merely has
nvcc gets the quick CPU build unless CUDA is asked for, and a bad FOMO_CUDA is refused by name."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]


def configure(tmp_path: Path, *defines: str, gpu_caps: Optional[str] = None) -> subprocess.CompletedProcess:
    """cmake's configure step with a stand-in nvidia-smi first on the PATH: it prints `gpu_caps`
    (compute capabilities, one a line) or fails as it does on a machine without a driver."""
    pybind11 = pytest.importorskip("pybind11")
    cmake = shutil.which("cmake")
    if cmake is None or not (ROOT / "CMakeLists.txt").exists():
        pytest.skip("needs cmake and the checkout's CMakeLists.txt")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\n" + (f"printf '{gpu_caps}\\n'\n" if gpu_caps else "exit 9\n"))
    smi.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{Path(cmake).parent}:/usr/bin:/bin"}
    command = [
        cmake,
        "-S",
        str(ROOT),
        "-B",
        str(tmp_path / "build"),
        f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
        "-DSKBUILD_PROJECT_VERSION=0.0.0",
        *defines,
    ]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def test_auto_without_a_visible_gpu_builds_the_cpu_kernels_only(tmp_path):
    result = configure(tmp_path, "-DFOMO_CUDA=AUTO")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no NVIDIA GPU visible" in result.stdout and "FOMO_CUDA=ON builds the CUDA kernels too" in result.stdout
    assert "CUDA kernels (nvcc" not in result.stdout
    assert "fomo-core 0.0.0: CPU kernels for base" in result.stdout


def test_off_says_so(tmp_path):
    result = configure(tmp_path, "-DFOMO_CUDA=OFF", gpu_caps="8.6")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "CUDA kernels off (FOMO_CUDA=OFF)" in result.stdout


def test_an_unknown_mode_is_refused_by_name(tmp_path):
    result = configure(tmp_path, "-DFOMO_CUDA=sometimes")
    assert result.returncode != 0
    assert "FOMO_CUDA must be AUTO, ON or OFF, got 'SOMETIMES'" in result.stderr
