# Sourced by sanitize.sh and valgrind.sh.
#
# `scratch_copy NAME KEEP` sets $work to a new
# temporary folder (removed on exit unless KEEP is 1) and copies the checkout at $repo into
# $work/src as it is now: tracked and untracked-but-not-ignored files, uncommitted edits too.
scratch_copy() {
    work="$(mktemp -d "${TMPDIR:-/tmp}/gncpu-$1.XXXXXX")"
    if [ "$2" = 1 ]; then
        echo "$1: keeping $work"
    else
        trap 'rm -rf "$work"' EXIT
    fi
    mkdir "$work/src"
    git -C "$repo" ls-files -z --cached --others --exclude-standard \
        | (cd "$repo" && xargs -0 -r sh -c 'for f; do [ -f "$f" ] && printf "%s\0" "$f"; done' sh) \
        | tar -C "$repo" --null -T - -cf - | tar -C "$work/src" -xf -
}

# `scratch_build NAME CC` builds and installs $work/src into $work/site with the compiler
# command CC (flags included), the log in $work/build.log; on failure it shows the log's
# end, keeps $work and exits.
scratch_build() {
    if ! CC="$2" GNCPU_FAIL_NO_OPENMP=1 \
            python -m pip install -v --no-deps --no-compile --target "$work/site" "$work/src" \
            > "$work/build.log" 2>&1; then
        tail -n 40 "$work/build.log"
        trap - EXIT
        echo "$1: the build failed (log: $work/build.log)" >&2
        exit 1
    fi
}
