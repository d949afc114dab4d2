#!/usr/bin/env bash
# Build gncpu with AddressSanitizer and UndefinedBehaviorSanitizer in a temporary copy of
# this checkout and run the test suite under them, once with each build of the kernels
# the CPU runs (x86-64-v4, x86-64-v3, then baseline). Exits non-zero on any sanitizer report
# or test failure.
#
# Usage: tools/sanitize.sh [pytest arguments]      e.g. tools/sanitize.sh -x -k forward
#
# Uses the current `python` (activate the project's virtual environment first) and a C
# compiler with libasan/libubsan (GCC or Clang). The build goes through `pip install
# --target` into the temporary folder, so the checkout's own build is left alone.
# GNCPU_SANITIZE_KEEP=1 keeps the temporary folder (its path is printed).
#
# Left out: tests/test_docs.py, which runs Sphinx and Chromium in subprocesses; they would
# inherit the ASan preload, and they test the documentation, not gncpu's memory use.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
. "$repo/tools/scratch_copy.sh"
scratch_copy sanitize "${GNCPU_SANITIZE_KEEP:-0}"

# The flags ride on CC: setup.py's OpenMP probe links a test program without LDFLAGS, and a
# sanitized object needs the sanitizer runtime at every link.
flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g"
cc="${CC:-gcc}"
echo "sanitize: building with $cc $flags (log: $work/build.log)"
scratch_build sanitize "$cc $flags"
compiles="$(grep -cE -- ' -c [^ ]*_kernels_[a-z0-9_]+\.c ' "$work/build.log" || true)"
sanitized="$(grep -E -- ' -c [^ ]*_kernels_[a-z0-9_]+\.c ' "$work/build.log" \
    | grep -c -- '-fsanitize=address,undefined' || true)"
if [ "$compiles" = 0 ] || [ "$compiles" != "$sanitized" ]; then
    echo "sanitize: $sanitized of $compiles kernel compile lines carry the sanitizer flags" >&2
    exit 1
fi
echo "sanitize: $compiles kernel modules compiled with the sanitizers"

libasan="$($cc -print-file-name=libasan.so)"
if [ ! -e "$libasan" ]; then
    echo "sanitize: libasan not found ($cc -print-file-name=libasan.so)" >&2
    exit 1
fi

# Python itself is not built with ASan: its allocations at exit look like leaks, so leak
# detection is off. Any other report aborts the process (pytest's faulthandler then shows
# the Python stack). pytest runs with --capture=sys: the reports are written to file
# descriptor 2, which fd capture would swallow with the dying process.
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1"
ASAN_OPTIONS+=":detect_stack_use_after_return=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:abort_on_error=1"
export PYTHONPATH="$work/site"
export PYTHONDONTWRITEBYTECODE=1

# The copy's own gncpu/ would shadow the build (pytest puts the working folder on sys.path).
rm -r "$work/src/gncpu"
cd "$work/src"
cat > "$work/check_import.py" <<'EOF'
"""Fail unless every gncpu module comes from the sanitized build and the kernels are argv[2]."""
import sys

import gncpu

site, expected = sys.argv[1], sys.argv[2]
stray = {name: module.__file__ for name, module in sys.modules.items()
         if name.split(".")[0] == "gncpu" and not module.__file__.startswith(site)}
assert not stray, f"modules imported from outside {site}: {stray}"
assert gncpu._kernels.__name__ == "gncpu." + expected, gncpu._kernels.__name__
print(f"sanitize: gncpu from {gncpu.__file__}, kernels {gncpu._kernels.__name__}")
EOF

run_suite() {  # $1: the kernel module gncpu must pick; the rest: pytest arguments
    local expected="$1"
    shift
    LD_PRELOAD="$libasan" python "$work/check_import.py" "$work/site" "$expected" || return 1
    LD_PRELOAD="$libasan" python -m pytest -q -p no:cacheprovider --capture=sys \
        --ignore=tests/test_docs.py "$@"
}

status=0
# The widest build the CPU runs first; then each is replaced by a module that fails to
# import, as in a build without it, so that gncpu falls back to the next (deleting the .so
# alone would let an editable install of gncpu supply the checkout's own).
for level in x86_64_v4 x86_64_v3; do
    if ls "$work/site/gncpu/_kernels_$level"*.so > /dev/null 2>&1; then
        runs="$(LD_PRELOAD="$libasan" python -c \
            "import gncpu; print(gncpu._kernels_baseline.cpu_has_$level())")"
        if [ "$runs" = True ]; then
            echo "sanitize: === ${level//_/-} kernels ==="
            # ASan's fake stack frames (detect_stack_use_after_return) are not 64-byte
            # aligned, and GCC spills the 64-byte vectors of the AVX-512 build there with
            # aligned stores, which then fault in the tool, not in gncpu.
            options="$ASAN_OPTIONS"
            if [ "$level" = x86_64_v4 ]; then
                options="${options/use_after_return=1/use_after_return=0}"
            fi
            ASAN_OPTIONS="$options" run_suite "_kernels_$level" "$@" || status=1
        else
            echo "sanitize: this CPU cannot run the ${level//_/-} kernels"
        fi
    fi
    rm -f "$work/site/gncpu/_kernels_$level"*.so
    echo "raise ImportError('tools/sanitize.sh: pass without $level')" \
        > "$work/site/gncpu/_kernels_$level.py"
done
echo "sanitize: === baseline kernels ==="
run_suite _kernels_baseline "$@" || status=1
if [ "$status" = 0 ]; then
    echo "sanitize: clean (no sanitizer report, all tests passed)"
else
    trap - EXIT
    echo "sanitize: FAILED (see the sanitizer report or test failures above; files in $work)" >&2
fi
exit "$status"
