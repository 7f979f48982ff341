#!/usr/bin/env bash
# Builds the native core with AddressSanitizer + UndefinedBehaviorSanitizer and runs the whole test suite
# against it. Python itself is not instrumented, so libasan is preloaded and leak checking is off (the
# interpreter keeps memory until exit on purpose). Any ASan or UBSan report aborts the test process
# (setup.py passes -fno-sanitize-recover=all), so a green run means no report.
#
#   tools/sanitize.sh [pytest args...]          e.g. tools/sanitize.sh -q -x
#   EDGEAI_SANITIZE_NO_BUILD=1 tools/sanitize.sh  reuses the sanitized build already in place
#
# Reports go to $EDGEAI_SANITIZE_LOGS (pytest's capture would swallow them) and are printed on failure.
# alloc_dealloc_mismatch is off because hnswlib's own binding (not instrumented, not ours) frees its
# new[]-allocated result arrays with plain delete; every other check stays on.
#
# Afterwards, rebuild the normal core with `pip install -e .` (or `python setup.py build_ext --inplace`).
set -euo pipefail
cd "$(dirname "$0")/.."
CXX=${CXX:-c++}
if [ -z "${EDGEAI_SANITIZE_NO_BUILD:-}" ]; then
    EDGEAI_SANITIZE=address,undefined python setup.py -q build_ext --inplace --force
fi
logs=${EDGEAI_SANITIZE_LOGS:-/tmp/edgeai-sanitize}
rm -rf "$logs" && mkdir -p "$logs"
asan=$($CXX -print-file-name=libasan.so)
ubsan=$($CXX -print-file-name=libubsan.so)
[ -f "$asan" ] || { echo "libasan not found (install the compiler's sanitizer runtime)" >&2; exit 2; }
export LD_PRELOAD="$asan:$ubsan"
# allocator_may_return_null: an impossible allocation raises MemoryError as in a normal build.
export ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:halt_on_error=1:abort_on_error=1:alloc_dealloc_mismatch=0:log_path=$logs/asan
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=$logs/ubsan
export EDGEAI_SANITIZED=1
status=0
python -m pytest -p no:cacheprovider "${@:--q}" || status=$?
if ls "$logs"/* >/dev/null 2>&1; then
    echo "sanitizer reports:"; cat "$logs"/*; [ $status -ne 0 ] || status=1
fi
exit $status
