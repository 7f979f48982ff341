#!/usr/bin/env bash
# Builds the native core with AddressSanitizer + UndefinedBehaviorSanitizer and runs the whole test suite
# against it. Python itself is not instrumented, so libasan is preloaded and leak checking is off (the
# interpreter keeps memory until exit on purpose). Any ASan or UBSan report aborts the test process
# (setup.py passes -fno-sanitize-recover=all), so a green run means no report.
#
#   tools/sanitize.sh [pytest args...]          e.g. tools/sanitize.sh -q -x
#
# Afterwards, rebuild the normal core with `pip install -e .` (or `python setup.py build_ext --inplace`).
set -euo pipefail
cd "$(dirname "$0")/.."
CXX=${CXX:-c++}
EDGEAI_SANITIZE=address,undefined python setup.py -q build_ext --inplace --force
asan=$($CXX -print-file-name=libasan.so)
ubsan=$($CXX -print-file-name=libubsan.so)
[ -f "$asan" ] || { echo "libasan not found (install the compiler's sanitizer runtime)" >&2; exit 2; }
export LD_PRELOAD="$asan:$ubsan"
# allocator_may_return_null: an impossible allocation raises MemoryError as in a normal build.
export ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:halt_on_error=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export EDGEAI_SANITIZED=1
exec python -m pytest -p no:cacheprovider "${@:--q}"
