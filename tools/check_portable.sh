#!/usr/bin/env bash
# Compiles every csrc/ file as strict, portable C++17 with each compiler found (g++, clang++):
#   -std=c++17 -pedantic-errors (no GNU extensions) -Wall -Wextra -Werror,
# once with the vector-type kernels and once with the plain C++ fallback (EDGEAI_PORTABLE_SIMD), then checks
# that both kernel builds compute bit-identical results. pybind11's and Python's headers are system headers.
set -euo pipefail
cd "$(dirname "$0")/.."
py_inc=$(python -c "import sysconfig; print(sysconfig.get_paths()['include'])")
pb_inc=$(python -c "import pybind11; print(pybind11.get_include())")
flags=(-std=c++17 -pedantic-errors -Wall -Wextra -Werror -Wno-psabi -ffp-contract=off -fsyntax-only
       -isystem "$py_inc" -isystem "$pb_inc" -Icsrc)
status=0
for cxx in g++ clang++; do
    command -v "$cxx" >/dev/null || { echo "$cxx: not installed, skipped"; continue; }
    for variant in "" -DEDGEAI_PORTABLE_SIMD; do
        for f in csrc/*.cpp; do
            "$cxx" "${flags[@]}" $variant "$f" || { echo "FAILED: $cxx $variant $f"; status=1; }
        done
        echo "$cxx ${variant:-(vector types)}: $(ls csrc/*.cpp | wc -l) files compiled as -std=c++17 -pedantic-errors"
    done
    # The two kernel builds must agree bit for bit.
    tmp=$(mktemp -d)
    for variant in vec portable; do
        def=""; [ $variant = portable ] && def=-DEDGEAI_PORTABLE_SIMD
        "$cxx" -std=c++17 -O2 -ffp-contract=off $def -Icsrc tools/fast_math_probe.cpp csrc/fast_math.cpp -o "$tmp/$variant"
        "$tmp/$variant" > "$tmp/$variant.out"
    done
    if cmp -s "$tmp/vec.out" "$tmp/portable.out"; then
        echo "$cxx: vector and portable kernels agree bit for bit ($(wc -l < "$tmp/vec.out") results)"
    else
        echo "FAILED: $cxx: vector and portable kernels differ"; status=1
    fi
    rm -rf "$tmp"
done
exit $status
