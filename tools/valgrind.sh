#!/usr/bin/env bash
# Run tools/workload.py (forward and backward over every kernel path) under valgrind's
# memcheck, with gncpu built with debug info in a temporary copy of this checkout. The
# x86-64-v4 (AVX-512) build is left out: valgrind cannot run it.
# Exits non-zero when memcheck reports any error (invalid read or write, use of
# uninitialised values, bad free) or the workload fails.
#
# Usage: tools/valgrind.sh [extra valgrind options]
#
# Uses the current `python` (activate the project's virtual environment first) and
# `valgrind` (Debian: apt-get install valgrind). The kernels keep setup.py's -O3; -g adds
# line numbers to the reports. PYTHONMALLOC=malloc sends Python's own allocations to
# malloc, where memcheck sees them (pymalloc's arenas would need suppressions).
# GNCPU_VALGRIND_KEEP=1 keeps the temporary folder (its path is printed).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
command -v valgrind > /dev/null || { echo "valgrind: not installed" >&2; exit 1; }
. "$repo/tools/scratch_copy.sh"
scratch_copy valgrind "${GNCPU_VALGRIND_KEEP:-0}"

echo "valgrind: building with debug info (log: $work/build.log)"
scratch_build valgrind "${CC:-gcc} -g"

# Valgrind does not emulate AVX-512: the x86-64-v4 build is replaced by a module that fails
# to import, so gncpu falls back to x86-64-v3 (the workload then runs v3 and baseline).
rm -f "$work/site/gncpu/"_kernels_x86_64_v4*.so
echo 'raise ImportError("tools/valgrind.sh: no AVX-512 under valgrind")' \
    > "$work/site/gncpu/_kernels_x86_64_v4.py"

# Passive OpenMP waits: memcheck runs one thread at a time, and a spinning one wastes it.
export PYTHONPATH="$work/site" PYTHONMALLOC=malloc PYTHONDONTWRITEBYTECODE=1
export OMP_WAIT_POLICY=passive
cd "$work"
python -c "import gncpu, sys; sys.exit(not gncpu.__file__.startswith(sys.argv[1]))" \
    "$work/site" || { echo "valgrind: gncpu was not imported from $work/site" >&2; exit 1; }

# Reports that are not gncpu's, on this stack: CPython 3.11's _PyLong_New leaves the digit
# of a zero-sized int uninitialised (memcheck then flags the interpreter's small-int and
# reference-count code: fixed in 3.12); glibc's dynamic loader reads past string ends with
# SSE2 strncmp while expanding an rpath. Uninitialised data that gncpu hands back is still
# reported where NumPy first uses it.
cat > "$work/python.supp" <<'EOF'
{
   cpython-3.11-zero-int-digit-cond
   Memcheck:Cond
   obj:*libpython3*
}
{
   cpython-3.11-zero-int-digit-value
   Memcheck:Value8
   obj:*libpython3*
}
{
   ld.so-rpath-strncmp
   Memcheck:Addr8
   fun:strncmp
   fun:is_dst
}
EOF

status=0
valgrind --tool=memcheck --error-exitcode=99 --leak-check=no --track-origins=yes \
    --num-callers=30 --suppressions="$work/python.supp" --log-file="$work/memcheck.log" "$@" \
    python "$work/src/tools/workload.py" || status=$?
grep -E "ERROR SUMMARY|Invalid (read|write)|uninitialised|Invalid free|Mismatched" \
    "$work/memcheck.log" | sed 's/^==[0-9]*== //' | sort | uniq -c || true
if [ "$status" != 0 ]; then
    trap - EXIT
fi
if [ "$status" = 99 ]; then
    sed -n '/^==[0-9]*== [A-Z]/,/^==[0-9]*== $/p' "$work/memcheck.log" > "$work/errors.txt"
    head -n 200 "$work/errors.txt"
    echo "valgrind: memcheck reported errors (full log: $work/memcheck.log)" >&2
    exit 1
elif [ "$status" != 0 ]; then
    tail -n 40 "$work/memcheck.log"
    echo "valgrind: the workload failed (exit status $status; log: $work/memcheck.log)" >&2
    exit 1
fi
echo "valgrind: clean (memcheck: no errors)"
