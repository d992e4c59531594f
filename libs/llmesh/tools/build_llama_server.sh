#!/usr/bin/env bash
# Builds llama.cpp's llama-server once, from the llama.cpp source vendored in the pinned
# llama-cpp-python sdist, into a cache directory outside the repository; later calls
# return at once. Optional: only the llama.cpp engine and its benchmark need it
# (docs/engines.md). Prints the binary's path on its last line.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
PIP="${PIP:-.venv/bin/pip}"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
ROOT="${LLMESH_LLAMA_CPP_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/llmesh/llama.cpp-$VERSION}"
BIN="$ROOT/build/bin/llama-server"
if [ -x "$BIN" ]; then echo "$BIN"; exit 0; fi
command -v cmake >/dev/null || { echo "llama-server needs cmake and a C++ compiler (apt-get install cmake g++)" >&2; exit 1; }
mkdir -p "$ROOT"
SDIST="$ROOT/llama_cpp_python-$VERSION.tar.gz"
if [ ! -f "$SDIST" ]; then
  "$PIP" download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$ROOT"
fi
SRC="$ROOT/llama_cpp_python-$VERSION"
[ -d "$SRC/vendor/llama.cpp" ] || tar -xzf "$SDIST" -C "$ROOT"
cmake -S "$SRC/vendor/llama.cpp" -B "$ROOT/build" -DLLAMA_CURL=OFF -DGGML_NATIVE=ON \
  -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >&2
cmake --build "$ROOT/build" --target llama-server -j"$JOBS" >&2
test -x "$BIN"
echo "$BIN"
