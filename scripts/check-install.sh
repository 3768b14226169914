#!/usr/bin/env bash
# Installs kvq into a temporary prefix and builds examples/hello.c against it twice:
# with pkg-config and with CMake's find_package. Exit 0 only if both build and run.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
prefix="$tmp/prefix"
make -s install PREFIX="$prefix" >/dev/null
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
cc -std=c11 examples/hello.c -o "$tmp/hello-pc" $(pkg-config --cflags --libs kvq) -lm \
   -Wl,-rpath,"$prefix/lib"
"$tmp/hello-pc"
cmake -S examples -B "$tmp/cmake-build" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$tmp/cmake-build" >/dev/null
"$tmp/cmake-build/hello"
echo "install check: pkg-config and find_package builds ok"
